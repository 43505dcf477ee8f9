//! Header hygiene at each hop: hop-by-hop headers stay on their hop, every
//! request carries an `x-request-id` and a W3C `traceparent`, and the
//! inbound side says who connected with `x-forwarded-for`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers that describe one connection and must not be forwarded
/// (RFC 9110 §7.6.1), beside those the `Connection` header names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True when the request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Drops hop-by-hop headers. For an upgrade, `Connection: upgrade` and
/// `Upgrade` are kept, since the upgrade must reach the far end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // `Connection: keep-alive` (or close, or upgrade) is the usual case and
    // names no other header: nothing to collect then.
    let is_plain = |t: &[u8]| {
        t.eq_ignore_ascii_case(b"keep-alive")
            || t.eq_ignore_ascii_case(b"close")
            || t.eq_ignore_ascii_case(b"upgrade")
    };
    let tokens = |h: &HeaderMap| -> Vec<HeaderName> {
        h.get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !is_plain(t))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect()
    };
    let names_others = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| !is_plain(t.trim_ascii()))
    });
    if names_others {
        for name in tokens(headers) {
            headers.remove(name);
        }
    }
    // A TE of "trailers" is end-to-end in practice: gRPC requires it.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// The request's id, created (a UUID v4) when the caller sent none.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(X_REQUEST_ID) {
        return id.clone();
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    // A userspace generator: the OS's would cost a system call per request,
    // and request ids need uniqueness, not secrecy.
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf);
    let value = HeaderValue::from_str(id).expect("a UUID is a valid header value");
    headers.insert(X_REQUEST_ID, value.clone());
    value
}

/// Keeps a valid `traceparent`, or starts a new sampled trace when the
/// caller sent none (or an invalid one).
pub fn ensure_traceparent(headers: &mut HeaderMap) {
    if headers
        .get(TRACEPARENT)
        .is_some_and(|v| is_valid_traceparent(v.as_bytes()))
    {
        return;
    }
    let trace_id = loop {
        let id = fastrand::u128(..);
        if id != 0 {
            break id;
        }
    };
    let span_id = fastrand::u64(1..);
    // `00-` 32 hex `-` 16 hex `-01`, written in place rather than formatted.
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    write_hex(&mut value[3..35], trace_id);
    write_hex(&mut value[36..52], u128::from(span_id));
    let value = HeaderValue::from_bytes(&value).expect("hex is a valid header value");
    headers.insert(TRACEPARENT, value);
}

/// Writes the low `out.len()` hex digits of `n`, lowercase.
fn write_hex(out: &mut [u8], mut n: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// `version-traceid-parentid-flags`, lowercase hex, ids not all zero.
fn is_valid_traceparent(v: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(v) else {
        return false;
    };
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, len: usize| {
        p.len() == len
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// Appends the connecting peer to `x-forwarded-for`.
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let value = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// `Content-Length` beside `Transfer-Encoding` is how requests are smuggled
/// past proxies (RFC 9112 §6.1); such a request is refused, not repaired.
/// hyper keeps only one of the two headers, so the server marks the request
/// (see [`remora_server::smuggling`]).
pub fn is_smuggling_attempt(headers: &HeaderMap, extensions: &http::Extensions) -> bool {
    extensions
        .get::<remora_server::smuggling::AmbiguousFraming>()
        .is_some()
        || headers.contains_key(header::TRANSFER_ENCODING)
            && headers.contains_key(header::CONTENT_LENGTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn an_upgrade_keeps_its_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut h = HeaderMap::new();
        let made = ensure_request_id(&mut h);
        assert_eq!(made.len(), 36);
        assert_eq!(ensure_request_id(&mut h), made);
    }

    #[test]
    fn traceparent_is_kept_when_valid_and_made_otherwise() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(valid));
        ensure_traceparent(&mut h);
        assert_eq!(h[TRACEPARENT], valid);
        h.insert(TRACEPARENT, HeaderValue::from_static("00-0000-bad"));
        ensure_traceparent(&mut h);
        assert!(is_valid_traceparent(h[TRACEPARENT].as_bytes()));
        assert_ne!(h[TRACEPARENT], valid);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().unwrap());
        append_forwarded_for(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
    }
}
