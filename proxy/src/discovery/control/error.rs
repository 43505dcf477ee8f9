//! What can go wrong talking to the control plane. Each error says where
//! (the request's URI, or the control plane's address) and why, in one
//! line: it is what `/config`'s `last_error` and the logs show. Every one
//! is retried, with backoff, while the last views keep serving.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The shared connection could not be made.
    #[error("cannot connect to the control plane at {control_plane}: {source}")]
    Unreachable {
        control_plane: String,
        source: ConnectError,
    },
    /// The shared connection ended; `None` when it was closed cleanly.
    #[error("the connection to the control plane at {control_plane} ended: {}", ended(.source))]
    Lost {
        control_plane: String,
        source: Option<hyper::Error>,
    },
    /// A connection of one request's own (asking for a certificate) could
    /// not be made.
    #[error("{uri}: {source}")]
    Connect { uri: String, source: ConnectError },
    /// The request could not be built from its parts.
    #[error("{uri}: {source}")]
    Request { uri: String, source: http::Error },
    /// No whole answer, body included, within `limit`.
    #[error("{uri}: no answer within {limit:?}")]
    Timeout { uri: String, limit: Duration },
    /// The request could not be sent, or the answer's head not read.
    #[error("{uri}: {source}")]
    Exchange { uri: String, source: hyper::Error },
    /// The answer's body could not be read, or was too large.
    #[error("{uri}: reading the answer: {source}")]
    Read {
        uri: String,
        source: Box<dyn StdError + Send + Sync>,
    },
    /// A poll answered with neither a view, nor "unchanged", nor "unknown".
    #[error("{uri}: {status}: {body}")]
    Refused {
        uri: String,
        status: StatusCode,
        body: String,
    },
    /// The control plane would not take this instance's registration.
    #[error("{uri}: registration refused: {status}: {body}")]
    RegistrationRefused {
        uri: String,
        status: StatusCode,
        body: String,
    },
    /// A view the control plane sent that this proxy cannot read.
    #[error("{path}: a view that does not parse: {source}")]
    BadView {
        path: String,
        source: serde_json::Error,
    },
}

/// Why a connection to the control plane could not be made. The text
/// carries the whole chain of causes (a handshake's error says little
/// without the I/O error under it), so `source()` is left empty rather
/// than say them twice.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error("{}", Chain(.0))]
    Tcp(std::io::Error),
    #[error("the TLS handshake with the control plane failed: {}", Chain(.0))]
    Tls(std::io::Error),
    #[error("the HTTP/2 handshake failed: {}", Chain(.0))]
    Http2(hyper::Error),
}

/// An answer's body as the text of an error: what the control plane said.
pub(super) fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim().to_string()
}

fn ended(source: &Option<hyper::Error>) -> &dyn fmt::Display {
    match source {
        Some(e) => e,
        None => &"closed",
    }
}

/// An error and each of its causes, `: `-separated.
struct Chain<'a>(&'a dyn StdError);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_failed_connection_says_where_and_every_cause() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = ControlError::Unreachable {
            control_plane: "http://127.0.0.1:1".into(),
            source: ConnectError::Tcp(refused),
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to the control plane at http://127.0.0.1:1: connection refused"
        );
        let nested = std::io::Error::other(Outer(std::io::Error::other("inner")));
        let e = ControlError::Connect {
            uri: "https://cp:8086/v1/certificate".into(),
            source: ConnectError::Tls(nested),
        };
        assert_eq!(
            e.to_string(),
            "https://cp:8086/v1/certificate: the TLS handshake with the control plane failed: outer: inner"
        );
        let e = ConnectError::Timeout(Duration::from_secs(5));
        assert_eq!(e.to_string(), "no connection within 5s");
    }

    #[test]
    fn a_closed_connection_says_so() {
        let e = ControlError::Lost {
            control_plane: "http://cp:8086".into(),
            source: None,
        };
        assert_eq!(
            e.to_string(),
            "the connection to the control plane at http://cp:8086 ended: closed"
        );
    }

    #[test]
    fn a_refusal_says_the_status_and_what_the_control_plane_said() {
        let e = ControlError::RegistrationRefused {
            uri: "http://cp:8086/v1/registrations/orders/a".into(),
            status: StatusCode::BAD_REQUEST,
            body: body_text(b"  ttl_seconds: at least 1\n"),
        };
        assert_eq!(
            e.to_string(),
            "http://cp:8086/v1/registrations/orders/a: registration refused: 400 Bad Request: ttl_seconds: at least 1"
        );
        let e = ControlError::Timeout {
            uri: "http://cp:8086/v1/inbound/orders?version=0&wait=0ms".into(),
            limit: Duration::from_secs(10),
        };
        assert_eq!(
            e.to_string(),
            "http://cp:8086/v1/inbound/orders?version=0&wait=0ms: no answer within 10s"
        );
    }
}
