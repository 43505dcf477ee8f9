//! The sidecar's own identity: a key made in memory (it never leaves the
//! process), a certificate for it that the control plane signs for the
//! identity the token grants, renewed at 70% of its life. Each new one
//! replaces the last in the credential store that TLS reads; a connection
//! keeps the credentials it was set up with, so a renewal drops nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use http::StatusCode;
use prometheus_client::metrics::gauge::Gauge;
use remora_certs::leaf::{self, CredentialStore, Credentials};
use remora_certs::verify::TrustAnchors;
use tokio::sync::watch;

use crate::discovery::control::{self, ControlClient, ControlError};

/// The mesh's trust anchors and this proxy's credentials, once it has them.
pub struct Identity {
    pub anchors: TrustAnchors,
    pub store: Arc<CredentialStore>,
    /// True once the first credentials are in the store.
    obtained: watch::Sender<bool>,
}

impl Identity {
    /// The anchors from `anchors`; no credentials yet.
    pub fn load(anchors: &Path) -> anyhow::Result<Identity> {
        let text = std::fs::read_to_string(anchors)
            .with_context(|| format!("cannot read --trust-anchors {}", anchors.display()))?;
        let anchors = TrustAnchors::from_pem(&text)
            .with_context(|| format!("--trust-anchors {}", anchors.display()))?;
        Ok(Identity {
            anchors,
            store: Arc::default(),
            obtained: watch::channel(false).0,
        })
    }

    /// Resolves once the first credentials are in the store.
    pub async fn obtained(&self) {
        let _ = self.obtained.subscribe().wait_for(|got| *got).await;
    }

    /// Keeps credentials in the store for as long as the proxy runs: the
    /// first at once, retried with backoff until the control plane gives
    /// one, then each renewed at [`leaf::RENEW_AT`] of its life (retried
    /// the same way, while the one in use still serves).
    pub async fn keep_current(
        self: Arc<Self>,
        client: ControlClient,
        token_file: PathBuf,
        expiry: Gauge,
    ) {
        let mut backoff = control::backoff();
        loop {
            match obtain(&client, &token_file).await {
                Ok(credentials) => {
                    backoff.reset();
                    let renew_at = credentials.renew_at();
                    tracing::info!(
                        identity = %credentials.identity,
                        not_after = %humantime::format_rfc3339_seconds(credentials.leaf.not_after),
                        renew_at = %humantime::format_rfc3339_seconds(renew_at),
                        "certificate obtained"
                    );
                    expiry.set(unix_seconds(credentials.leaf.not_after));
                    self.store.set(credentials);
                    self.obtained.send_replace(true);
                    let wait = renew_at
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    let wait = backoff.failed();
                    let expired = self
                        .store
                        .get()
                        .is_some_and(|c| c.leaf.not_after <= SystemTime::now());
                    if expired {
                        tracing::error!(error = %e, retry_in = ?wait, "no new certificate and the last one has expired: peers will refuse this proxy");
                    } else {
                        tracing::warn!(error = %e, retry_in = ?wait, "no certificate from the control plane");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// What `/config` shows of the identity.
    pub fn status(&self) -> serde_json::Value {
        match self.store.get() {
            None => serde_json::json!({ "state": "waiting for a certificate" }),
            Some(c) => serde_json::json!({
                "state": "ready",
                "id": c.identity.as_str(),
                "serial": c.leaf.serial,
                "issuer": c.leaf.issuer,
                // Issuers of two anchors may share a name; serials differ.
                "issuer_serial": c
                    .certified
                    .cert
                    .get(1)
                    .and_then(|der| remora_certs::inspect::inspect(der).ok())
                    .map(|issuer| issuer.serial),
                "not_before": humantime::format_rfc3339_seconds(c.leaf.not_before).to_string(),
                "not_after": humantime::format_rfc3339_seconds(c.leaf.not_after).to_string(),
                "renew_at": humantime::format_rfc3339_seconds(c.renew_at()).to_string(),
                "trust_anchors": self.anchors.certs.len(),
            }),
        }
    }
}

/// Why no certificate this time; [`Identity::keep_current`] tries again.
#[derive(Debug, thiserror::Error)]
enum ObtainError {
    #[error("cannot read --token-file {}: {source}", path.display())]
    TokenUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--token-file {} is empty", .0.display())]
    TokenEmpty(PathBuf),
    /// A key or CSR could not be made, or the chain is not for the key.
    #[error(transparent)]
    Certs(#[from] remora_certs::Error),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the control plane refused a certificate: {status}: {reason}")]
    Refused { status: StatusCode, reason: String },
}

/// One certificate: a new key, its CSR, the control plane's signature.
async fn obtain(client: &ControlClient, token_file: &Path) -> Result<Credentials, ObtainError> {
    let token = tokio::fs::read_to_string(token_file)
        .await
        .map_err(|source| ObtainError::TokenUnreadable {
            path: token_file.to_path_buf(),
            source,
        })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(ObtainError::TokenEmpty(token_file.to_path_buf()));
    }
    let pending = leaf::new_request()?;
    let (status, body) = client.request_certificate(token, &pending.csr_pem).await?;
    let text = String::from_utf8_lossy(&body);
    if status != StatusCode::OK {
        return Err(ObtainError::Refused {
            status,
            reason: text.trim().to_string(),
        });
    }
    Ok(pending.complete(&text)?)
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_the_status_and_why() {
        let e = ObtainError::Refused {
            status: StatusCode::UNAUTHORIZED,
            reason: "the token grants no identity".into(),
        };
        assert_eq!(
            e.to_string(),
            "the control plane refused a certificate: 401 Unauthorized: the token grants no identity"
        );
        let e = ObtainError::TokenEmpty(PathBuf::from("token"));
        assert_eq!(e.to_string(), "--token-file token is empty");
    }
}
