//! Protocol upgrades (WebSocket and the like) pass through: once both sides
//! have switched, the two upgraded connections are spliced byte for byte.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

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
