//! `remora-control serve`: wires the state, its sources, the API and the
//! admin listener; runs until SIGTERM or SIGINT, then answers held
//! long-polls, closes connections and returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hyper::service::service_fn;
use remora_certs::leaf::CredentialStore;
use remora_certs::verify::ClientAuth;
use remora_server::connections::{self, Limits};
use remora_server::serve::{self as server, drain_channel, ServerSettings};
use remora_server::signals::Signals;
use remora_server::tls::{ServerTls, TlsOnly};
use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::api::fanout::ThreadViews;
use crate::api::{Api, RestartGrace};
use crate::ca::{Authority, IssuerSource, Tokens};
use crate::config::ServeArgs;
use crate::metrics::Metrics;
use crate::sources;
use crate::state::State;
use crate::threads;
use crate::tokenreview::TokenReviewer;

/// How long open connections get to close after shutdown begins; held
/// long-polls are answered at once, so this bounds only slow clients.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let namespaces = args.kubernetes_namespaces()?;
    connections::raise_open_files_limit();
    let metrics = Metrics::new();
    let first_version = unix_millis_now();
    let restart = RestartGrace {
        first_version,
        until: std::time::Instant::now() + args.restart_grace.get(),
    };
    let state = Arc::new(State::new(
        first_version,
        metrics.registrations.clone(),
        args.quotas(),
    ));
    if !args.restart_grace.get().is_zero() {
        state.warming_up();
        let (state, grace) = (state.clone(), args.restart_grace.get());
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            state.warmed_up();
            tracing::info!("restart grace over: views are complete");
        });
    }
    let config = match &args.config {
        Some(path) => {
            let view = remora_server::mesh_file::watch_file(path, &metrics.config_reloads)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("the mesh config {} has problems", path.display()))?;
            let mesh = view.borrow().mesh.clone();
            tracing::info!(config = %path.display(), services = mesh.services.len(), "mesh loaded");
            state.set_mesh(mesh);
            tokio::spawn(sources::file::follow(view.clone(), state.clone()));
            Some(view)
        }
        None => {
            tracing::info!("no --config: the mesh holds only the services that register");
            None
        }
    };

    let trust_domain = config.as_ref().map_or_else(
        || remora_api::DEFAULT_TRUST_DOMAIN.to_string(),
        |view| view.borrow().mesh.trust_domain.clone(),
    );
    let kubernetes = if args.kubernetes {
        Some(crate::kubernetes::connect(args.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    let authority = authority(&args, &trust_domain, kubernetes.as_ref())?;
    let kubernetes_listed = kubernetes.map(|client| {
        let metrics = metrics.kubernetes.clone();
        sources::kubernetes::start(client, &namespaces, &trust_domain, state.clone(), metrics)
    });
    let api_tls = match &authority {
        Some(authority) => Some(api_tls(authority.clone(), &trust_domain)?),
        None => None,
    };

    let mut signals = Signals::install()?;
    let api_listener = bind(args.api, "the API").await?;
    let admin_listener = bind(args.admin, "admin").await?;
    let (api_addr, admin_addr) = (api_listener.local_addr()?, admin_listener.local_addr()?);
    let threads = args.api_threads();
    tracing::info!(api = %api_addr, admin = %admin_addr, threads, "listening");
    // The API dials nothing per request: most of the open files are its
    // connections', shared by its threads, each listening on its own.
    let mut api_limits = args
        .connections
        .limits(connections::default_max_connections(1, 0.75));
    api_limits.max_connections = api_limits.max_connections.div_ceil(threads.get());
    let admin_limits = args.connections.admin_limits();

    let metrics = Arc::new(metrics);
    let ready = Arc::new(AtomicBool::new(true));
    let (drain, draining) = drain_channel();
    let (admin_drain, admin_draining) = drain_channel();
    tokio::spawn(sources::registrations::sweep(
        state.clone(),
        draining.clone(),
    ));

    let api = Arc::new(Api::new(
        state,
        &metrics,
        draining.clone(),
        restart,
        authority,
    ));
    let api_server = tokio::spawn(
        threads::serve_on_threads(threads, api_listener, move |listener| {
            let api = api.clone();
            let views = ThreadViews::start(api.state.clone());
            server::serve(
                listener,
                ServerSettings {
                    tls: api_tls.clone(),
                    ..settings(api_limits)
                },
                draining.clone(),
                move |peer| {
                    let (api, views) = (api.clone(), views.clone());
                    let peer = Arc::new(peer);
                    service_fn(move |req| {
                        let (api, views, peer) = (api.clone(), views.clone(), peer.clone());
                        async move { Ok::<_, Infallible>(api.handle(req, &views, &peer).await) }
                    })
                },
            )
        })
        .context("cannot start the API's threads")?,
    );
    let admin = Arc::new(Admin {
        metrics,
        config,
        ready: ready.clone(),
        kubernetes_listed,
    });
    let admin_server = tokio::spawn(server::serve(
        admin_listener,
        settings(admin_limits),
        admin_draining,
        move |_peer| {
            let admin = admin.clone();
            service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(&req)) }
            })
        },
    ));

    let reason = signals.wait().await;
    tracing::info!(reason, "shutting down: answering held long-polls");
    ready.store(false, Ordering::Release);
    drain.drain();
    if tokio::time::timeout(SHUTDOWN_GRACE, api_server)
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; exiting");
    }
    admin_drain.drain();
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_server).await;
    tracing::info!("stopped");
    Ok(())
}

/// The certificate authority, unless identity is off; with a Kubernetes
/// client, it checks the tokens `--tokens` does not grant with TokenReview.
fn authority(
    args: &ServeArgs,
    trust_domain: &str,
    kubernetes: Option<&kube::Client>,
) -> anyhow::Result<Option<Arc<Authority>>> {
    if args.insecure {
        if args.issuer_cert.is_some() || args.issuer_key.is_some() || args.tokens.is_some() {
            anyhow::bail!("--insecure turns identity off: give it without --issuer-cert, --issuer-key and --tokens");
        }
        tracing::warn!("--insecure: identity is OFF; no certificates are issued and the mesh runs in plaintext");
        return Ok(None);
    }
    let source = IssuerSource::from_flags(
        args.issuer_cert.clone(),
        args.issuer_key.clone(),
        args.trust_anchors.clone(),
        &args.data_dir,
    )?;
    let tokens = match &args.tokens {
        Some(path) => Tokens::read(path, trust_domain)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("the tokens file {} has problems", path.display()))?,
        None if kubernetes.is_none() => {
            tracing::warn!("no --tokens: no token grants an identity, so no certificate is issued");
            Tokens::default()
        }
        None => Tokens::default(),
    };
    tracing::info!(
        tokens = tokens.len(),
        token_review = kubernetes.is_some(),
        cert_ttl = %args.cert_ttl,
        "certificate authority"
    );
    let authority = Authority::load(&source, tokens, args.cert_ttl.get(), trust_domain)?;
    Ok(Some(Arc::new(match kubernetes {
        Some(client) => {
            tracing::info!(audience = %args.token_audience, "service-account tokens are checked with Kubernetes' TokenReview");
            authority.reviewing(TokenReviewer::new(
                client.clone(),
                &args.token_audience,
                trust_domain,
            ))
        }
        None => authority,
    })))
}

/// The API's TLS: the control plane's own certificate (renewed at 70% of
/// its life), and the mesh's anchors to check clients. A client may come
/// without a certificate, to ask for its first one; nothing else is
/// answered without one (see `api`). Plaintext is refused.
fn api_tls(authority: Arc<Authority>, trust_domain: &str) -> anyhow::Result<ServerTls> {
    let store = Arc::new(CredentialStore::default());
    store.set(authority.own_credentials(trust_domain)?);
    let tls = ServerTls::new(
        &authority.anchors,
        store.clone(),
        ClientAuth::Optional,
        &[b"h2".as_slice(), b"http/1.1".as_slice()],
        Arc::new(TlsOnly),
    )?;
    let trust_domain = trust_domain.to_string();
    tokio::spawn(async move {
        loop {
            let renew_at = store.get().map_or_else(SystemTime::now, |c| c.renew_at());
            let wait = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
            match authority.own_credentials(&trust_domain) {
                Ok(credentials) => store.set(credentials),
                Err(e) => tracing::error!(error = %e, "cannot renew the API's own certificate"),
            }
        }
    });
    Ok(tls)
}

fn settings(limits: Limits) -> ServerSettings {
    ServerSettings {
        limits,
        // Pushes answer many streams of a connection at once; unvectored,
        // their answers coalesce into one write (see `api::chunks`).
        vectored_writes: false,
        tls: None,
        // Connections and bytes are the proxy's traffic metrics.
        metrics: None,
        opaque: None,
        transparent: false,
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// The first version of this process: its start time in Unix milliseconds,
/// so that versions keep growing across restarts.
fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(1)
}
