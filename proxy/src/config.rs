//! The command line: every flag also reads `REMORA_<FLAG>` from the
//! environment. Defaults are the named constants below.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use remora_api::HumanDuration;

use remora_server::connections::ConnectionFlags;
use remora_server::logs::LogFormat;

pub const DEFAULT_OUTBOUND: &str = "127.0.0.1:4140";
pub const DEFAULT_INBOUND: &str = "0.0.0.0:4143";
pub const DEFAULT_ADMIN: &str = "0.0.0.0:4191";
pub const DEFAULT_APP: &str = "127.0.0.1:8080";
pub const DEFAULT_DRAIN_TIMEOUT: &str = "30s";
pub const DEFAULT_WAIT_READY_TIMEOUT: &str = "2m";
pub const DEFAULT_SERVICE: &str = "app";
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub const DEFAULT_THREADS: &str = "1";
pub const DEFAULT_DISCOVERY_TIMEOUT: &str = "5s";
pub const DEFAULT_REGISTRATION_TTL: &str = "30s";
/// Long enough for any client that speaks first; short enough that a
/// server-speaks-first protocol's client, which waits in silence for the
/// greeting, is not kept waiting long.
pub const DEFAULT_DETECT_TIMEOUT: &str = "1s";
pub const DEFAULT_CONTROL_IDENTITY: &str = remora_api::identity::CONTROL_PLANE_IDENTITY;

/// The whole command line: the proxy's flags, or a subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "remora-proxy",
    version,
    about = "remora's sidecar proxy: the local app's calls out, and calls in to it",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Wait until the proxy beside it is ready, then exit 0 (1 when the
    /// time is up). A classic sidecar's `postStart` hook runs it, so that
    /// Kubernetes starts the app only once its proxy is ready.
    WaitReady(WaitReadyArgs),
    /// Install the iptables rules of transparent mode (as root, or with
    /// NET_ADMIN and NET_RAW, in the pod's network namespace): the pod's
    /// inbound TCP to the inbound listener, the app's outbound TCP to the
    /// outbound listener. A pod's init container runs it.
    Init(InitArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The uid the proxy runs as: its own connections are not redirected.
    #[arg(long, env = "REMORA_PROXY_UID", default_value_t = remora_api::PROXY_UID)]
    pub proxy_uid: u32,

    /// The inbound listener's port.
    #[arg(long, default_value_t = 4143)]
    pub inbound_port: u16,

    /// The outbound listener's port.
    #[arg(long, default_value_t = 4140)]
    pub outbound_port: u16,

    /// The admin listener's port, never redirected: probes and scrapes
    /// reach it directly.
    #[arg(long, default_value_t = 4191)]
    pub admin_port: u16,

    /// The only inbound ports redirected (`8080`), at most 15: the app's
    /// port, which the sidecar serves, so that the pod's other ports (a
    /// metrics port, a second listener) are reached as without a mesh.
    /// Default: every port.
    #[arg(long, env = "REMORA_INBOUND_PORTS", value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_ports: Vec<u16>,

    /// Inbound ports not redirected (`22,9100`).
    #[arg(long, env = "REMORA_SKIP_INBOUND_PORTS", value_delimiter = ',')]
    pub skip_inbound_ports: Vec<u16>,

    /// Outbound destination ports not redirected (`5432,6379`).
    #[arg(long, env = "REMORA_SKIP_OUTBOUND_PORTS", value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,

    /// IPv4 only: leave ip6tables alone (as is done without asking on a
    /// kernel with no IPv6).
    #[arg(long, env = "REMORA_NO_IPV6")]
    pub no_ipv6: bool,

    /// Print the commands, as a shell script that does the same, and run
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct WaitReadyArgs {
    /// The proxy's admin listener; an unspecified address (`0.0.0.0`)
    /// means this host.
    #[arg(long, env = "REMORA_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,

    /// How long to wait.
    #[arg(long, default_value = DEFAULT_WAIT_READY_TIMEOUT)]
    pub timeout: HumanDuration,
}

/// `SERVICE=ADDRESS`, as --tcp-listen takes it.
fn parse_tcp_listen(s: &str) -> Result<(String, SocketAddr), String> {
    let (service, address) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: give SERVICE=ADDRESS, as in redis=127.0.0.1:6379"))?;
    if !remora_api::load::is_valid_service_name(service) {
        return Err(format!("{service:?} is not a service name"));
    }
    let address = address
        .parse()
        .map_err(|e| format!("{address:?} is not an address (IP:PORT): {e}"))?;
    Ok((service.to_string(), address))
}

#[derive(Clone, Debug, Parser)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "control_url"])))]
pub struct Config {
    /// The mesh config to serve from (standalone mode). It is watched and
    /// reloaded on change; a bad edit keeps the last good config serving.
    #[arg(long, env = "REMORA_CONFIG")]
    pub config: Option<PathBuf>,

    /// The control plane to take the mesh from (`http://remora-control:8086`),
    /// instead of `--config`.
    #[arg(long, env = "REMORA_CONTROL_URL", conflicts_with = "config")]
    pub control_url: Option<http::Uri>,

    /// A file holding the bearer token that grants this proxy its identity
    /// (in Kubernetes, a projected service-account token). Read again at
    /// every renewal. With it, the proxy gets a certificate from the
    /// control plane before it is ready, and renews it at 70% of its life.
    #[arg(long, env = "REMORA_TOKEN_FILE", requires = "trust_anchors")]
    pub token_file: Option<PathBuf>,

    /// The mesh's trust anchors (PEM; one certificate, or two while the
    /// anchor rotates).
    #[arg(long, env = "REMORA_TRUST_ANCHORS", requires = "token_file")]
    pub trust_anchors: Option<PathBuf>,

    /// The identity the control plane's certificate must name, with an
    /// `https://` --control-url: `NAME.NAMESPACE` in the default trust
    /// domain, or a whole `spiffe://` URI for another.
    #[arg(long, env = "REMORA_CONTROL_IDENTITY", default_value = DEFAULT_CONTROL_IDENTITY)]
    pub control_identity: String,

    /// The address other sidecars dial for this instance, registered with
    /// the control plane. Default: --pod-ip with the inbound port, else the
    /// inbound listener's own address.
    #[arg(long, env = "REMORA_ADVERTISE")]
    pub advertise: Option<SocketAddr>,

    /// The pod's IP address, which Kubernetes' downward API gives as
    /// `POD_IP` (hence that variable, not `REMORA_POD_IP`): advertised with
    /// the inbound port when --advertise is not given.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,

    /// A label of this instance's registration (`version=v2`), with a key
    /// and value as Kubernetes allows them; repeatable. Routes split
    /// traffic by labels.
    #[arg(long = "label", env = "REMORA_LABEL", value_delimiter = ',', value_parser = remora_api::labels::parse_label)]
    pub labels: Vec<(String, String)>,

    /// This instance's name in the control plane's registry. Default: the
    /// advertised address, as `IP-PORT`.
    #[arg(long, env = "REMORA_INSTANCE")]
    pub instance: Option<String>,

    /// How long a registration lives unless renewed; renewed at a third of it.
    #[arg(long, env = "REMORA_REGISTRATION_TTL", default_value = DEFAULT_REGISTRATION_TTL)]
    pub registration_ttl: HumanDuration,

    /// How long the app's first call to a service waits for the control
    /// plane's view of it before failing with `503 discovery-timeout`.
    #[arg(long, env = "REMORA_DISCOVERY_TIMEOUT", default_value = DEFAULT_DISCOVERY_TIMEOUT)]
    pub discovery_timeout: HumanDuration,

    /// The service this proxy's app belongs to: labels inbound metrics and
    /// picks the `inbound:` policy (rate limit) of that service.
    #[arg(long, env = "REMORA_SERVICE", default_value = DEFAULT_SERVICE)]
    pub service: String,

    /// Where the local app listens; inbound requests are forwarded there.
    #[arg(long, env = "REMORA_APP", default_value = DEFAULT_APP)]
    pub app: SocketAddr,

    /// Listener for the local app's calls to other services.
    #[arg(long, env = "REMORA_OUTBOUND", default_value = DEFAULT_OUTBOUND)]
    pub outbound: SocketAddr,

    /// Listener for calls from other services to the local app.
    #[arg(long, env = "REMORA_INBOUND", default_value = DEFAULT_INBOUND)]
    pub inbound: SocketAddr,

    /// A listener for the local app's opaque TCP streams to a `protocol:
    /// tcp` service, as `SERVICE=ADDRESS` (`redis=127.0.0.1:6379`);
    /// repeatable. Each connection is one stream to one of the service's
    /// endpoints.
    #[arg(long = "tcp-listen", env = "REMORA_TCP_LISTEN", value_delimiter = ',', value_parser = parse_tcp_listen)]
    pub tcp_listen: Vec<(String, SocketAddr)>,

    /// How long a plaintext inbound connection's first bytes may take to
    /// show that it speaks HTTP; a connection silent that long (a
    /// server-speaks-first protocol) or not speaking HTTP is passed to the
    /// app as an opaque stream, where the service's policy allows.
    #[arg(long, env = "REMORA_DETECT_TIMEOUT", default_value = DEFAULT_DETECT_TIMEOUT)]
    pub detect_timeout: HumanDuration,

    /// Ports of the app whose inbound connections are opaque streams
    /// without detection (`5432,6379`); a `protocol: tcp` service's are all.
    #[arg(long, env = "REMORA_OPAQUE_PORTS", value_delimiter = ',')]
    pub opaque_ports: Vec<u16>,

    /// The app's probes the admin listener forwards to it, comma-separated:
    /// `PORT/PATH` (an HTTP GET: `GET /app-probe/8080/healthz` on the admin
    /// port asks the app at 127.0.0.1:8080), `https:PORT/PATH`, `tcp:PORT`
    /// or `grpc:PORT[/SERVICE]`. `inject` points the kubelet's probes there
    /// in transparent mode, where the app's own port meets the inbound.
    #[arg(long, env = "REMORA_APP_PROBES", value_delimiter = ',')]
    pub app_probes: Vec<remora_api::probe::ProbeTarget>,

    /// Listener for /metrics, /ready, /live, /config, /log-level, /shutdown.
    #[arg(long, env = "REMORA_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,

    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "REMORA_DRAIN_TIMEOUT", default_value = DEFAULT_DRAIN_TIMEOUT)]
    pub drain_timeout: HumanDuration,

    #[command(flatten)]
    pub connections: ConnectionFlags,

    /// Threads that serve traffic. One is right for most sidecars; raise it
    /// for a busy service on a node with cores to spare.
    #[arg(long, env = "REMORA_THREADS", default_value = DEFAULT_THREADS)]
    pub threads: std::num::NonZeroUsize,

    #[arg(long, env = "REMORA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// A tracing filter: `info`, `remora=debug,hyper=info`, `remora::access=off`.
    #[arg(long, env = "REMORA_LOG_LEVEL", default_value = DEFAULT_LOG_LEVEL)]
    pub log_level: String,
}
