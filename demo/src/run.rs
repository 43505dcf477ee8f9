//! `remora-control demo`: starts a control plane and the shop's five
//! services, each behind its own `remora-proxy`, on loopback; drives steady
//! traffic into the gateway; prints each service's numbers once a second
//! from its sidecar's metrics; stops everything on Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use remora_api::HumanDuration;
use tokio::process::Command;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinSet;

use crate::children::Process;
use crate::client::{self, Client};
use crate::shop::Role;
use crate::stats::{self, Counters, Window};
use crate::traffic::{Totals, Traffic};

pub const DEFAULT_RPS: u32 = 50;
/// The demo's mesh: the services' timeouts, retries and injected faults.
pub const MESH_YAML: &str = include_str!("../mesh.yaml");
/// What the faults of `MESH_YAML` do, said when the demo starts.
const FAULTS: [&str; 2] = [
    "3% of calls to inventory fail with 503: orders answers 502 and the gateway's sidecar retries",
    "2% of calls to products wait 100ms in the caller's sidecar: see the p99 of orders and gateway",
];
/// How long the proxies may take to register with the control plane.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(100);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(1);
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// The column header is printed again after this many reports.
const HEADER_EVERY: u32 = 20;
/// How long the processes may take to exit after SIGTERM, all together;
/// then they are killed. The proxies drain within `PROXY_DRAIN_TIMEOUT`.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const PROXY_DRAIN_TIMEOUT: &str = "2s";
/// Every process binds an ephemeral loopback port and says which.
const LOOPBACK_ANY_PORT: &str = "127.0.0.1:0";
/// Every sidecar registers with this label; routes can split by it.
const INSTANCE_LABEL: &str = "version=v1";
/// Access logs write a line per request: at the demo's rates, hundreds of
/// megabytes an hour. Off unless asked for.
const PROXY_LOG_LEVEL: &str = "info,remora::access=off";
const PROXY_LOG_LEVEL_WITH_ACCESS: &str = "info";

/// `remora-control demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoOptions {
    /// Requests per second sent to the shop's gateway.
    #[arg(long, env = "REMORA_RPS", default_value_t = DEFAULT_RPS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rps: u32,

    /// Stop after sending traffic this long (`30s`, `5m`); without it, run
    /// until Ctrl-C.
    #[arg(long, env = "REMORA_DURATION")]
    pub duration: Option<HumanDuration>,

    /// Where to write the demo's mesh.yaml and every process's log. Default:
    /// a new temporary directory. Kept when the demo ends.
    #[arg(long, env = "REMORA_DIR")]
    pub dir: Option<PathBuf>,

    /// Write each proxy's access log (a line per request) to its log file.
    #[arg(long, env = "REMORA_ACCESS_LOG")]
    pub access_log: bool,

    /// The `remora-proxy` to run. Default: the one beside this executable.
    #[arg(long, env = "REMORA_PROXY_BIN")]
    pub proxy_bin: Option<PathBuf>,

    /// The `remora-shop` to run. Default: the one beside this executable.
    #[arg(long, env = "REMORA_SHOP_BIN")]
    pub shop_bin: Option<PathBuf>,
}

/// Runs the demo until Ctrl-C, SIGTERM or the end of `--duration`; then
/// stops every process it started. Fails when a process does not start or
/// ends by itself.
pub fn run(options: DemoOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(demo(options))
}

/// The binaries the demo runs.
struct Binaries {
    control: PathBuf,
    proxy: PathBuf,
    shop: PathBuf,
}

impl Binaries {
    /// The control plane is this executable; the others are beside it, as
    /// cargo builds them, unless given.
    fn find(options: &DemoOptions) -> anyhow::Result<Binaries> {
        let control = std::env::current_exe().context("finding this executable's path")?;
        let dir = control
            .parent()
            .context("finding this executable's directory")?;
        let find = |given: &Option<PathBuf>, name: &str, flag: &str| match given {
            Some(path) if path.is_file() => Ok(path.clone()),
            Some(path) => bail!("--{flag} {}: no such file", path.display()),
            None if dir.join(name).is_file() => Ok(dir.join(name)),
            None => bail!(
                "{name} is not built: the demo runs it from {}, beside {}. \
                 Build every binary of the workspace with `cargo build --workspace` \
                 (with --release if this one is a release build), or give its path with --{flag}",
                dir.display(),
                control.display()
            ),
        };
        Ok(Binaries {
            proxy: find(&options.proxy_bin, "remora-proxy", "proxy-bin")?,
            shop: find(&options.shop_bin, "remora-shop", "shop-bin")?,
            control,
        })
    }
}

/// A service of the shop, as started.
struct Service {
    role: Role,
    app: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    /// The index of its proxy in `Running::processes`.
    proxy: usize,
}

/// Everything the demo started, so that every path out of it stops them.
#[derive(Default)]
struct Running {
    /// The control plane first.
    processes: Vec<Process>,
    traffic: Option<Traffic>,
}

impl Running {
    /// SIGTERM to the apps and proxies, which deregister as they drain,
    /// then to the control plane; anything still running after
    /// `STOP_TIMEOUT` is killed. Returns the processes that did not exit
    /// cleanly, with how they ended.
    async fn stop(&mut self) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        let mut unclean = Vec::new();
        if let Some((control, others)) = self.processes.split_first_mut() {
            stop(others, deadline, &mut unclean).await;
            stop(std::slice::from_mut(control), deadline, &mut unclean).await;
        }
        unclean
    }
}

/// SIGTERM to each of `processes`, then waits for them until `deadline`.
async fn stop(
    processes: &mut [Process],
    deadline: tokio::time::Instant,
    unclean: &mut Vec<String>,
) {
    for p in processes.iter() {
        p.terminate();
    }
    for p in processes.iter_mut() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match p.wait(left).await {
            Some(status) if status.success() => {}
            Some(status) => unclean.push(format!("the {} ({status})", p.name)),
            None => unclean.push(format!("the {} (killed after {STOP_TIMEOUT:?})", p.name)),
        }
    }
}

struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "interrupted",
            _ = self.terminate.recv() => "terminated",
        }
    }
}

async fn demo(options: DemoOptions) -> anyhow::Result<()> {
    let binaries = Binaries::find(&options)?;
    let dir = work_dir(options.dir.as_deref())?;
    let mut signals = Signals::new()?;
    let mut running = Running::default();
    let ended = tokio::select! {
        ended = start_and_report(&options, &binaries, &dir, &mut running) => ended,
        why = signals.recv() => Ok(why.to_string()),
    };
    let totals = match running.traffic.take() {
        Some(traffic) => Some(traffic.stop().await),
        None => None,
    };
    println!("\nstopping {} processes ...", running.processes.len());
    let unclean = running.stop().await;
    if let Some(Totals {
        sent,
        ok,
        failed,
        unanswered,
    }) = totals
    {
        println!(
            "the shoppers sent {sent} requests: {ok} answered 2xx, {failed} another status, {unanswered} not answered"
        );
    }
    for p in &unclean {
        println!("did not exit cleanly: {p}");
    }
    println!("logs: {}", dir.display());
    let why = ended?;
    println!("demo {why}; every process it started has stopped");
    Ok(())
}

/// The directory given, or a new temporary one that outlives the demo.
fn work_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Ok(dir.to_path_buf())
        }
        None => Ok(tempfile::Builder::new()
            .prefix("remora-demo-")
            .tempdir()
            .context("creating a temporary directory")?
            .keep()),
    }
}

/// Starts everything, then reports until `--duration` passes. Says why it
/// ended.
async fn start_and_report(
    options: &DemoOptions,
    binaries: &Binaries,
    dir: &Path,
    running: &mut Running,
) -> anyhow::Result<String> {
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, MESH_YAML).with_context(|| format!("writing {}", mesh.display()))?;
    let tokens = write_tokens(dir)?;
    println!("starting the control plane and the shop's five services, each behind its own remora-proxy ...");

    let mut command = Command::new(&binaries.control);
    command
        .arg("serve")
        .arg("--config")
        .arg(&mesh)
        .args(["--api", LOOPBACK_ANY_PORT, "--admin", LOOPBACK_ANY_PORT])
        .arg("--data-dir")
        .arg(dir.join(CA_DIR))
        .arg("--tokens")
        .arg(&tokens)
        .args(["--log-format", "json"]);
    let control = Process::start("control plane", command, &dir.join("control-plane.log")).await?;
    let (api, control_admin) = (control.address("api")?, control.address("admin")?);
    running.processes.push(control);

    let log_level = if options.access_log {
        PROXY_LOG_LEVEL_WITH_ACCESS
    } else {
        PROXY_LOG_LEVEL
    };
    let mut services = Vec::new();
    for role in Role::ALL {
        let name = role.name();
        let app = free_loopback_port()?;
        let mut command = Command::new(&binaries.proxy);
        command
            .args(["--control-url", &format!("https://{api}")])
            .args(["--service", name, "--app", &app.to_string()])
            .args([
                "--outbound",
                LOOPBACK_ANY_PORT,
                "--inbound",
                LOOPBACK_ANY_PORT,
            ])
            .args(["--admin", LOOPBACK_ANY_PORT, "--label", INSTANCE_LABEL])
            .args(["--drain-timeout", PROXY_DRAIN_TIMEOUT])
            .arg("--token-file")
            .arg(token_file(dir, name))
            .arg("--trust-anchors")
            .arg(dir.join(CA_DIR).join("ca.crt"))
            .args(["--log-format", "json", "--log-level", log_level])
            // The sidecar advertises its own loopback inbound address.
            .env_remove("POD_IP");
        let proxy = Process::start(
            &format!("{name} proxy"),
            command,
            &dir.join(format!("{name}-proxy.log")),
        )
        .await?;
        let (outbound, inbound, admin) = (
            proxy.address("outbound")?,
            proxy.address("inbound")?,
            proxy.address("admin")?,
        );
        running.processes.push(proxy);
        let mut command = Command::new(&binaries.shop);
        command
            .args(["--role", name, "--listen", &app.to_string()])
            .args(["--outbound", &outbound.to_string()]);
        let shop = Process::start(
            &format!("{name} app"),
            command,
            &dir.join(format!("{name}-app.log")),
        )
        .await?;
        running.processes.push(shop);
        services.push(Service {
            role,
            app,
            inbound,
            admin,
            proxy: running.processes.len() - 2,
        });
    }

    let client = client::client();
    wait_ready(&client, &services, running).await?;
    let gateway = &services[0];
    print_table(api, control_admin, &services, options.rps, dir);
    running.traffic = Some(Traffic::start(gateway.inbound, options.rps));
    report(&client, &services, running, options.duration).await
}

/// A port nobody listens on now, for an app: the proxy is started with the
/// app's address before the app exists, as in a pod.
fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    std::net::TcpListener::bind(LOOPBACK_ANY_PORT)
        .and_then(|l| l.local_addr())
        .context("finding a free loopback port for an app")
}

/// Waits until every proxy's `/ready` answers 200: it has its view and has
/// registered with the control plane.
async fn wait_ready(
    client: &Client,
    services: &[Service],
    running: &mut Running,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for service in services {
        let url = format!("http://{}/ready", service.admin);
        loop {
            let answer = client::get(client, &url, ADMIN_TIMEOUT).await;
            if answer.as_ref().is_ok_and(|r| r.status.is_success()) {
                break;
            }
            died(running)?;
            if Instant::now() > deadline {
                let proxy = &running.processes[service.proxy];
                let answer = match answer {
                    Ok(reply) => format!("answers {}", reply.status),
                    Err(e) => format!("fails: {e:#}"),
                };
                bail!(
                    "the {} did not turn ready within {READY_TIMEOUT:?} (GET {url} {answer}); its log: {}",
                    proxy.name,
                    proxy.log.display()
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
    Ok(())
}

/// An error naming the first process that has exited, if any has.
fn died(running: &mut Running) -> anyhow::Result<()> {
    for p in &mut running.processes {
        if let Some(status) = p.exited() {
            bail!(
                "the {} exited by itself ({status}); its log: {}",
                p.name,
                p.log.display()
            );
        }
    }
    Ok(())
}

/// Where the control plane keeps the demo's development CA.
const CA_DIR: &str = "ca";

/// A bearer token for each service's sidecar, and `tokens.yaml` mapping
/// each identity to its token's SHA-256, as the control plane reads it.
fn write_tokens(dir: &Path) -> anyhow::Result<PathBuf> {
    use sha2::{Digest, Sha256};
    std::fs::create_dir_all(dir.join("tokens"))?;
    let mut yaml = String::new();
    for role in Role::ALL {
        let token: String = (0..32).map(|_| fastrand::alphanumeric()).collect();
        let path = token_file(dir, role.name());
        std::fs::write(&path, &token).with_context(|| format!("writing {}", path.display()))?;
        let hash: String = Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        yaml.push_str(&format!("{}: {hash}\n", role.name()));
    }
    let path = dir.join("tokens.yaml");
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn token_file(dir: &Path, service: &str) -> PathBuf {
    dir.join("tokens").join(format!("{service}.token"))
}

fn print_table(
    api: SocketAddr,
    control_admin: SocketAddr,
    services: &[Service],
    rps: u32,
    dir: &Path,
) {
    println!();
    println!("control plane   api https://{api}/v1/services (mutual TLS)   admin http://{control_admin}/metrics");
    println!();
    println!(
        "{:<10}  {:<21}  {:<21}  sidecar admin (/metrics /config /ready)",
        "service", "app", "sidecar inbound"
    );
    for s in services {
        println!(
            "{:<10}  {:<21}  {:<21}  http://{}",
            s.role.name(),
            s.app.to_string(),
            s.inbound.to_string(),
            s.admin
        );
    }
    println!();
    println!(
        "traffic   {rps} requests/s of GET /shop/{{user}} into the gateway's sidecar at {}",
        services[0].inbound
    );
    for (i, fault) in FAULTS.iter().enumerate() {
        let lead = if i == 0 { "faults" } else { "" };
        println!("{lead:<9} {fault}");
    }
    println!(
        "identity  every sidecar has a certificate from the control plane's development CA and"
    );
    println!("          calls the others over mutual TLS; the gateway takes plaintext from the shoppers too");
    println!(
        "files     {}: mesh.yaml, tokens, the CA ({CA_DIR}/) and a log per process",
        dir.display()
    );
    println!();
    println!(
        "Each second, per service, from its sidecar's inbound /metrics: requests/s, success rate,"
    );
    println!(
        "p50 and p99 of the time to response headers (interpolated within the latency histogram's"
    );
    println!(
        "buckets, as Prometheus's histogram_quantile does), and the share that came over mutual"
    );
    println!("TLS. Ctrl-C stops every process.");
    println!();
}

/// Prints each service's numbers once a second until `duration` passes, or
/// a process ends by itself.
async fn report(
    client: &Client,
    services: &[Service],
    running: &mut Running,
    duration: Option<HumanDuration>,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut earlier: Vec<Option<(Instant, Counters)>> = vec![None; services.len()];
    let mut ticker = tokio::time::interval(REPORT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reports = 0;
    loop {
        ticker.tick().await;
        died(running)?;
        let scrapes = scrape(client, services).await;
        let now = Instant::now();
        // The first scrape is the baseline: nothing to print yet.
        if earlier.iter().any(Option::is_some) {
            if reports % HEADER_EVERY == 0 {
                println!("{}", stats::header());
            } else {
                println!();
            }
            reports += 1;
        }
        for ((service, scraped), before) in services.iter().zip(scrapes).zip(&mut earlier) {
            let name = service.role.name();
            match scraped {
                Ok(after) => {
                    if let Some((then, counters)) = before.as_ref() {
                        let window = Window::between(counters, &after, now - *then);
                        println!("{}", stats::line(now - started, name, &window));
                    }
                    *before = Some((now, after));
                }
                Err(e) if before.is_some() => {
                    println!(
                        "{:>6}  {name:<10} {e:#}",
                        format!("{}s", (now - started).as_secs())
                    );
                }
                Err(_) => {}
            }
        }
        // The report of the last second is printed, then the demo ends.
        if let Some(d) = duration.filter(|d| started.elapsed() + REPORT_EVERY / 2 >= d.get()) {
            return Ok(format!("ran for {d}"));
        }
    }
}

/// Every sidecar's inbound counters, scraped at once.
async fn scrape(client: &Client, services: &[Service]) -> Vec<anyhow::Result<Counters>> {
    let mut scrapes = JoinSet::new();
    for (i, service) in services.iter().enumerate() {
        let (client, url) = (client.clone(), format!("http://{}/metrics", service.admin));
        scrapes.spawn(async move {
            let counters = async {
                let reply = client::get(&client, &url, ADMIN_TIMEOUT).await?;
                if !reply.status.is_success() {
                    bail!("GET {url} answered {}", reply.status);
                }
                let text = std::str::from_utf8(&reply.body)
                    .with_context(|| format!("GET {url}: the body is not UTF-8"))?;
                Ok(Counters::of(text, "inbound"))
            };
            (i, counters.await)
        });
    }
    let mut results: Vec<anyhow::Result<Counters>> = services
        .iter()
        .map(|s| Err(anyhow::anyhow!("the scrape of {} did not finish", s.admin)))
        .collect();
    while let Some(done) = scrapes.join_next().await {
        if let Ok((i, counters)) = done {
            results[i] = counters;
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_mesh_is_valid_and_injects_the_faults_it_announces() {
        let mesh =
            remora_api::parse_mesh("demo/mesh.yaml", MESH_YAML).unwrap_or_else(|e| panic!("{e}"));
        for role in Role::ALL {
            assert!(mesh.services.contains_key(role.name()), "{}", role.name());
        }
        let fault = |service: &str| mesh.services[service].routes[0].fault.unwrap();
        let abort = fault("inventory").abort.unwrap();
        assert_eq!((abort.percent, abort.status.get()), (3.0, 503));
        assert!(FAULTS[0].starts_with("3% of calls to inventory fail with 503"));
        let delay = fault("products").delay.unwrap();
        assert_eq!(
            (delay.percent, delay.duration.get()),
            (2.0, Duration::from_millis(100))
        );
        assert!(FAULTS[1].starts_with("2% of calls to products wait 100ms"));
        // The gateway's sidecar places a failed order again.
        let place = &mesh.services["orders"].routes[0];
        let retry = place.retry.as_ref().unwrap();
        assert!(retry.non_idempotent && retry.attempts > 0);
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let options = DemoOptions {
            rps: DEFAULT_RPS,
            duration: None,
            dir: None,
            access_log: false,
            proxy_bin: Some("/nonexistent/remora-proxy".into()),
            shop_bin: None,
        };
        let error = Binaries::find(&options).err().unwrap().to_string();
        assert!(
            error.contains("--proxy-bin /nonexistent/remora-proxy"),
            "{error}"
        );
        let options = DemoOptions {
            proxy_bin: None,
            ..options
        };
        // The test executable has no remora-proxy beside it in deps/.
        let error = Binaries::find(&options).err().unwrap().to_string();
        assert!(error.contains("cargo build --workspace"), "{error}");
    }
}
