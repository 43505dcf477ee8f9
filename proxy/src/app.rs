//! Wires the proxy together: the mesh view, the two traffic directions and
//! the admin server, each on its own listener; then runs until SIGTERM,
//! SIGINT or `POST /shutdown`, and drains.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::admin::Admin;
use crate::config::Config;
use crate::discovery::control::ControlClient;
use crate::discovery::MeshView;
use crate::http::client::Clients;
use crate::identity::Identity;
use crate::inbound::Inbound;
use crate::metrics::{Direction, Metrics};
use crate::outbound::balance::EndpointRegistry;
use crate::outbound::health::HealthChecks;
use crate::outbound::snapshot::Compiler;
use crate::outbound::{Discovery, Outbound};
use remora_api::protocol::{is_valid_instance_name, Registration, MAX_REGISTRATION_TTL_SECONDS};
use remora_api::SpiffeId;
use remora_certs::verify::{ClientAuth, ALPN_H2};
use remora_server::logs::LogLevel;
use remora_server::serve::{self as server, drain_channel, ServerSettings};
use remora_server::signals::Signals;
use remora_server::tls::ServerTls;

pub async fn run(config: Config, log_level: LogLevel) -> anyhow::Result<()> {
    if config.control_url.is_none() && config.token_file.is_some() {
        anyhow::bail!("--token-file needs --control-url: the control plane signs the certificate");
    }
    let mut metrics = Metrics::new();
    let outbound_listener = bind(config.outbound, "outbound").await?;
    let inbound_listener = bind(config.inbound, "inbound").await?;
    let admin_listener = bind(config.admin, "admin").await?;
    let (outbound_addr, inbound_addr, admin_addr) = (
        outbound_listener.local_addr()?,
        inbound_listener.local_addr()?,
        admin_listener.local_addr()?,
    );
    let listeners = serde_json::json!({
        "outbound": outbound_addr, "inbound": inbound_addr, "admin": admin_addr, "app": config.app,
    });
    tracing::info!(outbound = %outbound_addr, inbound = %inbound_addr, admin = %admin_addr, app = %config.app, "listening");

    // The identity comes first: with an https:// control plane, the
    // connection to it needs this proxy's certificate.
    let identity = match (&config.token_file, &config.trust_anchors) {
        (Some(_), Some(anchors)) => Some(Arc::new(Identity::load(anchors)?)),
        _ => None,
    };
    let (view, control) = match (&config.config, &config.control_url) {
        (Some(path), _) => {
            let view = crate::discovery::watch_file(path, &metrics.config_reloads)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("the mesh config has problems")?;
            (view, None)
        }
        (None, Some(url)) => {
            let control_identity = match &identity {
                Some(identity) => Some((
                    &identity.anchors,
                    identity.store.clone(),
                    SpiffeId::resolve(&config.control_identity, remora_api::DEFAULT_TRUST_DOMAIN)
                        .map_err(|e| anyhow::anyhow!("--control-identity: {e}"))?,
                )),
                None => None,
            };
            let (client, view) = ControlClient::start(
                url,
                &config.service,
                metrics.control.clone(),
                control_identity,
            )?;
            (view, Some(client))
        }
        (None, None) => anyhow::bail!("give --config FILE or --control-url URL"),
    };
    match (&control, &config.token_file, &identity) {
        (Some(client), Some(token_file), Some(identity)) => {
            tokio::spawn(identity.clone().keep_current(
                client.clone(),
                token_file.clone(),
                metrics.identity_expiry.clone(),
            ));
        }
        (Some(_), _, _) => {
            tracing::warn!(
                "no --token-file: this proxy has no identity; it is reached and calls in plaintext"
            );
        }
        _ => {}
    }
    let registration = match &control {
        Some(_) => Some(registration(&config, inbound_addr)?),
        None => None,
    };

    let clients = Clients::new(identity.clone());
    let mut outbound = Outbound::new(metrics.http.clone());
    if let Some(client) = &control {
        outbound = outbound.with_discovery(Discovery {
            client: Arc::new(client.clone()),
            timeout: config.discovery_timeout.get(),
        });
    }
    let outbound = Arc::new(outbound);
    metrics
        .registry
        .register_collector(Box::new(crate::outbound::EndpointGauges(outbound.clone())));
    let inbound = Arc::new(Inbound::new(
        config.app,
        &config.service,
        &clients,
        metrics.http.clone(),
    ));
    let metrics = Arc::new(metrics);
    let follower = Follower {
        outbound: outbound.clone(),
        inbound: inbound.clone(),
        endpoints: EndpointRegistry::default(),
        clients,
        health: HealthChecks::default(),
        service: config.service.clone(),
    };
    follower.apply(&view.borrow().clone());
    tokio::spawn(follower.follow(view.clone()));

    let ready = Arc::new(AtomicBool::new(false));
    let shutdown = Arc::new(Notify::new());
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        ready: ready.clone(),
        view,
        log_level,
        shutdown: shutdown.clone(),
        listeners,
        identity: identity.clone(),
    });

    let (drain, draining) = drain_channel();
    let (admin_drain, admin_draining) = drain_channel();
    let settings = |metrics| ServerSettings {
        header_read_timeout: config.header_read_timeout.get(),
        vectored_writes: true,
        tls: None,
        metrics,
    };
    // With an identity, callers that start TLS are served over mutual
    // TLS, and the service's `mtls` mode says whether others are.
    let inbound_tls = match &identity {
        Some(identity) => Some(ServerTls::new(
            &identity.anchors,
            identity.store.clone(),
            ClientAuth::Required,
            &[ALPN_H2],
            inbound.clone(),
        )?),
        None => None,
    };
    let outbound_server = tokio::spawn(server::serve(
        outbound_listener,
        settings(Some(metrics.transport.listener(Direction::Outbound, false))),
        draining.clone(),
        move |_peer| {
            let outbound = outbound.clone();
            service_fn(move |req| {
                let outbound = outbound.clone();
                async move { Ok::<_, Infallible>(outbound.handle(req).await) }
            })
        },
    ));
    let inbound_server = tokio::spawn(server::serve(
        inbound_listener,
        ServerSettings {
            metrics: Some(
                metrics
                    .transport
                    .listener(Direction::Inbound, inbound_tls.is_some()),
            ),
            tls: inbound_tls,
            ..settings(None)
        },
        draining,
        move |peer| {
            let inbound = inbound.clone();
            let caller = Arc::new(inbound.caller(peer));
            service_fn(move |req| {
                let (inbound, caller) = (inbound.clone(), caller.clone());
                async move { Ok::<_, Infallible>(inbound.handle(req, &caller).await) }
            })
        },
    ));
    // The admin server is not counted as proxied traffic.
    let admin_server = tokio::spawn(server::serve(
        admin_listener,
        settings(None),
        admin_draining,
        move |peer| {
            let admin = admin.clone();
            service_fn(move |req| {
                let admin = admin.clone();
                async move { admin.handle(req, peer.addr).await }
            })
        },
    ));

    // Caught from before the proxy says it is ready, so that no signal in
    // between kills it without a drain.
    let mut signals = Signals::install()?;
    // Standalone, the proxy is ready once it serves; with a control plane,
    // once it has its inbound view, is registered, and (with an identity)
    // holds its certificate.
    let (registering, becoming_ready) = match (&control, registration) {
        (Some(client), Some((instance, registration))) => {
            // Registered only with a certificate in hand, so that no peer
            // dials this instance before it can prove who it is.
            let registering = {
                let (client, identity, app) = (client.clone(), identity.clone(), config.app);
                tokio::spawn(async move {
                    if let Some(identity) = identity {
                        identity.obtained().await;
                    }
                    client.register(&instance, registration, app)
                })
            };
            let (client, ready) = (client.clone(), ready.clone());
            let becoming_ready = tokio::spawn(async move {
                client.ready().await;
                ready.store(true, Ordering::Release);
                tracing::info!("ready");
            });
            (Some(registering), Some(becoming_ready))
        }
        _ => {
            ready.store(true, Ordering::Release);
            tracing::info!("ready");
            (None, None)
        }
    };

    let reason = tokio::select! {
        signal = signals.wait() => signal,
        _ = shutdown.notified() => "POST /shutdown",
    };
    tracing::info!(reason, drain_timeout = %config.drain_timeout, "draining");
    if let Some(task) = becoming_ready {
        task.abort();
    }
    ready.store(false, Ordering::Release);
    // Leave the registry first, so callers stop picking this instance
    // while it still serves what they already sent.
    if let Some(registering) = registering {
        if registering.is_finished() {
            if let Ok(registrar) = registering.await {
                registrar.deregister().await;
            }
        } else {
            registering.abort();
        }
    }
    drain.drain();
    let drained = tokio::time::timeout(config.drain_timeout.get(), async {
        let _ = tokio::join!(outbound_server, inbound_server);
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!("drain timeout passed with requests in flight; exiting"),
    }
    admin_drain.drain();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), admin_server).await;
    Ok(())
}

/// This instance's name and registration: the advertised address (the
/// flag; else `$POD_IP` with the inbound port; else the inbound listener's
/// address, loopback when it listens on all of them) with its labels.
fn registration(config: &Config, inbound: SocketAddr) -> anyhow::Result<(String, Registration)> {
    let advertise = match (config.advertise, std::env::var("POD_IP")) {
        (Some(address), _) => address,
        (None, Ok(ip)) => {
            let ip: IpAddr = ip
                .parse()
                .with_context(|| format!("POD_IP={ip:?} is not an IP address"))?;
            SocketAddr::new(ip, inbound.port())
        }
        (None, Err(_)) if inbound.ip().is_unspecified() => {
            let loopback = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), inbound.port());
            tracing::warn!(advertise = %loopback, "no --advertise and no POD_IP: advertising loopback, which only sidecars on this host can reach");
            loopback
        }
        (None, Err(_)) => inbound,
    };
    let instance = config
        .instance
        .clone()
        .unwrap_or_else(|| format!("{}-{}", advertise.ip(), advertise.port()).replace(':', "-"));
    if !is_valid_instance_name(&instance) {
        anyhow::bail!("--instance {instance:?}: use letters, digits, '-', '.' and '_'");
    }
    let ttl_seconds = config.registration_ttl.get().as_secs();
    if !(1..=MAX_REGISTRATION_TTL_SECONDS).contains(&ttl_seconds) {
        anyhow::bail!(
            "--registration-ttl {}: give 1s to {MAX_REGISTRATION_TTL_SECONDS}s",
            config.registration_ttl
        );
    }
    let registration = Registration {
        address: advertise,
        labels: config.labels.iter().cloned().collect(),
        ttl_seconds,
    };
    Ok((instance, registration))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} traffic on {addr}"))
}

/// What follows the mesh view, with the state kept from one view to the
/// next (endpoint state, connection pools, health probes).
struct Follower {
    outbound: Arc<Outbound>,
    inbound: Arc<Inbound>,
    endpoints: EndpointRegistry,
    clients: Clients,
    health: HealthChecks,
    service: String,
}

impl Follower {
    /// Compiles the view's mesh and swaps it in.
    fn apply(&self, view: &MeshView) {
        let mesh = &view.mesh;
        let previous = self.outbound.snapshot();
        let compiled = Compiler {
            endpoints: &self.endpoints,
            clients: &self.clients,
            previous: Some(&previous),
        }
        .compile(mesh);
        self.health.sync(&compiled, &self.clients);
        self.outbound.update(compiled);
        self.inbound
            .update(view.inbound_policy(&self.service), &mesh.trust_domain);
    }

    /// Applies every new version of the view.
    async fn follow(self, mut view: watch::Receiver<Arc<MeshView>>) {
        let mut version = view.borrow().version;
        while view.changed().await.is_ok() {
            let current = view.borrow_and_update().clone();
            if current.version != version {
                version = current.version;
                self.apply(&current);
            }
        }
    }
}
