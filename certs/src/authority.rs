//! The mesh's certificate authority: a self-signed trust anchor, an issuer
//! it signs (the key that signs every day, so the anchor's key can stay
//! offline), and the short-lived leaf certificates the issuer signs, each
//! naming one SPIFFE id. Every key is ECDSA P-256.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};

use crate::inspect::{self, CertInfo};
use crate::{pem, Error, SpiffeId};

/// How long a trust anchor made by [`generate`] is valid by default.
pub const DEFAULT_ANCHOR_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long an issuer made by [`generate`] is valid by default.
pub const DEFAULT_ISSUER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a leaf is valid by default (the control plane's `--cert-ttl`).
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Certificates are valid from a little before they are signed, so that
/// a peer whose clock is slightly behind still accepts them.
pub const CLOCK_SKEW: Duration = Duration::from_secs(10);
/// The organization every certificate made here names.
const ORGANIZATION: &str = "remora";

/// A new trust anchor and issuer, as PEM.
pub struct Generated {
    pub anchor_cert: String,
    pub anchor_key: String,
    pub issuer_cert: String,
    pub issuer_key: String,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a little before `now` (see [`CLOCK_SKEW`]) until `now + ttl`.
    pub fn starting(now: SystemTime, ttl: Duration) -> Validity {
        Validity {
            not_before: now - CLOCK_SKEW,
            not_after: now + ttl,
        }
    }
}

/// A trust anchor valid for `anchor_for` and an issuer it signs valid for
/// `issuer_for`, both for `trust_domain`'s mesh, starting now.
pub fn generate(
    trust_domain: &str,
    anchor_for: Duration,
    issuer_for: Duration,
) -> Result<Generated, Error> {
    remora_api::identity::check_trust_domain(trust_domain)
        .map_err(|reason| Error::invalid("the trust domain", reason))?;
    let now = SystemTime::now();
    let anchor_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(Error::generate("the trust anchor's key"))?;
    // The anchor may sign issuers, which sign only leaves.
    let anchor_params = ca_params(
        &format!("remora trust anchor for {trust_domain}"),
        Validity::starting(now, anchor_for),
        1,
    );
    let anchor_cert = anchor_params
        .self_signed(&anchor_key)
        .map_err(Error::generate("the trust anchor"))?;
    let anchor = rcgen::Issuer::new(anchor_params, &anchor_key);

    let issuer_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(Error::generate("the issuer's key"))?;
    let issuer_cert = ca_params(
        &format!("remora issuer for {trust_domain}"),
        Validity::starting(now, issuer_for),
        0,
    )
    .signed_by(&issuer_key, &anchor)
    .map_err(Error::generate("the issuer"))?;
    Ok(Generated {
        anchor_cert: anchor_cert.pem(),
        anchor_key: anchor_key.serialize_pem(),
        issuer_cert: issuer_cert.pem(),
        issuer_key: issuer_key.serialize_pem(),
    })
}

/// The issuer: signs leaves. Loaded from the PEM that [`generate`] (or
/// `remora-certs init`) wrote.
pub struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    /// The issuer's own certificate, sent after each leaf so that peers
    /// that hold only the trust anchor can build the chain.
    cert_pem: String,
    info: CertInfo,
}

impl Issuer {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Issuer, Error> {
        let certs = pem::certificates(cert_pem, "the issuer certificate")?;
        let info = inspect::inspect(&certs[0])?;
        if !info.is_ca {
            return Err(Error::invalid(
                "the issuer certificate",
                "is not a CA certificate (basicConstraints CA:TRUE)",
            ));
        }
        let key = issuer_key(key_pem)?;
        if !inspect::has_public_key(&certs[0], key.public_key_raw())? {
            return Err(Error::invalid(
                "the issuer key",
                "does not belong to the issuer certificate",
            ));
        }
        let signer = rcgen::Issuer::from_ca_cert_der(&certs[0], key)
            .map_err(|e| Error::invalid("the issuer certificate", e))?;
        Ok(Issuer {
            signer,
            cert_pem: cert_pem.trim_end().to_string() + "\n",
            info,
        })
    }

    /// The issuer's own certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Signs the key of `csr_pem` for `identity` over `validity`. The
    /// certificate names `identity` and nothing else: whatever the request
    /// asks for (its subject, its SANs, its extensions) is ignored, so a
    /// caller gets only the identity it was granted. Returns the chain, the
    /// leaf then the issuer, as PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        validity: Validity,
    ) -> Result<String, Error> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::invalid("the CSR", csr_problem(&e)))?;
        if !is_supported(csr.public_key.algorithm()) {
            return Err(Error::invalid(
                "the CSR",
                "its key must be ECDSA P-256, P-384 or Ed25519",
            ));
        }
        csr.params = self.leaf_params(identity, validity);
        let leaf = csr
            .signed_by(&self.signer)
            .map_err(Error::generate("the certificate"))?;
        Ok(leaf.pem() + &self.cert_pem)
    }

    /// A new key and a certificate of it for `identity`, for operators and
    /// tests: the chain (leaf then issuer) and the key, as PEM.
    pub fn issue(
        &self,
        identity: &SpiffeId,
        validity: Validity,
    ) -> Result<(String, String), Error> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::generate("a key"))?;
        let leaf = self
            .leaf_params(identity, validity)
            .signed_by(&key, &self.signer)
            .map_err(Error::generate("the certificate"))?;
        Ok((leaf.pem() + &self.cert_pem, key.serialize_pem()))
    }

    /// An X509-SVID: the identity as the one URI SAN, usable by both ends
    /// of a connection, and not valid past the issuer itself.
    fn leaf_params(&self, identity: &SpiffeId, validity: Validity) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, ORGANIZATION);
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::URI(
            identity.as_str().try_into().expect("a SPIFFE id is ASCII"),
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.min(self.info.not_after).into();
        params
    }
}

fn ca_params(common_name: &str, validity: Validity, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params
}

fn is_supported(alg: &rcgen::SignatureAlgorithm) -> bool {
    [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ]
    .contains(&alg)
}

/// What rcgen's CSR errors mean to the one who sent the CSR.
fn csr_problem(e: &rcgen::Error) -> String {
    match e {
        rcgen::Error::CouldNotParseCertificationRequest => {
            "not a PEM CERTIFICATE REQUEST (PKCS#10)".to_string()
        }
        rcgen::Error::InvalidCertificationRequestSignature => {
            "its signature does not verify: it was not signed by the key it carries".to_string()
        }
        other => other.to_string(),
    }
}

/// The issuer's key pair from PEM: PKCS#8, or SEC1 (`EC PRIVATE KEY`, as
/// OpenSSL and cert-manager write an ECDSA key), which is rewrapped as the
/// PKCS#8 that ring reads.
fn issuer_key(key_pem: &str) -> Result<KeyPair, Error> {
    let unusable = |e: &dyn std::fmt::Display| {
        Error::invalid("the issuer key", format!("not a usable key: {e}"))
    };
    let pkcs8 = match pem::private_key(key_pem, "the issuer key")? {
        rustls_pki_types::PrivateKeyDer::Sec1(sec1) => {
            sec1_p256_as_pkcs8(sec1.secret_sec1_der())
                .ok_or_else(|| unusable(&"a SEC1 key of another curve than P-256"))?
        }
        other => other.secret_der().to_vec(),
    };
    KeyPair::try_from(pkcs8.as_slice()).map_err(|e| unusable(&e))
}

/// `PrivateKeyInfo` (RFC 5208) around an ECPrivateKey (RFC 5915) of the
/// P-256 curve; `None` when the key names another curve.
fn sec1_p256_as_pkcs8(sec1: &[u8]) -> Option<Vec<u8>> {
    /// id-ecPublicKey, then prime256v1.
    const ALGORITHM: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    // SEQUENCE { INTEGER 1, OCTET STRING key, [0] curve OPTIONAL, ... }:
    // the curve, when named, must be P-256.
    let header = match sec1.get(1)? {
        0x81 => 3,
        0x82 => 4,
        _ => 2,
    };
    let key_at = header + 3;
    let key_len = usize::from(*sec1.get(key_at + 1)?);
    let curve = sec1.get(key_at + 2 + key_len..)?;
    if curve.first() == Some(&0xa0) && curve.get(2..2 + curve[1] as usize)? != &ALGORITHM[11..] {
        return None;
    }
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(ALGORITHM);
    body.push(0x04);
    der_length(&mut body, sec1.len());
    body.extend_from_slice(sec1);
    let mut info = vec![0x30];
    der_length(&mut info, body.len());
    info.extend(body);
    Some(info)
}

/// A DER length, short or long form (up to 64 KiB, far more than a key).
fn der_length(out: &mut Vec<u8>, length: usize) {
    match length {
        0..=0x7f => out.push(length as u8),
        0x80..=0xff => out.extend([0x81, length as u8]),
        _ => out.extend([0x82, (length >> 8) as u8, length as u8]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaf;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn issuer() -> (Generated, Issuer) {
        let g = generate("cluster.local", 10 * DAY, 5 * DAY).unwrap();
        let issuer = Issuer::from_pem(&g.issuer_cert, &g.issuer_key).unwrap();
        (g, issuer)
    }

    fn id(name: &str) -> SpiffeId {
        SpiffeId::resolve(name, "cluster.local").unwrap()
    }

    #[test]
    fn the_anchor_signs_the_issuer_which_signs_leaves() {
        let (g, issuer) = issuer();
        let anchor = &pem::certificates(&g.anchor_cert, "anchor").unwrap()[0];
        let issuer_cert = &pem::certificates(&g.issuer_cert, "issuer").unwrap()[0];
        assert!(inspect::is_signed_by(issuer_cert, anchor).unwrap());
        assert!(inspect::is_signed_by(anchor, anchor).unwrap());
        let (a, i) = (inspect::inspect(anchor).unwrap(), issuer.info().clone());
        assert!(a.is_ca && i.is_ca);
        assert_eq!((a.path_len, i.path_len), (Some(1), Some(0)));
        assert!(a.lifetime() > 9 * DAY && i.lifetime() > 4 * DAY && i.lifetime() < 6 * DAY);

        let (chain, _key) = issuer
            .issue(&id("orders"), Validity::starting(SystemTime::now(), DAY))
            .unwrap();
        let chain = pem::certificates(&chain, "chain").unwrap();
        assert_eq!(chain.len(), 2, "the leaf, then the issuer");
        assert!(inspect::is_signed_by(&chain[0], &chain[1]).unwrap());
        let leaf = inspect::inspect(&chain[0]).unwrap();
        assert_eq!(leaf.spiffe_id, Some(id("orders")));
        assert_eq!(
            leaf.sans,
            vec!["URI:spiffe://cluster.local/ns/default/sa/orders"]
        );
        assert!(!leaf.is_ca);
    }

    #[test]
    fn a_csr_gets_the_identity_granted_not_the_one_it_asks_for() {
        let (_, issuer) = issuer();
        // A request for another identity, with a SAN of its own.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let asked = CertificateParams::new(vec![
            "spiffe://cluster.local/ns/default/sa/admin".to_string()
        ])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
        let chain = issuer
            .sign_csr(
                &asked,
                &id("frontend"),
                Validity::starting(SystemTime::now(), DAY),
            )
            .unwrap();
        let leaf = inspect::inspect(&pem::certificates(&chain, "chain").unwrap()[0]).unwrap();
        assert_eq!(leaf.sans, vec![format!("URI:{}", id("frontend"))]);
        assert!(inspect::has_public_key(
            &pem::certificates(&chain, "chain").unwrap()[0],
            key.public_key_raw()
        )
        .unwrap());
    }

    #[test]
    fn a_leaf_does_not_outlive_its_issuer() {
        let (_, issuer) = issuer();
        let (chain, _) = issuer
            .issue(
                &id("orders"),
                Validity::starting(SystemTime::now(), 30 * DAY),
            )
            .unwrap();
        let leaf = inspect::inspect(&pem::certificates(&chain, "chain").unwrap()[0]).unwrap();
        assert_eq!(leaf.not_after, issuer.info().not_after);
    }

    #[test]
    fn bad_csrs_and_keys_say_what_is_wrong() {
        let (g, issuer) = issuer();
        let validity = Validity::starting(SystemTime::now(), DAY);
        let e = issuer.sign_csr("hello", &id("a"), validity).unwrap_err();
        assert!(
            e.to_string()
                .contains("the CSR: not a PEM CERTIFICATE REQUEST"),
            "{e}"
        );
        // A CSR whose signature does not match what it signs.
        let forged = forge(&leaf::new_request().unwrap().csr_pem);
        let e = issuer.sign_csr(&forged, &id("a"), validity).unwrap_err();
        assert!(
            e.to_string().contains("its signature does not verify"),
            "{e}"
        );
        // The issuer with the anchor's key.
        let e = Issuer::from_pem(&g.issuer_cert, &g.anchor_key)
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not belong"), "{e}");
        let e = Issuer::from_pem("", &g.issuer_key).err().unwrap();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        assert!(generate("Not Valid", DAY, DAY).is_err());
    }

    #[test]
    fn a_pending_key_takes_only_its_own_certificate_and_renews_at_seventy_percent() {
        let (_, issuer) = issuer();
        let now = SystemTime::now();
        let validity = Validity {
            not_before: now,
            not_after: now + Duration::from_secs(100),
        };
        let mine = leaf::new_request().unwrap();
        let theirs = leaf::new_request().unwrap();
        let their_chain = issuer
            .sign_csr(&theirs.csr_pem, &id("a"), validity)
            .unwrap();
        let my_chain = issuer.sign_csr(&mine.csr_pem, &id("a"), validity).unwrap();
        let e = leaf::new_request()
            .unwrap()
            .complete(&their_chain)
            .unwrap_err();
        assert!(e.to_string().contains("not for the key"), "{e}");
        let credentials = mine.complete(&my_chain).unwrap();
        assert_eq!(credentials.identity, id("a"));
        let renew = credentials
            .renew_at()
            .duration_since(credentials.leaf.not_before)
            .unwrap();
        assert_eq!(renew.as_secs(), 70);
    }

    /// `csr` with the last byte of its signature changed: well formed, but
    /// its signature no longer verifies.
    fn forge(csr: &str) -> String {
        use rustls_pki_types::pem::PemObject;
        let mut der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec();
        *der.last_mut().unwrap() ^= 1;
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64_encode(&der)
        )
    }

    fn base64_encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// An issuer as OpenSSL makes one (`openssl ecparam -name prime256v1
    /// -genkey -noout`, then a self-signed CA), its key in SEC1, as
    /// cert-manager also writes it.
    const SEC1_ISSUER_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIBRVAqM/zt5P/EPLA90pTIq/a71cK6tkfE0M6PMe05cgoAoGCCqGSM49
AwEHoUQDQgAEJFE8DIHYFvdMoQAZZjy7Ssnmp0ITcI0O7rMMxX15Jvwa3mCCsphs
kmLWXwGYjPlCRFNStU0a7Q6mGr8GNYulRw==
-----END EC PRIVATE KEY-----\n";
    const SEC1_ISSUER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBuDCCAV6gAwIBAgIUNEDbyEoIlcIfhm5c0tyRrq2hZpEwCgYIKoZIzj0EAwIw
JzEPMA0GA1UECgwGcmVtb3JhMRQwEgYDVQQDDAt0ZXN0IGlzc3VlcjAgFw0yNjEy
MDMxNjA5MDdaGA8yMTI2MTEwOTE2MDkwN1owJzEPMA0GA1UECgwGcmVtb3JhMRQw
EgYDVQQDDAt0ZXN0IGlzc3VlcjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABCRR
PAyB2Bb3TKEAGWY8u0rJ5qdCE3CNDu6zDMV9eSb8Gt5ggrKYbJJi1l8BmIz5QkRT
UrVNGu0Ophq/BjWLpUejZjBkMB0GA1UdDgQWBBSJlyZivfe/mhjg1uIqw33Wnf6c
0TAfBgNVHSMEGDAWgBSJlyZivfe/mhjg1uIqw33Wnf6c0TASBgNVHRMBAf8ECDAG
AQH/AgEAMA4GA1UdDwEB/wQEAwIBBjAKBggqhkjOPQQDAgNIADBFAiEAsymqaQzT
2iA1F6hSgWTQq1rR7jk7jkxcI14Tzanf7WsCIE1Ym6R32jikt0u9g+zW0yFAuFy4
GpDpnqeOtVkz4vRM
-----END CERTIFICATE-----\n";

    #[test]
    fn an_issuer_key_in_sec1_is_read_as_well_as_pkcs8() {
        let issuer = Issuer::from_pem(SEC1_ISSUER_CERT, SEC1_ISSUER_KEY).unwrap();
        let (chain, _key) = issuer
            .issue(&id("orders"), Validity::starting(SystemTime::now(), DAY))
            .unwrap();
        let issuer_cert = &pem::certificates(SEC1_ISSUER_CERT, "issuer").unwrap()[0];
        let leaf = &pem::certificates(&chain, "leaf").unwrap()[0];
        assert!(inspect::is_signed_by(leaf, issuer_cert).unwrap());

        let p384 = "-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDAEQAWcOpf3TQnxzYx4JqyrP3c8Svp5+FCEx5Adk15SAa4enoH6FSBD
4UhNVCC3IfSgBwYFK4EEACKhZANiAAQ99d17JiauHQWCm0eIbCDgxEkisFfbnQ5P
47gcZvuWhBKCkPmUnBiHZm+YGlBfXmZD2sOkEN6u+EGLS+ZuSUWt5Fa1sWD9mAfK
XHl0Fq3A6FTb4b0ZQwgnq1lvHHXDjCE=
-----END EC PRIVATE KEY-----\n";
        let e = Issuer::from_pem(SEC1_ISSUER_CERT, p384).err().unwrap();
        assert!(e.to_string().contains("another curve than P-256"), "{e}");
    }
}
