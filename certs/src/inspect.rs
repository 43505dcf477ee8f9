//! Reading certificates: the fields an operator asks about (subject,
//! SANs, SPIFFE id, validity, whether it is a CA) and whether each
//! certificate of a chain is signed by the next.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{Error, SpiffeId};

/// What one certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    /// Subject alternative names, each as `URI:...`, `DNS:...` or `IP:...`.
    pub sans: Vec<String>,
    /// The one `spiffe://` URI SAN, if there is exactly one.
    pub spiffe_id: Option<SpiffeId>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    /// The path length constraint of a CA.
    pub path_len: Option<u32>,
}

impl CertInfo {
    /// Whether `now` is within the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// The whole validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// Reads one certificate.
pub fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, Error> {
    let cert = parse(der)?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| Error::invalid("the certificate", format!("a bad subjectAltName: {e}")))?
        .map(|ext| ext.value.general_names.iter().map(general_name).collect())
        .unwrap_or_default();
    let basic = cert
        .basic_constraints()
        .map_err(|e| Error::invalid("the certificate", format!("bad basicConstraints: {e}")))?
        .map(|ext| ext.value.clone());
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        spiffe_id: spiffe_id(der).ok(),
        sans,
        not_before: system_time(cert.validity().not_before.timestamp()),
        not_after: system_time(cert.validity().not_after.timestamp()),
        is_ca: basic.as_ref().is_some_and(|b| b.ca),
        path_len: basic.and_then(|b| b.path_len_constraint),
    })
}

/// The SPIFFE id a certificate names: its one `spiffe://` URI SAN (an
/// X509-SVID has exactly one URI SAN).
pub fn spiffe_id(der: &CertificateDer<'_>) -> Result<SpiffeId, Error> {
    let cert = parse(der)?;
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [uri] => uri
            .parse()
            .map_err(|e| Error::invalid("the certificate's URI SAN", e)),
        [] => Err(Error::invalid(
            "the certificate",
            "names no identity (it has no URI SAN)",
        )),
        _ => Err(Error::invalid(
            "the certificate",
            format!(
                "has {} URI SANs; an identity certificate has one",
                uris.len()
            ),
        )),
    }
}

/// Whether the certificate carries the public key `raw` (the bits of its
/// subjectPublicKey), to match it with a private key.
pub fn has_public_key(der: &CertificateDer<'_>, raw: &[u8]) -> Result<bool, Error> {
    Ok(parse(der)?.public_key().subject_public_key.data.as_ref() == raw)
}

/// Whether `cert` is signed by the key of `issuer`.
pub fn is_signed_by(cert: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> Result<bool, Error> {
    let (cert, issuer) = (parse(cert)?, parse(issuer)?);
    Ok(cert.verify_signature(Some(issuer.public_key())).is_ok())
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, Error> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| Error::invalid("the certificate", format!("not X.509 DER: {e}")))
}

fn general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(ip) => match ip.len() {
            4 => format!("IP:{}", std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
            16 => {
                let bytes: [u8; 16] = (*ip).try_into().unwrap_or_default();
                format!("IP:{}", std::net::Ipv6Addr::from(bytes))
            }
            _ => "IP:?".to_string(),
        },
        other => format!("{other:?}"),
    }
}

fn system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs()),
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        writeln!(f, "subject:     {}", or_none(&self.subject))?;
        writeln!(f, "issuer:      {}", or_none(&self.issuer))?;
        writeln!(f, "serial:      {}", self.serial)?;
        writeln!(
            f,
            "SANs:        {}",
            if self.sans.is_empty() {
                "(none)".to_string()
            } else {
                self.sans.join(", ")
            }
        )?;
        writeln!(
            f,
            "SPIFFE id:   {}",
            self.spiffe_id
                .as_ref()
                .map_or("(none)".to_string(), SpiffeId::to_string)
        )?;
        writeln!(f, "not before:  {}", when(self.not_before))?;
        writeln!(f, "not after:   {}", when(self.not_after))?;
        match (self.is_ca, self.path_len) {
            (true, Some(n)) => write!(f, "CA:          yes, path length {n}"),
            (true, None) => write!(f, "CA:          yes"),
            (false, _) => write!(f, "CA:          no"),
        }
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "(empty)"
    } else {
        s
    }
}
