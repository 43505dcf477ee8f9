//! remora's identities: the mesh's trust anchor and issuer, the
//! short-lived certificates that name each sidecar's SPIFFE id, and the
//! rustls pieces that check them. rcgen makes certificates, x509-parser
//! reads them, rustls (with ring) verifies them. The control plane signs
//! with [`authority`], the proxy asks with [`leaf`] and checks its peers
//! with [`verify`], and the `remora-certs` command wraps all three for
//! operators.
#![forbid(unsafe_code)]

pub mod authority;
pub mod crypto;
pub mod error;
pub mod inspect;
pub mod leaf;
pub mod pem;
pub mod verify;

pub use error::Error;
pub use remora_api::SpiffeId;
