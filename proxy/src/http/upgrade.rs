//! Protocol upgrades (WebSocket and the like) pass through: once both sides
//! have switched, the two upgraded connections are spliced byte for byte.

use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::headers;

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
