//! The types of `mesh.yaml` and of the control-plane protocol, shared by
//! `remora-proxy` and `remora-control`, with their validation. No I/O
//! beyond reading a named file.
#![forbid(unsafe_code)]

pub mod duration;
pub mod identity;
pub mod labels;
pub mod load;
pub mod locate;
pub mod mesh;
pub mod probe;
pub mod protocol;

pub use duration::HumanDuration;
pub use identity::SpiffeId;
pub use load::{parse_mesh, parse_mesh_with_notes, read_mesh, Checked, ConfigError, Note, Problem};
pub use mesh::*;

/// The uid (and gid) a sidecar proxy runs as: `inject` sets it, and
/// transparent mode's iptables rules let its connections through.
pub const PROXY_UID: u32 = 2102;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
