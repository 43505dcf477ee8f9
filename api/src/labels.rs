//! Endpoint labels as Kubernetes validates them: the one check for the
//! proxy's `--label` flag and the control plane's registrations.
//!
//! A key is `NAME` or `PREFIX/NAME`: the name 1 to 63 characters of
//! letters, digits, `-`, `_` and `.`, beginning and ending with a letter or
//! digit; the prefix a DNS subdomain (at most 253 lowercase letters,
//! digits, `-` and `.`, each part between dots beginning and ending with a
//! letter or digit). A value follows the name's rule, and may be empty.

use std::collections::BTreeMap;

/// The longest name part of a key, and the longest value.
pub const MAX_NAME_LEN: usize = 63;
/// The longest prefix of a key.
pub const MAX_PREFIX_LEN: usize = 253;
/// How much of a bad key or value an error repeats.
const SHOWN_CHARS: usize = 80;

/// Why a label is refused: which label, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("label {label}: {reason}")]
pub struct LabelError {
    /// The label as given, quoted with control characters escaped and cut
    /// short: `"version"="v 1"`.
    pub label: String,
    pub reason: String,
}

/// Checks one label.
pub fn check_label(key: &str, value: &str) -> Result<(), LabelError> {
    let refuse = |reason: String| LabelError {
        label: format!("{}={}", shown(key), shown(value)),
        reason,
    };
    let name = match key.split_once('/') {
        None => key,
        Some((_, name)) if name.contains('/') => {
            return Err(refuse(
                "a key has at most one '/' (PREFIX/NAME)".to_string(),
            ))
        }
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return Err(refuse(format!(
                    "the key's prefix {} must be a DNS subdomain: 1 to {MAX_PREFIX_LEN} lowercase letters, digits, '-' and '.', each part between dots beginning and ending with a letter or digit",
                    shown(prefix)
                )));
            }
            name
        }
    };
    if name.is_empty() {
        return Err(refuse(
            "the key's name is empty (a key is NAME or PREFIX/NAME)".to_string(),
        ));
    }
    if !is_qualified_name(name) {
        return Err(refuse(format!(
            "the key's name {} must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' and '.', beginning and ending with a letter or digit",
            shown(name)
        )));
    }
    if !value.is_empty() && !is_qualified_name(value) {
        return Err(refuse(format!(
            "the value must be empty, or 1 to {MAX_NAME_LEN} letters, digits, '-', '_' and '.', beginning and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// Checks every label of a set; the first bad one, in key order.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    labels.iter().try_for_each(|(k, v)| check_label(k, v))
}

/// `key=value`, as the proxy's `--label` flag takes it.
pub fn parse_label(text: &str) -> Result<(String, String), LabelError> {
    let (key, value) = text.split_once('=').ok_or_else(|| LabelError {
        label: shown(text),
        reason: "write it as key=value".to_string(),
    })?;
    check_label(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

/// Kubernetes' qualified name (a key's name part, and a non-empty value).
fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Kubernetes' DNS-1123 subdomain: parts between dots of lowercase
/// letters, digits and '-', each beginning and ending with a letter or
/// digit (no length limit per part, as in Kubernetes).
pub fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= MAX_PREFIX_LEN
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && alnum(b[0])
                && alnum(b[b.len() - 1])
                && b.iter().all(|&c| alnum(c) || c == b'-')
        })
}

/// `s` quoted, its control characters escaped, and cut short: errors
/// repeat what they refuse without flooding a log.
fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_kubernetes_takes_are_taken() {
        let long_name = "a".repeat(MAX_NAME_LEN);
        let long_prefix = format!("{}.com", "b".repeat(MAX_PREFIX_LEN - 4));
        let long_prefixed = format!("{long_prefix}/{long_name}");
        for (key, value) in [
            ("version", "v1"),
            ("version", ""),
            ("app.kubernetes.io/name", "orders"),
            ("example.com/Tier_2.x-y", "A.b_c-9"),
            ("k8s.io/a", "1"),
            ("1", "2"),
            (long_name.as_str(), long_name.as_str()),
            (long_prefixed.as_str(), "x"),
        ] {
            assert_eq!(check_label(key, value), Ok(()), "{key}={value}");
        }
    }

    #[test]
    fn bad_keys_and_values_say_which_label_and_why() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let long_prefix = format!("{}/x", "b".repeat(MAX_PREFIX_LEN + 1));
        let cases: &[(&str, &str, &str)] = &[
            ("", "v", "name is empty"),
            ("example.com/", "v", "name is empty"),
            ("/name", "v", "prefix \"\""),
            ("a/b/c", "v", "at most one '/'"),
            ("Example.com/x", "v", "prefix \"Example.com\""),
            ("example..com/x", "v", "prefix"),
            ("-a.com/x", "v", "prefix"),
            (&long_prefix, "v", "prefix"),
            ("-version", "v", "name \"-version\""),
            ("version.", "v", "name"),
            ("ver sion", "v", "name"),
            ("ver\u{1}sion", "v", "name \"ver\\u{1}sion\""),
            ("vérsion", "v", "name"),
            (&long, "v", "name"),
            ("version", "v 1", "value"),
            ("version", "-v1", "value"),
            ("version", "v1_", "value"),
            ("version", "v1\n", "value"),
            ("version", &long, "value"),
        ];
        for (key, value, why) in cases {
            let e = check_label(key, value).unwrap_err();
            assert!(e.reason.contains(why), "{key:?}={value:?}: {e}");
            assert!(
                e.to_string().starts_with("label \""),
                "{key:?}={value:?}: {e}"
            );
        }
        let e = check_label("ver\tsion", "v1").unwrap_err();
        assert_eq!(e.label, r#""ver\tsion"="v1""#);
    }

    #[test]
    fn errors_repeat_a_long_label_cut_short() {
        let key = "k".repeat(10_000);
        let e = check_label(&key, "v").unwrap_err();
        assert!(e.to_string().len() < 400, "{e}");
        assert!(e.label.contains("..."), "{e}");
    }

    #[test]
    fn a_set_of_labels_fails_on_its_first_bad_one() {
        let labels: BTreeMap<String, String> = [("a", "1"), ("b", "x y"), ("c", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let e = check_labels(&labels).unwrap_err();
        assert_eq!(e.label, r#""b"="x y""#);
        assert_eq!(check_labels(&BTreeMap::new()), Ok(()));
    }

    #[test]
    fn flags_are_key_equals_value() {
        assert_eq!(
            parse_label("version=v2"),
            Ok(("version".to_string(), "v2".to_string()))
        );
        assert_eq!(
            parse_label("canary="),
            Ok(("canary".to_string(), String::new()))
        );
        assert!(parse_label("version")
            .unwrap_err()
            .to_string()
            .contains("key=value"));
        assert!(parse_label("version=v=2").is_err());
        assert!(parse_label("=v2").is_err());
    }
}
