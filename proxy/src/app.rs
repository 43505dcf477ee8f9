//! Wires the proxy: build (listeners, identity, the mesh view, the two
//! directions, the admin server), serve, wait for SIGTERM, SIGINT or
//! `POST /shutdown`, drain. Each direction's path is built in its own
//! module ([`crate::outbound::serve`], [`crate::inbound::serve`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use remora_api::protocol::{is_valid_instance_name, Registration, MAX_REGISTRATION_TTL_SECONDS};
use remora_api::SpiffeId;
use remora_server::connections;
use remora_server::logs::LogLevel;
use remora_server::serve::{self as server, drain_channel, DrainTrigger, ServerSettings};
use remora_server::signals::Signals;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::app_probes::AppProbes;
use crate::config::Config;
use crate::discovery::control::{ControlClient, Registrar};
use crate::discovery::MeshView;
use crate::http::client::Clients;
use crate::identity::Identity;
use crate::inbound::{self, Inbound, StreamSettings};
use crate::metrics::Metrics;
use crate::outbound::balance::EndpointRegistry;
use crate::outbound::health::HealthChecks;
use crate::outbound::snapshot::Compiler;
use crate::outbound::tcp::TcpStreams;
use crate::outbound::{self, Discovery, Intercepted, Outbound};

/// How long the admin server may take to close once traffic has drained.
const ADMIN_DRAIN: Duration = Duration::from_secs(1);

pub async fn run(config: Config, log_level: LogLevel) -> anyhow::Result<()> {
    connections::raise_open_files_limit();
    let proxy = Proxy::build(&config, log_level).await?;
    // Caught from before the proxy says it is ready, so that no signal in
    // between kills it without a drain.
    let mut signals = Signals::install()?;
    let serving = proxy.serve(&config)?;
    let reason = tokio::select! {
        signal = signals.wait() => signal,
        _ = serving.shutdown.notified() => "POST /shutdown",
    };
    tracing::info!(reason, drain_timeout = %config.drain_timeout, "draining");
    serving.drain(config.drain_timeout.get()).await;
    Ok(())
}

/// Everything built and bound, nothing served yet.
struct Proxy {
    listeners: Listeners,
    metrics: Arc<Metrics>,
    identity: Option<Arc<Identity>>,
    /// With a control plane: the client, and this instance's registration.
    control: Option<(ControlClient, (String, Registration))>,
    outbound: Arc<Outbound>,
    inbound: Arc<Inbound>,
    admin: Arc<Admin>,
    ready: Arc<AtomicBool>,
    shutdown: Arc<Notify>,
}

impl Proxy {
    async fn build(config: &Config, log_level: LogLevel) -> anyhow::Result<Proxy> {
        if config.control_url.is_none() && config.token_file.is_some() {
            anyhow::bail!(
                "--token-file needs --control-url: the control plane signs the certificate"
            );
        }
        let listeners = Listeners::bind(config).await?;
        let inbound_addr = listeners.inbound.local_addr()?;
        let mut metrics = Metrics::new();
        // The identity comes first: with an https:// control plane, the
        // connection to it needs this proxy's certificate.
        let identity = match (&config.token_file, &config.trust_anchors) {
            (Some(_), Some(anchors)) => Some(Arc::new(Identity::load(anchors)?)),
            _ => None,
        };
        let (view, control) = mesh_source(config, identity.as_deref(), &metrics)?;
        if let (Some(client), Some(identity), Some(token_file)) =
            (&control, &identity, &config.token_file)
        {
            tokio::spawn(identity.clone().keep_current(
                client.clone(),
                token_file.clone(),
                metrics.identity_expiry.clone(),
            ));
        } else if control.is_some() {
            tracing::warn!(
                "no --token-file: this proxy has no identity; it is reached and calls in plaintext"
            );
        }

        let clients = Clients::new(identity.clone());
        let discovery = control.as_ref().map(|client| Discovery {
            client: Arc::new(client.clone()),
            timeout: config.discovery_timeout.get(),
        });
        let caller_body_idle = config.connections.stream_idle_timeout.get();
        let outbound = Outbound::build(&mut metrics, discovery, clients.clone(), caller_body_idle);
        let inbound = Arc::new(Inbound::new(
            config.app,
            &config.service,
            &clients,
            metrics.http.clone(),
            caller_body_idle,
            StreamSettings {
                detect_timeout: config.detect_timeout.get(),
                opaque_ports: config.opaque_ports.clone(),
                metrics: metrics.tcp.clone(),
            },
        ));
        let control = match control {
            Some(client) => Some((client, registration(config, inbound_addr)?)),
            None => None,
        };
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

        let metrics = Arc::new(metrics);
        let ready = Arc::new(AtomicBool::new(false));
        let shutdown = Arc::new(Notify::new());
        let admin = Arc::new(Admin {
            metrics: metrics.clone(),
            ready: ready.clone(),
            view: view.clone(),
            log_level,
            shutdown: shutdown.clone(),
            listeners: listeners.addresses.clone(),
            identity: identity.clone(),
            outbound: outbound.clone(),
            app_probes: AppProbes::new(&config.app_probes),
        });
        Ok(Proxy {
            listeners,
            metrics,
            identity,
            control,
            outbound,
            inbound,
            admin,
            ready,
            shutdown,
        })
    }

    /// Serves every listener, and turns ready: at once standalone; with a
    /// control plane, once the inbound view is in, the instance is
    /// registered, and (with an identity) the certificate is in hand.
    fn serve(self, config: &Config) -> anyhow::Result<Serving> {
        // The outbound and the inbound share half of the open files: a
        // proxied connection often needs one upstream too.
        let traffic_limits = config
            .connections
            .limits(connections::default_max_connections(2, 0.5));
        let settings = ServerSettings {
            limits: traffic_limits,
            vectored_writes: true,
            tls: None,
            metrics: None,
            opaque: None,
            transparent: false,
        };
        let (traffic_drain, traffic_draining) = drain_channel();
        let (admin_drain, admin_draining) = drain_channel();
        let mut traffic = vec![
            outbound::serve(
                Arc::new(Intercepted {
                    outbound: self.outbound.clone(),
                    detect_timeout: config.detect_timeout.get(),
                }),
                self.listeners.outbound,
                settings.clone(),
                &self.metrics.transport,
                traffic_draining.clone(),
            ),
            inbound::serve(
                self.inbound,
                self.listeners.inbound,
                settings.clone(),
                self.identity.as_deref(),
                &self.metrics.transport,
                traffic_draining.clone(),
            )?,
        ];
        for (service, listener) in self.listeners.tcp {
            let streams = TcpStreams {
                outbound: self.outbound.clone(),
                service,
            };
            let serving = outbound::tcp::serve(
                Arc::new(streams),
                listener,
                settings.clone(),
                &self.metrics.transport,
                traffic_draining.clone(),
            );
            traffic.push(serving);
        }
        // The admin server is not counted as proxied traffic.
        let admin = self.admin;
        let admin_server = tokio::spawn(server::serve(
            self.listeners.admin,
            ServerSettings {
                limits: config.connections.admin_limits(),
                ..settings
            },
            admin_draining,
            move |peer| {
                let admin = admin.clone();
                service_fn(move |req| {
                    let admin = admin.clone();
                    async move { admin.handle(req, peer.addr).await }
                })
            },
        ));
        let (registering, becoming_ready) = match self.control {
            Some((client, (instance, registration))) => {
                let registering = {
                    let (client, identity, app) = (client.clone(), self.identity, config.app);
                    // Registered only with a certificate in hand, so that
                    // no peer dials this instance before it can prove who
                    // it is.
                    tokio::spawn(async move {
                        if let Some(identity) = identity {
                            identity.obtained().await;
                        }
                        client.register(&instance, registration, app)
                    })
                };
                let ready = self.ready.clone();
                let becoming_ready = tokio::spawn(async move {
                    client.ready().await;
                    ready.store(true, Ordering::Release);
                    tracing::info!("ready");
                });
                (Some(registering), Some(becoming_ready))
            }
            None => {
                self.ready.store(true, Ordering::Release);
                tracing::info!("ready");
                (None, None)
            }
        };
        Ok(Serving {
            shutdown: self.shutdown,
            ready: self.ready,
            registering,
            becoming_ready,
            traffic,
            traffic_drain,
            admin_server,
            admin_drain,
        })
    }
}

/// The proxy at work, until told to stop.
struct Serving {
    shutdown: Arc<Notify>,
    ready: Arc<AtomicBool>,
    registering: Option<JoinHandle<Registrar>>,
    becoming_ready: Option<JoinHandle<()>>,
    traffic: Vec<JoinHandle<()>>,
    traffic_drain: DrainTrigger,
    admin_server: JoinHandle<()>,
    admin_drain: DrainTrigger,
}

impl Serving {
    /// Not ready, out of the registry, then the listeners close and what
    /// is in flight may finish within `limit`; the admin port last.
    async fn drain(self, limit: Duration) {
        if let Some(task) = self.becoming_ready {
            task.abort();
        }
        self.ready.store(false, Ordering::Release);
        // Leave the registry first, so callers stop picking this instance
        // while it still serves what they already sent.
        if let Some(registering) = self.registering {
            if registering.is_finished() {
                if let Ok(registrar) = registering.await {
                    registrar.deregister().await;
                }
            } else {
                registering.abort();
            }
        }
        self.traffic_drain.drain();
        let drained =
            tokio::time::timeout(limit, futures_util::future::join_all(self.traffic)).await;
        match drained {
            Ok(_) => tracing::info!("drained; exiting"),
            Err(_) => tracing::warn!("drain timeout passed with requests in flight; exiting"),
        }
        self.admin_drain.drain();
        let _ = tokio::time::timeout(ADMIN_DRAIN, self.admin_server).await;
    }
}

/// The listeners, bound before anything else so that a taken port fails
/// the start at once.
struct Listeners {
    outbound: TcpListener,
    inbound: TcpListener,
    admin: TcpListener,
    /// Each `--tcp-listen` service's.
    tcp: Vec<(String, TcpListener)>,
    /// What `/config` says of the listeners, and of the app.
    addresses: serde_json::Value,
}

impl Listeners {
    async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let outbound = bind(config.outbound, "outbound").await?;
        let inbound = bind(config.inbound, "inbound").await?;
        let admin = bind(config.admin, "admin").await?;
        let (outbound_addr, inbound_addr, admin_addr) = (
            outbound.local_addr()?,
            inbound.local_addr()?,
            admin.local_addr()?,
        );
        let mut tcp = Vec::new();
        let mut tcp_addresses = serde_json::Map::new();
        for (service, addr) in &config.tcp_listen {
            if tcp_addresses.contains_key(service) {
                anyhow::bail!("--tcp-listen names {service} twice");
            }
            let listener = bind(*addr, &format!("{service}'s tcp")).await?;
            let bound = listener.local_addr()?;
            tracing::info!(service, address = %bound, "listening for tcp streams");
            tcp_addresses.insert(service.clone(), serde_json::json!(bound));
            tcp.push((service.clone(), listener));
        }
        tracing::info!(outbound = %outbound_addr, inbound = %inbound_addr, admin = %admin_addr, app = %config.app, "listening");
        Ok(Listeners {
            outbound,
            inbound,
            admin,
            tcp,
            addresses: serde_json::json!({
                "outbound": outbound_addr, "inbound": inbound_addr, "admin": admin_addr, "app": config.app,
                "tcp": tcp_addresses,
            }),
        })
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} traffic on {addr}"))
}

/// Where the mesh view comes from: the file (standalone) or the control
/// plane, reached over mutual TLS when this proxy has an identity.
fn mesh_source(
    config: &Config,
    identity: Option<&Identity>,
    metrics: &Metrics,
) -> anyhow::Result<(watch::Receiver<Arc<MeshView>>, Option<ControlClient>)> {
    match (&config.config, &config.control_url) {
        (Some(path), _) => {
            let view = crate::discovery::watch_file(path, &metrics.config_reloads)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context("the mesh config has problems")?;
            Ok((view, None))
        }
        (None, Some(url)) => {
            let control_identity = match identity {
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
            Ok((view, Some(client)))
        }
        (None, None) => anyhow::bail!("give --config FILE or --control-url URL"),
    }
}

/// This instance's name and registration: the advertised address (the
/// flag; else --pod-ip with the inbound port; else the inbound listener's
/// address, loopback when it listens on all of them) with its labels.
fn registration(config: &Config, inbound: SocketAddr) -> anyhow::Result<(String, Registration)> {
    let advertise = match (config.advertise, config.pod_ip) {
        (Some(address), _) => address,
        (None, Some(ip)) => SocketAddr::new(ip, inbound.port()),
        (None, None) if inbound.ip().is_unspecified() => {
            let loopback = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), inbound.port());
            tracing::warn!(advertise = %loopback, "no --advertise and no --pod-ip (POD_IP): advertising loopback, which only sidecars on this host can reach");
            loopback
        }
        (None, None) => inbound,
    };
    // Refused here rather than by the control plane at every renewal.
    if let Some(why) = remora_api::protocol::undialable(advertise) {
        anyhow::bail!("--advertise (or --pod-ip): {why}");
    }
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
        app_port: std::num::NonZeroU16::new(config.app.port()),
        ttl_seconds,
    };
    Ok((instance, registration))
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
        self.health.sync(&compiled);
        self.outbound.update(compiled);
        self.inbound.update(
            view.inbound_policy(&self.service),
            view.inbound_protocol(&self.service),
            &mesh.trust_domain,
        );
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
