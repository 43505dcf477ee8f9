//! Sidecars with identities on one control plane: the callee's, of a
//! service, in front of its app, and a caller's for each calling identity,
//! whose outbound a test dials as its app would.

use std::net::SocketAddr;

use crate::identity::{grant_tokens, token_file};
use crate::{ControlPlane, Proxy, Upstream};

pub struct Sidecars {
    pub callee: Proxy,
    /// One per calling identity, in the order given.
    pub callers: Vec<Proxy>,
    _callers_app: Upstream,
    _control: ControlPlane,
    _dir: tempfile::TempDir,
}

/// What each sidecar is started with.
#[derive(Clone, Copy, Default)]
pub struct Args<'a> {
    /// Every sidecar's extra flags.
    pub all: &'a [&'a str],
    /// The callers' own extra flags.
    pub callers: &'a [&'a str],
}

impl Sidecars {
    /// On a control plane serving `mesh`, which names the identities
    /// `service` and each of `callers`: `service`'s sidecar in front of
    /// `app`, and a sidecar for each caller.
    pub async fn start(
        mesh: &str,
        service: &str,
        app: SocketAddr,
        callers: &[&str],
        args: Args<'_>,
    ) -> Sidecars {
        let dir = tempfile::tempdir().expect("a temp dir");
        let grants: Vec<(String, String)> = std::iter::once(service)
            .chain(callers.iter().copied())
            .map(|identity| (identity.to_string(), format!("{identity}-token")))
            .collect();
        let grants: Vec<(&str, &str)> = grants
            .iter()
            .map(|(identity, token)| (identity.as_str(), token.as_str()))
            .collect();
        let tokens = grant_tokens(dir.path(), &grants);
        let control = ControlPlane::start_with(mesh, &["--tokens", &tokens]).await;
        let anchors = control.development_anchors().display().to_string();
        let start = |identity: &str, app: SocketAddr, own: &[&str]| {
            let token = token_file(dir.path(), identity);
            let mut flags = vec!["--token-file", &token, "--trust-anchors", &anchors];
            flags.extend(args.all);
            flags.extend(own);
            let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
            let (url, identity) = (control.url(), identity.to_string());
            async move {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                Proxy::controlled(&url, &identity, app, &flags).await
            }
        };
        let callee = start(service, app, &[]).await;
        // Nobody calls the callers back; but a sidecar registers only once
        // its app accepts connections.
        let callers_app = Upstream::named("caller").await;
        let mut started = Vec::new();
        for caller in callers {
            started.push(start(caller, callers_app.addr, args.callers).await);
        }
        Sidecars {
            callee,
            callers: started,
            _callers_app: callers_app,
            _control: control,
            _dir: dir,
        }
    }

    /// The first caller's sidecar.
    pub fn caller(&self) -> &Proxy {
        &self.callers[0]
    }
}
