//! remora's control plane: the mesh's desired state from `mesh.yaml`,
//! merged with sidecar registrations, served to proxies as long-poll views.
#![forbid(unsafe_code)]
