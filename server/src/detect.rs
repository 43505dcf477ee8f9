//! What a plaintext connection speaks, told from its first bytes, read
//! without consuming them: a TLS handshake, HTTP (an HTTP/1 request line
//! or the HTTP/2 preface), or anything else. A connection that says
//! nothing within the limit may be a protocol whose server speaks first.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;
/// Long enough for the longest method we take for HTTP, its space and the
/// first byte of its target.
const PEEK_BYTES: usize = 24;
/// The longest method token taken for HTTP (`PROPPATCH`, `UNSUBSCRIBE`,
/// and room to spare).
const MAX_METHOD: usize = 16;
/// How often a connection whose first bytes arrive in parts is looked at
/// again: a peek returns what is there at once, so it is not awaited.
const PARTIAL_RECHECK: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tls,
    Http,
    /// Bytes that are neither TLS nor HTTP.
    Other,
    /// Nothing within the limit: perhaps a server-speaks-first protocol.
    Silent,
    /// Closed (or failed) before it said enough.
    Closed,
}

/// What `stream` speaks, from the bytes it sends within `limit`.
pub async fn detect(stream: &TcpStream, limit: Duration) -> Protocol {
    let deadline = Instant::now() + limit;
    let mut first = [0u8; PEEK_BYTES];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Err(_) => return Protocol::Silent,
            Ok(Ok(0) | Err(_)) => return Protocol::Closed,
            Ok(Ok(n)) => n,
        };
        match classify(&first[..n]) {
            Some(protocol) => return protocol,
            // A prefix of a request line: wait for more, within the limit.
            None if n < PEEK_BYTES => {
                if Instant::now() + PARTIAL_RECHECK >= deadline {
                    return Protocol::Other;
                }
                tokio::time::sleep(PARTIAL_RECHECK).await;
            }
            None => return Protocol::Other,
        }
    }
}

/// What `bytes` (a connection's first) say, or `None` while they could
/// still become an HTTP request line.
fn classify(bytes: &[u8]) -> Option<Protocol> {
    if bytes.first() == Some(&TLS_HANDSHAKE) {
        return Some(Protocol::Tls);
    }
    // A method: upper-case letters, then a space, then the start of a
    // target: a path, `*` (OPTIONS, and HTTP/2's preface `PRI *`), an
    // absolute URI, or a CONNECT's authority. Inline commands of text
    // protocols (`SET key value`, `EHLO host`) fail the target's test.
    let method_len = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len > MAX_METHOD {
        return Some(Protocol::Other);
    }
    // Not yet whole: `None`.
    let &after = bytes.get(method_len)?;
    if method_len == 0 || after != b' ' {
        return Some(Protocol::Other);
    }
    let method = &bytes[..method_len];
    let &target = bytes.get(method_len + 1)?;
    let is_target = match method {
        b"CONNECT" => target.is_ascii_alphanumeric() || target == b'[',
        _ => matches!(target, b'/' | b'*' | b'h' | b'H'),
    };
    Some(if is_target {
        Protocol::Http
    } else {
        Protocol::Other
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_told_from_other_protocols() {
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /orders HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET http://orders/ HTTP/1.1\r\n",
            b"CONNECT orders:443 HTTP/1.1\r\n",
        ] {
            assert_eq!(classify(http), Some(Protocol::Http), "{http:?}");
        }
        for other in [
            &b"*1\r\n$4\r\nPING\r\n"[..],
            b"PING\r\n",
            b"SET key value\r\n",
            b"EHLO client.example\r\n",
            b"get / HTTP/1.1\r\n",
            b"\x00\x00\x00\x10",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"AVERYLONGWORDTHATISNOMETHOD /",
        ] {
            assert_eq!(classify(other), Some(Protocol::Other), "{other:?}");
        }
        assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Tls));
        for prefix in [&b"G"[..], b"GET", b"GET ", b"PRI "] {
            assert_eq!(classify(prefix), None, "{prefix:?}");
        }
    }
}
