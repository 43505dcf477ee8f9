//! Where the control plane's state comes from: the mesh file and the
//! sidecars' registrations. Each source feeds [`crate::state::State`].

pub mod file;
pub mod registrations;
