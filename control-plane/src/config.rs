//! The command line: subcommands `serve` (the default) and `check`; every
//! flag of `serve` also reads `REMORA_<FLAG>` from the environment.
//! Defaults are the named constants below.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use remora_server::connections::ConnectionFlags;
use remora_server::logs::LogFormat;

use crate::state::Quotas;
use crate::state::{DEFAULT_MAX_INSTANCES_PER_SERVICE, DEFAULT_MAX_SERVICES_PER_IDENTITY};

pub const DEFAULT_API: &str = "0.0.0.0:8086";
pub const DEFAULT_ADMIN: &str = "0.0.0.0:9990";
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Longer than a sidecar's renewal period (a third of its 30s TTL), so
/// every sidecar has registered again before a previous view is replaced.
pub const DEFAULT_RESTART_GRACE: &str = "15s";
/// Where a development CA is kept when no issuer is given.
pub const DEFAULT_DATA_DIR: &str = "remora-data";
pub const DEFAULT_CERT_TTL: &str = "24h";

#[derive(Debug, Parser)]
#[command(
    name = "remora-control",
    version,
    about = "remora's control plane: serves the mesh to the proxies and takes their registrations",
    // `remora-control --config mesh.yaml` serves, as `serve` would.
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the mesh: long-poll views, registrations and the admin port
    /// (the default when no subcommand is given). Boxed: the other
    /// subcommands are far smaller.
    Serve(Box<ServeArgs>),
    /// Check a mesh config: print every problem as FILE:LINE:COLUMN: KEY:
    /// message and exit 1, or print a summary and exit 0.
    Check {
        /// The mesh config to check.
        file: PathBuf,
    },
    /// Add the sidecar to Kubernetes workloads: reads YAML (one or many
    /// documents) on stdin and writes it on stdout with a remora-proxy in
    /// every Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and
    /// CronJob; everything else is left byte for byte as it was.
    Inject(crate::inject::Settings),
    /// Run a demo on loopback: a control plane and a small shop of five
    /// services, each behind its own remora-proxy, with steady traffic and
    /// each service's rate, success rate and latency printed once a second.
    Demo(remora_demo::DemoOptions),
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// The mesh config, watched and reloaded on change; a bad edit keeps
    /// the last good config serving. Without it the mesh holds only the
    /// services that register.
    #[arg(long, env = "REMORA_CONFIG")]
    pub config: Option<PathBuf>,

    /// Listener for the proxies: long-poll views, registrations, listing.
    #[arg(long, env = "REMORA_API", default_value = DEFAULT_API)]
    pub api: SocketAddr,

    /// Listener for /metrics, /ready and /live.
    #[arg(long, env = "REMORA_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,

    /// After a start, how long views are marked incomplete, so that proxies
    /// keep the endpoints they lack while sidecars register again
    /// (registrations live in memory only).
    #[arg(long, env = "REMORA_RESTART_GRACE", default_value = DEFAULT_RESTART_GRACE)]
    pub restart_grace: remora_api::HumanDuration,

    /// The issuer's certificate (PEM), as `remora-certs init` writes it
    /// (issuer.crt). Without the three issuer flags, a development CA is
    /// made in --data-dir.
    #[arg(long, env = "REMORA_ISSUER_CERT")]
    pub issuer_cert: Option<PathBuf>,

    /// The issuer's private key (PEM; issuer.key).
    #[arg(long, env = "REMORA_ISSUER_KEY")]
    pub issuer_key: Option<PathBuf>,

    /// The trust anchors (PEM; ca.crt, or a bundle of two while rotating).
    #[arg(long, env = "REMORA_TRUST_ANCHORS")]
    pub trust_anchors: Option<PathBuf>,

    /// Where the development CA lives when no issuer is given.
    #[arg(long, env = "REMORA_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Which bearer token grants which identity: a YAML map from identity
    /// to the SHA-256 hex of its token. Without it no certificate is issued.
    #[arg(long, env = "REMORA_TOKENS")]
    pub tokens: Option<PathBuf>,

    /// How long the certificates the control plane signs are valid.
    #[arg(long, env = "REMORA_CERT_TTL", default_value = DEFAULT_CERT_TTL)]
    pub cert_ttl: remora_api::HumanDuration,

    /// Turn identity off: no certificate authority, a plaintext mesh.
    /// Warned at every start.
    #[arg(long, env = "REMORA_INSECURE")]
    pub insecure: bool,

    /// Run with Kubernetes: a bearer token --tokens does not grant is
    /// checked with the TokenReview API (a projected service-account token
    /// grants spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/NAME), and endpoints
    /// come from the EndpointSlices of Services, so every replica serves
    /// the same. The API server is found as kubectl finds it: --kubeconfig,
    /// $KUBECONFIG or ~/.kube/config, else the pod's service account.
    #[arg(long, env = "REMORA_KUBERNETES")]
    pub kubernetes: bool,

    /// With --kubernetes: the kubeconfig that names the API server and the
    /// credentials to reach it with (its current context).
    #[arg(long, env = "REMORA_KUBECONFIG", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,

    /// With --kubernetes: a namespace whose Services, EndpointSlices and
    /// Pods are watched; repeatable, or comma-separated. None: every
    /// namespace.
    #[arg(
        long = "kubernetes-namespace",
        env = "REMORA_KUBERNETES_NAMESPACE",
        value_delimiter = ',',
        requires = "kubernetes"
    )]
    pub kubernetes_namespaces: Vec<String>,

    /// With --kubernetes: the audience a service-account token must be
    /// for, as `remora-control inject` projects it (--token-audience).
    #[arg(long, env = "REMORA_TOKEN_AUDIENCE", default_value = crate::inject::DEFAULT_TOKEN_AUDIENCE)]
    pub token_audience: String,

    /// The most instances one service may have registered at once; a new
    /// one past it is refused (403), renewals are always taken.
    #[arg(long, env = "REMORA_MAX_INSTANCES_PER_SERVICE", default_value_t = DEFAULT_MAX_INSTANCES_PER_SERVICE)]
    pub max_instances_per_service: NonZeroUsize,

    /// The most services one identity may have instances of registered at
    /// once (with --insecure: one caller's IP address); a new one past it
    /// is refused (403), renewals are always taken.
    #[arg(long, env = "REMORA_MAX_SERVICES_PER_IDENTITY", default_value_t = DEFAULT_MAX_SERVICES_PER_IDENTITY)]
    pub max_services_per_identity: NonZeroUsize,

    /// Threads that serve the API, each holding its share of the proxies'
    /// connections; one per core when not given.
    #[arg(long, env = "REMORA_THREADS")]
    pub threads: Option<NonZeroUsize>,

    #[command(flatten)]
    pub connections: ConnectionFlags,

    #[arg(long, env = "REMORA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// A tracing filter: `info`, `remora_control=debug,hyper=info`.
    #[arg(long, env = "REMORA_LOG_LEVEL", default_value = DEFAULT_LOG_LEVEL)]
    pub log_level: String,
}

impl ServeArgs {
    /// The registration quotas the flags set.
    pub fn quotas(&self) -> Quotas {
        Quotas {
            instances_per_service: self.max_instances_per_service,
            services_per_registrant: self.max_services_per_identity,
        }
    }

    /// `--kubernetes-namespace`, sorted, each checked as Kubernetes checks
    /// a namespace's name: an RFC 1123 label, the rule of mesh service
    /// names too.
    pub fn kubernetes_namespaces(&self) -> anyhow::Result<Vec<String>> {
        for namespace in &self.kubernetes_namespaces {
            if !remora_api::load::is_valid_service_name(namespace) {
                anyhow::bail!(
                    "--kubernetes-namespace {namespace:?} is not a namespace's name (lowercase letters, digits and '-', at most 63)"
                );
            }
        }
        let mut namespaces = self.kubernetes_namespaces.clone();
        namespaces.sort();
        namespaces.dedup();
        Ok(namespaces)
    }

    /// `--threads`, or one per core.
    pub fn api_threads(&self) -> NonZeroUsize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_is_the_default_subcommand() {
        let cli = Cli::try_parse_from(["remora-control", "--config", "m.yaml"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.config, Some(PathBuf::from("m.yaml")));
        assert_eq!(cli.serve.api, DEFAULT_API.parse().unwrap());

        let cli = Cli::try_parse_from(["remora-control", "serve", "--api", "127.0.0.1:1"]).unwrap();
        match cli.command {
            Some(Command::Serve(args)) => assert_eq!(args.api, "127.0.0.1:1".parse().unwrap()),
            other => panic!("{other:?}"),
        }

        let cli = Cli::try_parse_from(["remora-control", "check", "m.yaml"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Check { .. })));
    }

    #[test]
    fn registration_quotas_have_defaults_and_flags() {
        let cli = Cli::try_parse_from(["remora-control"]).unwrap();
        assert_eq!(cli.serve.quotas(), Quotas::default());
        let cli = Cli::try_parse_from([
            "remora-control",
            "--max-instances-per-service",
            "5000",
            "--max-services-per-identity",
            "3",
        ])
        .unwrap();
        assert_eq!(cli.serve.quotas().instances_per_service.get(), 5000);
        assert_eq!(cli.serve.quotas().services_per_registrant.get(), 3);
        // Zero would refuse every registration: use no control plane.
        assert!(
            Cli::try_parse_from(["remora-control", "--max-services-per-identity", "0"]).is_err()
        );
    }

    #[test]
    fn kubernetes_flags_go_with_kubernetes() {
        let cli = Cli::try_parse_from(["remora-control"]).unwrap();
        assert!(!cli.serve.kubernetes);
        assert_eq!(cli.serve.token_audience, "remora-control");
        let cli = Cli::try_parse_from([
            "remora-control",
            "--kubernetes",
            "--kubeconfig",
            "k.yaml",
            "--kubernetes-namespace",
            "shop,payments",
            "--kubernetes-namespace",
            "shop",
        ])
        .unwrap();
        assert_eq!(
            cli.serve.kubernetes_namespaces().unwrap(),
            ["payments", "shop"]
        );
        assert!(Cli::try_parse_from(["remora-control", "--kubeconfig", "k.yaml"]).is_err());
        let cli = Cli::try_parse_from([
            "remora-control",
            "--kubernetes",
            "--kubernetes-namespace",
            "Shop",
        ])
        .unwrap();
        let e = cli.serve.kubernetes_namespaces().unwrap_err();
        assert!(e.to_string().contains("\"Shop\" is not a namespace"), "{e}");
    }
}
