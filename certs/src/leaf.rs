//! A sidecar's own identity: a key made in memory (it never leaves the
//! process), the CSR that asks for a certificate of it, the credentials
//! rustls presents once the chain is back, and the store that lets them
//! be replaced while connections use them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::crypto::provider;
use crate::inspect::{self, CertInfo};
use crate::{pem, Error, SpiffeId};

/// Credentials are renewed once this share of their life has passed.
pub const RENEW_AT: f64 = 0.7;

/// A key waiting for its certificate.
pub struct PendingKey {
    key: KeyPair,
    /// The request to send to the control plane.
    pub csr_pem: String,
}

/// A new P-256 key and a CSR for it. The CSR asks for no name: the
/// control plane decides the identity from the caller's token.
pub fn new_request() -> Result<PendingKey, Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::generate("a key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(Error::generate("a CSR"))?;
    let csr_pem = csr.pem().map_err(Error::generate("a CSR's PEM"))?;
    Ok(PendingKey { key, csr_pem })
}

impl PendingKey {
    /// The credentials of this key, from the chain the control plane
    /// signed; an error when the chain is not for this key.
    pub fn complete(self, chain_pem: &str) -> Result<Credentials, Error> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        Credentials::new(
            pem::certificates(chain_pem, "the signed chain")?,
            key,
            Some(&self.key),
        )
    }
}

/// A certificate chain and its key, ready for rustls.
#[derive(Debug)]
pub struct Credentials {
    pub certified: Arc<CertifiedKey>,
    pub identity: SpiffeId,
    /// The leaf's own fields.
    pub leaf: CertInfo,
    /// When these credentials were made here.
    pub received_at: SystemTime,
}

impl Credentials {
    /// From PEM files an operator made (`remora-certs issue`).
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Credentials, Error> {
        let chain = pem::certificates(chain_pem, "the certificate chain")?;
        let key = pem::private_key(key_pem, "the key")?;
        Credentials::new(chain, key, None)
    }

    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        expected_key: Option<&KeyPair>,
    ) -> Result<Credentials, Error> {
        let leaf = inspect::inspect(&chain[0])?;
        let identity = inspect::spiffe_id(&chain[0])?;
        if let Some(expected) = expected_key {
            if !inspect::has_public_key(&chain[0], expected.public_key_raw())? {
                return Err(Error::invalid(
                    "the signed chain",
                    "its certificate is not for the key that asked for it",
                ));
            }
        }
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| Error::invalid("the key", e))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            Error::invalid("the key", format!("does not match the certificate: {e}"))
        })?;
        Ok(Credentials {
            certified: Arc::new(certified),
            identity,
            leaf,
            received_at: SystemTime::now(),
        })
    }

    /// When to ask for new credentials: [`RENEW_AT`] of the way through
    /// the life the certificate had when it arrived (the time it was
    /// backdated by, for clock skew, is not life to use).
    pub fn renew_at(&self) -> SystemTime {
        let start = self.received_at.max(self.leaf.not_before);
        let life = self
            .leaf
            .not_after
            .duration_since(start)
            .unwrap_or_default();
        start + Duration::from_secs_f64(life.as_secs_f64() * RENEW_AT)
    }
}

/// The credentials in use, replaced whole on renewal: a handshake takes
/// the current ones and keeps them for its connection.
#[derive(Debug, Default)]
pub struct CredentialStore {
    current: ArcSwapOption<Credentials>,
}

impl CredentialStore {
    pub fn set(&self, credentials: Credentials) {
        self.current.store(Some(Arc::new(credentials)));
    }

    pub fn get(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CredentialStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get().map(|c| c.certified.clone())
    }
}

impl ResolvesClientCert for CredentialStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.get().map(|c| c.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}
