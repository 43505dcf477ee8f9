//! The one crypto provider of every TLS config and key the crate makes:
//! ring, as rustls ships it. Its own module so that issuing (`leaf`) and
//! checking (`verify`) share it without depending on each other.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
