//! Push latency and scale of the control plane: simulated proxies (1,000 ×
//! 10 services = 10,000 long-polls) held by one release `remora-control`;
//! `mesh.yaml` is rewritten and the time until every watcher has the new
//! view is measured, beside a baseline of one watcher in the same run, with
//! the control plane's memory idle, holding the watches, and at its peak.
#![forbid(unsafe_code)]

mod control;
mod fleet;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use remora_api::protocol::OutboundView;
use remora_api::HumanDuration;
use remora_benches::{pushed_mesh, pushed_service};

use control::ControlPlane;
use fleet::{Delivery, Fleet};
use report::{Costs, OwnPush, Round, Summary};

/// The simulated proxies allocate and free a little for every delivery on
/// several threads at once; glibc's per-thread arenas grow and shrink
/// with an `mprotect` call each time, about one per delivery, which is
/// cost that no real proxy (one thread, the main arena) pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// This benchmark's name, which a filter given to `cargo bench` must match.
const NAME: &str = "push";
const DEFAULT_PROXIES: usize = 1000;
const DEFAULT_SERVICES: usize = 10;
const DEFAULT_ROUNDS: usize = 5;
/// The sizes of the quick pass that runs when the benchmark is run as a
/// test (`cargo test --benches`, no `--bench` flag): it checks that the
/// benchmark works, not how fast.
const QUICK_PROXIES: usize = 10;
const QUICK_SERVICES: usize = 2;
const QUICK_ROUNDS: usize = 1;
/// How long every watcher may take to get one change before the run fails.
const ROUND_LIMIT: Duration = Duration::from_secs(30);
/// How long the proxies may take to connect and get their first views.
const START_LIMIT: Duration = Duration::from_secs(120);
/// How long the control plane's watch gauge may take to show every
/// re-armed (or closed) poll.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// A pause before each change, so that every round starts from an idle
/// control plane and client.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// The routes' timeout in the first file; each change adds a millisecond.
const FIRST_TIMEOUT_MS: u64 = 1000;
/// Open files needed beyond one a proxy, in this process and in the
/// control plane (which inherits the limit).
const SPARE_FILES: u64 = 256;

/// Exit status when a target is missed (the table is printed first).
const EXIT_MISSED: u8 = 1;
/// Exit status when the run itself failed.
const EXIT_FAILED: u8 = 2;

/// The knobs, from the environment.
struct Settings {
    proxies: usize,
    services: usize,
    rounds: usize,
    client_threads: usize,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        // cargo bench passes --bench; cargo test --benches does not.
        let full = std::env::args().any(|a| a == "--bench");
        let (proxies, services, rounds) = if full {
            (DEFAULT_PROXIES, DEFAULT_SERVICES, DEFAULT_ROUNDS)
        } else {
            (QUICK_PROXIES, QUICK_SERVICES, QUICK_ROUNDS)
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Settings {
            proxies: knob("PROXIES", proxies)?,
            services: knob("SERVICES", services)?,
            rounds: knob("ROUNDS", rounds)?,
            client_threads: knob("CLIENT_THREADS", cores)?,
        })
    }
}

/// A positive number from the environment variable `name`, else `default`.
fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{name}={v:?}: expected a positive whole number"),
        },
    }
}

fn main() -> ExitCode {
    // `cargo bench -p remora-benches -- FILTER` passes FILTER to every
    // benchmark target, as criterion's do: run only when it names this one.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("push: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    // The simulated proxies run on threads of their own (see `fleet`);
    // this one collects what they receive and scrapes the control plane.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("push: building the tokio runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(&settings)) {
        Ok(summary) => {
            println!("\n{}", summary.table());
            if summary.met() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_MISSED)
            }
        }
        Err(e) => {
            eprintln!("push: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn run(settings: &Settings) -> anyhow::Result<Summary> {
    let binary = control::release_binary()?;
    raise_open_files(settings.proxies as u64 + SPARE_FILES)?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut mesh = MeshFile::create(dir.path(), settings.services)?;
    let control = ControlPlane::start(&binary, &mesh.path).await?;
    let result = measure(settings, &control, &mut mesh).await;
    // The reason first, then what the control plane said before it.
    let result = result.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n\nthe control plane's last log lines:\n{}",
            control.log_tail()
        )
    });
    control.stop().await?;
    result
}

/// The baseline, then the run at scale, on one control plane.
async fn measure(
    settings: &Settings,
    control: &ControlPlane,
    mesh: &mut MeshFile,
) -> anyhow::Result<Summary> {
    let services: Vec<String> = (0..settings.services).map(pushed_service).collect();
    // Let the first load settle before calling the process idle.
    control.await_watches(0, SETTLE_LIMIT).await?;
    let idle = control.memory()?;

    eprintln!("baseline: 1 proxy x 1 service");
    let mut baseline = Fleet::start(control.api, 1, 1, &services[..1], START_LIMIT).await?;
    control.await_watches(1, SETTLE_LIMIT).await?;
    let baseline_rounds = rounds("baseline", settings.rounds, control, &mut baseline, mesh).await?;
    drop(baseline);
    control
        .await_watches(0, SETTLE_LIMIT)
        .await
        .context("after the baseline's proxy closed its connection")?;

    let watches = settings.proxies * settings.services;
    eprintln!(
        "scale: {} proxies x {} services = {watches} watches",
        settings.proxies, settings.services
    );
    let started = Instant::now();
    let mut fleet = Fleet::start(
        control.api,
        settings.proxies,
        settings.client_threads,
        &services,
        START_LIMIT,
    )
    .await?;
    control.await_watches(watches as u64, SETTLE_LIMIT).await?;
    eprintln!(
        "  {watches} watches held after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let held = control.memory()?;
    let scale_rounds = rounds("scale", settings.rounds, control, &mut fleet, mesh).await?;
    let end = control.memory()?;
    drop(fleet);

    Ok(Summary {
        proxies: settings.proxies,
        services: settings.services,
        rounds: settings.rounds,
        client_threads: settings.client_threads,
        baseline: report::medians(&baseline_rounds),
        worst_p99: scale_rounds.iter().map(|r| r.p99).max().unwrap_or_default(),
        scale: report::medians(&scale_rounds),
        idle,
        held,
        end,
    })
}

/// `count` rounds of one change each, delivered to every watch of `fleet`.
async fn rounds(
    name: &str,
    count: usize,
    control: &ControlPlane,
    fleet: &mut Fleet,
    mesh: &mut MeshFile,
) -> anyhow::Result<Vec<Round>> {
    let mut out = Vec::with_capacity(count);
    for i in 1..=count {
        let round = round(control, fleet, mesh)
            .await
            .with_context(|| format!("{name} round {i}"))?;
        eprintln!("  {name} round {i}/{count}: {}", round.line(fleet.len()));
        out.push(round);
    }
    Ok(out)
}

/// One change: the file rewritten, every watch's receipt of it timed and
/// its content checked, then every watch re-armed.
async fn round(
    control: &ControlPlane,
    fleet: &mut Fleet,
    mesh: &mut MeshFile,
) -> anyhow::Result<Round> {
    tokio::time::sleep(ROUND_PAUSE).await;
    fleet.expect_quiet()?;
    let before = control.scrape().await?.push_buckets();
    let previous = fleet.versions.clone();
    let (control_cpu, client_cpu) = (control.cpu()?, control::cpu_time("self")?);
    let written = mesh.change()?;
    let got = fleet.collect(written + ROUND_LIMIT).await?;
    let costs = Costs {
        control_cpu: control.cpu()?.saturating_sub(control_cpu),
        client_cpu: control::cpu_time("self")?.saturating_sub(client_cpu),
        rss: control.memory()?.rss,
    };
    let after = control.scrape().await?.push_buckets();

    let missing: Vec<usize> = (0..got.len()).filter(|&w| got[w].is_none()).collect();
    if !missing.is_empty() {
        bail!(
            "only {} of {} watches got the change within {ROUND_LIMIT:?} (the first without it: {})",
            got.len() - missing.len(),
            got.len(),
            missing
                .iter()
                .take(5)
                .map(|&w| format!("watch {w} of {}", fleet.services[w]))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut latencies = Vec::with_capacity(got.len());
    for delivery in got.into_iter().flatten() {
        let service = &fleet.services[delivery.watch];
        check(
            &delivery,
            service,
            previous[delivery.watch],
            mesh.timeout_ms,
        )
        .with_context(|| format!("watch {} of {service}", delivery.watch))?;
        latencies.push(delivery.at.saturating_duration_since(written));
    }
    control
        .await_watches(fleet.len() as u64, SETTLE_LIMIT)
        .await
        .context("re-arming after the change")?;
    Ok(Round::new(
        latencies,
        OwnPush::between(&before, &after),
        costs,
    ))
}

/// The view delivered is the change made: a newer version, of the watched
/// service, with the new route timeout.
fn check(d: &Delivery, service: &str, previous: u64, timeout_ms: u64) -> anyhow::Result<()> {
    let view: OutboundView =
        serde_json::from_slice(&d.body).context("the view is not an outbound view")?;
    if d.version <= previous {
        bail!("version {} after {previous}: versions must grow", d.version);
    }
    if view.version != d.version || view.service != service {
        bail!(
            "got {}@{} under the header version {}",
            view.service,
            view.version,
            d.version
        );
    }
    let timeout = view
        .services
        .get(service)
        .and_then(|s| s.routes.first())
        .and_then(|r| r.timeout);
    if timeout != Some(HumanDuration::from_millis(timeout_ms)) {
        bail!("the route's timeout is {timeout:?}, not the {timeout_ms}ms just written");
    }
    Ok(())
}

/// The benchmark's `mesh.yaml`, rewritten as Kubernetes updates a mounted
/// ConfigMap: the new text written beside it, then renamed over it.
struct MeshFile {
    path: PathBuf,
    services: usize,
    /// Every route's timeout in the file now.
    timeout_ms: u64,
}

impl MeshFile {
    fn create(dir: &Path, services: usize) -> anyhow::Result<MeshFile> {
        let mesh = MeshFile {
            path: dir.join("mesh.yaml"),
            services,
            timeout_ms: FIRST_TIMEOUT_MS,
        };
        mesh.write()?;
        Ok(mesh)
    }

    /// Changes every service's route timeout; when the write began.
    fn change(&mut self) -> anyhow::Result<Instant> {
        self.timeout_ms += 1;
        let started = Instant::now();
        self.write()?;
        Ok(started)
    }

    fn write(&self) -> anyhow::Result<()> {
        let text = pushed_mesh(self.services, self.timeout_ms);
        let temporary = self.path.with_file_name(".mesh.yaml.new");
        std::fs::write(&temporary, text)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &self.path).with_context(|| {
            format!(
                "renaming {} over {}",
                temporary.display(),
                self.path.display()
            )
        })
    }
}

/// Raises this process's open-files soft limit to its hard limit (the
/// control plane, started after, inherits it); an error when even that is
/// fewer than `needed`.
fn raise_open_files(needed: u64) -> anyhow::Result<()> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-files limit")?;
    if limit < needed {
        bail!(
            "{needed} open files are needed but the hard limit is {limit}: raise it (ulimit -Hn) or lower PROXIES"
        );
    }
    Ok(())
}
