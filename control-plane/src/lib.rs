//! remora's control plane: the mesh's desired state from `mesh.yaml`,
//! merged with sidecar registrations, served to proxies as long-poll views
//! (docs/protocol.md). The binary only parses flags and calls
//! [`serve::run`] or [`check::run`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod ca;
pub mod check;
pub mod config;
pub mod inject;
pub mod kubernetes;
pub mod metrics;
pub mod serve;
pub mod sources;
pub mod state;
pub mod threads;
pub mod tokenreview;
