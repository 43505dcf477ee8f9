//! Kubernetes service-account tokens (`--kubernetes`): a bearer token that
//! `--tokens` does not grant is checked with the TokenReview API for the
//! audience the sidecars' tokens are projected for (`--token-audience`),
//! and grants its service account's identity,
//! `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/NAME`.
//!
//! Reviews are not cached. A sidecar presents its token once per
//! certificate (every 17 hours with the default `--cert-ttl`), so a cache
//! would hardly ever be hit, while it would go on honouring the token of a
//! deleted pod or service account for as long as it kept it. What is
//! bounded instead is how many reviews are in flight: a flood of junk
//! tokens cannot become a flood of requests to the API server.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use remora_api::SpiffeId;
use tokio::sync::Semaphore;

/// Reviews in flight at once; more wait for one to finish.
const MAX_CONCURRENT_REVIEWS: usize = 16;
/// How long a review may take, waiting for its turn included, before the
/// sidecar is told to try again.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// How Kubernetes names a service account as a user.
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";

/// Checks tokens with the API server's TokenReview API.
pub struct TokenReviewer {
    api: kube::Api<TokenReview>,
    audience: String,
    trust_domain: String,
    in_flight: Semaphore,
}

/// Why a token grants no identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// Kubernetes does not vouch for the token, or not as a service
    /// account of this audience: the caller's fault (`401`).
    #[error("{0}")]
    Refused(String),
    /// Kubernetes could not be asked: a retry may succeed (`503`).
    #[error("{0}")]
    Unavailable(String),
}

impl TokenReviewer {
    pub fn new(client: kube::Client, audience: &str, trust_domain: &str) -> Self {
        Self {
            api: kube::Api::all(client),
            audience: audience.to_string(),
            trust_domain: trust_domain.to_string(),
            in_flight: Semaphore::new(MAX_CONCURRENT_REVIEWS),
        }
    }

    /// The identity of the service account `token` belongs to, if the API
    /// server vouches for it for our audience.
    pub async fn review(&self, token: &str) -> Result<SpiffeId, ReviewError> {
        // A service-account token is a JWT: three dot-separated parts.
        // Anything else is refused without asking the API server.
        if token.split('.').count() != 3 {
            return Err(ReviewError::Refused(
                "the token grants no identity: it is not in --tokens, and it is not a Kubernetes service-account token".into(),
            ));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let asked = async {
            let _turn = self.in_flight.acquire().await;
            self.api.create(&PostParams::default(), &review).await
        };
        let answer = tokio::time::timeout(REVIEW_TIMEOUT, asked)
            .await
            .map_err(|_| {
                ReviewError::Unavailable(format!(
                    "the Kubernetes API server did not answer the TokenReview within {REVIEW_TIMEOUT:?}; try again"
                ))
            })?
            .map_err(|e| {
                let hint = match &e {
                    kube::Error::Api(status) if status.is_forbidden() => {
                        " (the control plane's service account needs `create` on tokenreviews.authentication.k8s.io)"
                    }
                    _ => "",
                };
                tracing::warn!(error = %e, "TokenReview failed");
                ReviewError::Unavailable(format!(
                    "cannot review the token with the Kubernetes API server: {e}{hint}; try again"
                ))
            })?;
        identity_of(answer.status.as_ref(), &self.audience, &self.trust_domain)
            .map_err(ReviewError::Refused)
    }
}

/// The identity a TokenReview's status grants, or why it grants none.
fn identity_of(
    status: Option<&TokenReviewStatus>,
    audience: &str,
    trust_domain: &str,
) -> Result<SpiffeId, String> {
    let status = status.ok_or("the API server's TokenReview has no status")?;
    if status.authenticated != Some(true) {
        return Err(match status.error.as_deref() {
            Some(error) if !error.is_empty() => {
                format!("Kubernetes does not accept the token: {error}")
            }
            _ => "Kubernetes does not accept the token".to_string(),
        });
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(format!(
            "the token is not for the audience {audience:?} (Kubernetes confirms {audiences:?}): project it with `audience: {audience}`"
        ));
    }
    let user = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    let account = user
        .strip_prefix(SERVICE_ACCOUNT_USER)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty());
    let Some((namespace, name)) = account else {
        return Err(format!(
            "the token is {user:?}'s, not a service account's: only service accounts get identities"
        ));
    };
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{name}")
        .parse()
        .map_err(|e| format!("the service account {namespace}/{name} makes no identity: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, user: &str, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            user: Some(UserInfo {
                username: Some(user.to_string()),
                ..UserInfo::default()
            }),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            error: None,
        }
    }

    fn identity(status: &TokenReviewStatus) -> Result<String, String> {
        identity_of(Some(status), "remora-control", "cluster.local").map(|id| id.to_string())
    }

    #[test]
    fn a_service_account_of_the_audience_gets_its_identity() {
        let s = status(
            true,
            "system:serviceaccount:shop:orders",
            &["remora-control"],
        );
        assert_eq!(
            identity(&s).unwrap(),
            "spiffe://cluster.local/ns/shop/sa/orders"
        );
        // Service-account names may hold dots; a SPIFFE path segment may too.
        let s = status(
            true,
            "system:serviceaccount:shop:orders.v2",
            &["other", "remora-control"],
        );
        assert_eq!(
            identity(&s).unwrap(),
            "spiffe://cluster.local/ns/shop/sa/orders.v2"
        );
    }

    #[test]
    fn what_kubernetes_does_not_vouch_for_is_refused_with_the_reason() {
        let mut s = status(false, "", &[]);
        s.error = Some("[invalid bearer token, token lookup failed]".into());
        assert_eq!(
            identity(&s).unwrap_err(),
            "Kubernetes does not accept the token: [invalid bearer token, token lookup failed]"
        );
        let s = status(true, "system:serviceaccount:shop:orders", &["vault"]);
        assert!(
            identity(&s)
                .unwrap_err()
                .contains("not for the audience \"remora-control\""),
            "{s:?}"
        );
        let mut s = status(true, "system:serviceaccount:shop:orders", &[]);
        s.audiences = None;
        assert!(identity(&s).unwrap_err().contains("not for the audience"));
        let s = status(true, "alice", &["remora-control"]);
        assert!(identity(&s)
            .unwrap_err()
            .contains("\"alice\"'s, not a service account's"));
        let s = status(true, "system:serviceaccount:shop", &["remora-control"]);
        assert!(identity(&s).is_err());
        assert!(identity_of(None, "remora-control", "cluster.local").is_err());
    }
}
