//! Protocol upgrades (WebSocket and the like) pass through: once both sides
//! have switched, the two upgraded connections are spliced byte for byte.

use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::headers;

/// Readies a caller's request head for the next hop: hop-by-hop headers
/// stay on their hop and `Expect` is answered here (hyper sends `100
/// Continue` when the body is first read). Returns the caller's side of an
/// upgrade, to splice once the far end agrees.
pub fn forward_request_head(parts: &mut http::request::Parts) -> Option<OnUpgrade> {
    let upgrade = headers::is_upgrade(&parts.headers);
    let downstream_upgrade = upgrade
        .then(|| parts.extensions.remove::<OnUpgrade>())
        .flatten();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(http::header::EXPECT);
    downstream_upgrade
}

/// Readies an upstream response's head for the caller: hop-by-hop headers
/// stay on their hop, and on `101 Switching Protocols` the caller's and the
/// upstream's connections are spliced.
pub fn forward_response_head(
    parts: &mut http::response::Parts,
    downstream_upgrade: Option<OnUpgrade>,
) {
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let (Some(down), Some(up)) = (downstream_upgrade, parts.extensions.remove::<OnUpgrade>())
        {
            splice(down, up);
        }
    }
    headers::strip_hop_by_hop(&mut parts.headers, switching);
}

/// Splices the caller's and the upstream's upgraded connections until
/// either side closes.
pub fn splice(downstream: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection ended");
        }
    });
}
