//! Checking peers, and the rustls configs of both ends of a mesh
//! connection: TLS 1.3 only, ALPN `h2`, each side's chain verified
//! against the trust anchors, and the server's SPIFFE id checked against
//! the one the client expects (a mesh certificate names no DNS host, so
//! the usual host name check does not apply). The server learns the
//! client's identity from its certificate; what that identity may do is
//! the authorization policy's business, not this module's.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::crypto::provider;
use crate::leaf::CredentialStore;
use crate::{inspect, pem, Error, SpiffeId};

/// The ALPN protocol of mesh connections carrying requests.
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol of a mesh connection dedicated to one HTTP/1.1
/// request that asks to upgrade (a WebSocket): HTTP/2 carries no upgrade.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// The ALPN protocol of a mesh connection carrying one opaque byte stream
/// (a `protocol: tcp` service), passed to the app as it is.
pub const ALPN_OPAQUE: &[u8] = b"remora-opaque/1";

/// The certificates a mesh trusts: one, or two while the anchor rotates.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    roots: Arc<RootCertStore>,
    pub certs: Vec<CertificateDer<'static>>,
}

impl TrustAnchors {
    /// Every certificate of a PEM bundle.
    pub fn from_pem(pem: &str) -> Result<TrustAnchors, Error> {
        let certs = pem::certificates(pem, "the trust anchors")?;
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                Error::invalid(
                    "the trust anchors",
                    format!("certificate {} is not a usable anchor: {e}", i + 1),
                )
            })?;
        }
        Ok(TrustAnchors {
            roots: Arc::new(roots),
            certs,
        })
    }
}

/// The client's check of a server: a chain to one of the anchors, and
/// the SPIFFE id the endpoint is known by.
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
}

/// The server's certificate names another identity than the one expected.
#[derive(Debug, thiserror::Error)]
#[error("the server is {presented}, not {expected}")]
pub struct WrongIdentity {
    pub expected: SpiffeId,
    pub presented: String,
}

impl ServerIdentityVerifier {
    pub fn new(anchors: &TrustAnchors, expected: SpiffeId) -> ServerIdentityVerifier {
        ServerIdentityVerifier {
            roots: anchors.roots.clone(),
            expected,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        match inspect::spiffe_id(end_entity) {
            Ok(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            other => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(WrongIdentity {
                    expected: self.expected.clone(),
                    presented: match other {
                        Ok(id) => id.to_string(),
                        Err(e) => e.to_string(),
                    },
                })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes()
    }
}

/// The SNI a client sends to a server it expects to be `identity`: a
/// DNS-shaped name for it (`orders.default.sa.cluster.local`
/// for `spiffe://cluster.local/ns/default/sa/orders`), or a fixed one
/// when the path does not make one.
pub fn server_name(identity: &SpiffeId) -> ServerName<'static> {
    let labels: Vec<&str> = identity.path().trim_start_matches('/').split('/').collect();
    let name = match labels.as_slice() {
        ["ns", ns, "sa", sa] => format!("{sa}.{ns}.sa.{}", identity.trust_domain()),
        _ => format!("mesh.{}", identity.trust_domain()),
    };
    ServerName::try_from(name)
        .unwrap_or_else(|_| ServerName::try_from("mesh.remora").expect("a valid DNS name"))
}

/// What a sidecar dials another with: its own credentials, and the
/// identity the endpoint must prove.
pub fn client_config(
    anchors: &TrustAnchors,
    expected: SpiffeId,
    own: Arc<CredentialStore>,
) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerIdentityVerifier::new(anchors, expected)))
        .with_client_cert_resolver(own);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config
}

/// What a probe of an app's own HTTPS dials it with: any certificate, as
/// the kubelet takes any for an `HTTPS` probe (the handshake's signatures
/// are still checked). Never for the mesh's traffic.
pub fn probe_client_config() -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Takes whatever certificate the server presents: see
/// [`probe_client_config`].
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes()
    }
}

/// The handshake's signature checks, the same whatever a verifier makes
/// of the certificate.
fn tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls12_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

fn signature_schemes() -> Vec<SignatureScheme> {
    provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// Whether a server asks every client for a certificate of the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client without one is refused in the handshake.
    Required,
    /// A client may come without one (and is then anonymous); one that
    /// sends one must send a good one.
    Optional,
}

/// What a sidecar's inbound (or the control plane's API) serves with.
pub fn server_config(
    anchors: &TrustAnchors,
    own: Arc<CredentialStore>,
    client_auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<ServerConfig, Error> {
    let builder = WebPkiClientVerifier::builder_with_provider(anchors.roots.clone(), provider());
    let verifier = match client_auth {
        ClientAuth::Required => builder.build(),
        ClientAuth::Optional => builder.allow_unauthenticated().build(),
    }
    .map_err(|e| Error::invalid("the trust anchors", e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(own);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The identity a verified peer's certificate names, if it sent one.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    certs
        .and_then(<[_]>::first)
        .and_then(|leaf| inspect::spiffe_id(leaf).ok())
}

#[cfg(test)]
mod tests;
