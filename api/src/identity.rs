//! Service identities: the SPIFFE ids certificates carry, and the short
//! forms that `mesh.yaml` and `tokens.yaml` write them in (`NAME` for a
//! service account in the default namespace, `NAME.NAMESPACE`, or a whole
//! `spiffe://` URI).

use std::fmt;
use std::str::FromStr;

/// The namespace of a short identity that names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The control plane's own identity, which proxies require of its API's
/// certificate: the `remora-control` service account of the `remora`
/// namespace, where the chart installs it.
pub const CONTROL_PLANE_IDENTITY: &str = "remora-control.remora";
/// The SPIFFE spec's limit on a whole id.
const MAX_ID_LEN: usize = 2048;
/// The SPIFFE spec's limit on a trust domain.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A SPIFFE id: `spiffe://TRUST_DOMAIN/PATH`, as the SPIFFE spec allows
/// it (lowercase trust domain; path segments of letters, digits, `.`, `-`
/// and `_`, none empty, none `.` or `..`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole URI, kept as it is compared and printed.
    uri: String,
    /// Where the path starts in `uri` (its leading `/`).
    path_at: usize,
}

/// Why a text is not an identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an identity: {reason}")]
pub struct IdentityError {
    pub text: String,
    pub reason: String,
}

impl SpiffeId {
    /// `name` as `mesh.yaml` writes it, in `trust_domain`: `NAME`,
    /// `NAME.NAMESPACE`, or a whole `spiffe://` URI (whose own trust domain
    /// then counts).
    pub fn resolve(name: &str, trust_domain: &str) -> Result<SpiffeId, IdentityError> {
        if name.starts_with("spiffe://") {
            return name.parse();
        }
        let error = |reason: &str| IdentityError {
            text: name.to_string(),
            reason: reason.to_string(),
        };
        let (account, namespace) = name.split_once('.').unwrap_or((name, DEFAULT_NAMESPACE));
        for (what, part) in [("service account", account), ("namespace", namespace)] {
            if !is_dns_label(part) {
                return Err(error(&format!(
                    "the {what} {part:?} must be a DNS label (lowercase letters, digits and '-', at most 63), as in NAME, NAME.NAMESPACE or spiffe://TRUST_DOMAIN/PATH"
                )));
            }
        }
        check_trust_domain(trust_domain).map_err(|reason| error(&reason))?;
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{account}").parse()
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.path_at]
    }

    /// The path, with its leading `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_at..]
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<SpiffeId, IdentityError> {
        let error = |reason: String| IdentityError {
            text: text.to_string(),
            reason,
        };
        if text.len() > MAX_ID_LEN {
            return Err(error(format!("longer than {MAX_ID_LEN} bytes")));
        }
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or_else(|| error("a SPIFFE id starts with spiffe://".into()))?;
        let (trust_domain, path) = rest.split_once('/').ok_or_else(|| {
            error("it names no workload: write spiffe://TRUST_DOMAIN/PATH".into())
        })?;
        check_trust_domain(trust_domain).map_err(error)?;
        for segment in path.split('/') {
            if segment.is_empty() {
                return Err(error("its path has an empty segment".into()));
            }
            if segment == "." || segment == ".." {
                return Err(error("its path has a '.' or '..' segment".into()));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(error(format!(
                    "the path segment {segment:?} may hold only letters, digits, '.', '-' and '_'"
                )));
            }
        }
        Ok(SpiffeId {
            uri: text.to_string(),
            path_at: "spiffe://".len() + trust_domain.len(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// A trust domain as SPIFFE allows it: lowercase letters, digits, `.`,
/// `-` and `_`.
pub fn check_trust_domain(trust_domain: &str) -> Result<(), String> {
    if trust_domain.is_empty() {
        return Err("the trust domain is empty".into());
    }
    if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes"
        ));
    }
    if !trust_domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "the trust domain {trust_domain:?} may hold only lowercase letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms_name_a_service_account() {
        let id = SpiffeId::resolve("orders", "cluster.local").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/orders");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/orders");
        let id = SpiffeId::resolve("orders.shop", "example.org").unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/ns/shop/sa/orders");
        let full = "spiffe://other.domain/workload/x_1";
        let id = SpiffeId::resolve(full, "cluster.local").unwrap();
        assert_eq!((id.as_str(), id.trust_domain()), (full, "other.domain"));
    }

    #[test]
    fn bad_identities_say_what_is_wrong() {
        let cases = [
            ("Orders", "DNS label"),
            ("orders.", "DNS label"),
            ("a.b.c", "DNS label"),
            ("spiffe://cluster.local", "names no workload"),
            ("spiffe://cluster.local/", "empty segment"),
            ("spiffe://cluster.local/a//b", "empty segment"),
            ("spiffe://cluster.local/a/../b", "'..'"),
            ("spiffe://Cluster.local/a", "lowercase"),
            ("spiffe:///a", "empty"),
            ("spiffe://cluster.local/a b", "path segment"),
            ("spiffe://cluster.local:8080/a", "lowercase"),
        ];
        for (text, reason) in cases {
            let e = SpiffeId::resolve(text, "cluster.local").unwrap_err();
            assert!(e.to_string().contains(reason), "{text}: {e}");
        }
        assert!(SpiffeId::resolve("orders", "Bad_Domain")
            .unwrap_err()
            .to_string()
            .contains("trust domain"));
        assert!("http://cluster.local/a".parse::<SpiffeId>().is_err());
    }
}
