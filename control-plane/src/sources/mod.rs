//! Where the control plane's state comes from: the mesh file, the
//! sidecars' registrations and, with `--kubernetes`, the API server's
//! Services and EndpointSlices. Each source feeds [`crate::state::State`].

pub mod file;
pub mod kubernetes;
pub mod registrations;
