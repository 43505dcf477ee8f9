//! The control plane under test: the release `remora-control` started on
//! ephemeral loopback ports, its `/metrics` scraped and parsed, and its
//! memory read from `/proc`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the binary may take to log its `listening` line.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long one scrape of `/metrics` may take.
const SCRAPE_LIMIT: Duration = Duration::from_secs(10);
/// How often a wait on a metric scrapes again. Each scrape costs the
/// control plane a little, so not too often.
const SCRAPE_INTERVAL: Duration = Duration::from_millis(100);
/// Log lines kept to show when the control plane fails.
const KEPT_LOG_LINES: usize = 200;

/// The bucket series of the push histogram for outbound views.
const PUSH_BUCKET: &str = "remora_control_push_seconds_bucket";
/// Long-polls held now, one series per kind of view.
const WATCHES: &str = "remora_control_watches";

/// `target/release/remora-control` of this workspace; an error that says
/// how to build it when it is not there. The benchmark never builds it
/// itself, so that what is measured is what was built on purpose.
pub fn release_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("REMORA_CONTROL_BIN") {
        return Ok(path.into());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the benches crate lives in the workspace root")?;
    let path = workspace.join("target/release/remora-control");
    if !path.exists() {
        bail!(
            "{} is not built: run `cargo build --release -p remora-control` first",
            path.display()
        );
    }
    Ok(path)
}

/// A running control plane; killed when dropped.
pub struct ControlPlane {
    child: Child,
    pid: u32,
    /// The API listener the simulated proxies connect to.
    pub api: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl ControlPlane {
    /// Starts `binary serve --config CONFIG` on ephemeral loopback ports and
    /// waits for the `listening` line that names them.
    pub async fn start(binary: &Path, config: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .arg("serve")
            // What is measured is the long-poll itself, in plaintext.
            .arg("--insecure")
            .arg("--config")
            .arg(config)
            .args(["--api", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(config.with_file_name("data"))
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the control plane exited at once")?;
        let stderr = child.stderr.take().context("its stderr is piped")?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = log.clone();
        // Reads the log to its end, so the child never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("\"listening\"") {
                    let _ = tx.send(line.clone());
                }
                let mut kept = sink.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == KEPT_LOG_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        let tail = |log: &Arc<Mutex<VecDeque<String>>>| {
            let kept = log.lock().unwrap_or_else(|e| e.into_inner());
            kept.iter().cloned().collect::<Vec<_>>().join("\n")
        };
        let line = match tokio::time::timeout(START_LIMIT, rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => bail!("the control plane exited; its log:\n{}", tail(&log)),
            Err(_) => bail!(
                "the control plane did not log `listening` within {START_LIMIT:?}; its log:\n{}",
                tail(&log)
            ),
        };
        let listening: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("its listening line {line}"))?;
        let address = |field: &str| -> anyhow::Result<SocketAddr> {
            listening[field]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("no address `{field}` in its listening line {line}"))
        };
        Ok(Self {
            api: address("api")?,
            admin: address("admin")?,
            child,
            pid,
            log,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// The last lines of its log, to explain a failure.
    pub fn log_tail(&self) -> String {
        let kept = self.log.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Its `/metrics` text.
    pub async fn scrape(&self) -> anyhow::Result<Metrics> {
        let uri: hyper::Uri = format!("http://{}/metrics", self.admin).parse()?;
        let get = async {
            let response = self.http.get(uri.clone()).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(SCRAPE_LIMIT, get)
            .await
            .map_err(|_| anyhow!("{uri}: no answer within {SCRAPE_LIMIT:?}"))?
            .with_context(|| format!("scraping {uri}"))?;
        if !status.is_success() {
            bail!("{uri}: {status}");
        }
        Ok(Metrics(
            String::from_utf8(body.to_vec()).with_context(|| format!("{uri}: not UTF-8"))?,
        ))
    }

    /// Waits until the control plane holds exactly `want` long-polls; an
    /// error after `limit`, naming the count it last saw.
    pub async fn await_watches(&self, want: u64, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let held = self.scrape().await?.watches();
            if held == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the control plane holds {held} long-polls after {limit:?}, not {want}");
            }
            tokio::time::sleep(SCRAPE_INTERVAL).await;
        }
    }

    /// Its memory now, from `/proc/PID/status`.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path} (Linux only)"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB"))
                .and_then(|kb| kb.trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .ok_or_else(|| anyhow!("no {name} in {path}"))
        };
        Ok(Memory {
            rss: field("VmRSS:")?,
            peak: field("VmHWM:")?,
        })
    }

    /// The CPU time its threads have used so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        cpu_time(&self.pid.to_string())
    }

    /// Ends the process and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child
            .start_kill()
            .context("killing the control plane")?;
        self.child
            .wait()
            .await
            .context("waiting for the control plane")?;
        Ok(())
    }
}

/// The CPU time the threads of process `pid` (or `self`) have used so far:
/// the sum of the first field of each thread's `schedstat`, in nanoseconds.
/// Threads that ended are not counted, so this is for processes whose
/// runtime keeps its worker threads, as tokio's does.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for task in std::fs::read_dir(&dir).with_context(|| format!("listing {dir} (Linux only)"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("{}: not a schedstat line: {text:?}", path.display()))?;
    }
    Ok(Duration::from_nanos(total))
}

/// Resident memory of the process, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// Now.
    pub rss: u64,
    /// The most it ever was (the kernel's high-water mark).
    pub peak: u64,
}

/// One scrape of `/metrics` in the Prometheus text format.
pub struct Metrics(String);

impl Metrics {
    /// `(name, labels, value)` of every sample line.
    fn samples(&self) -> impl Iterator<Item = (&str, &str, f64)> {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let value = value.parse::<f64>().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name, labels, value))
            })
    }

    /// Long-polls held now, over every kind of view.
    pub fn watches(&self) -> u64 {
        self.samples()
            .filter(|(name, _, _)| *name == WATCHES)
            .map(|(_, _, v)| v)
            .sum::<f64>() as u64
    }

    /// The outbound push histogram as cumulative `(upper bound, count)`
    /// pairs, `+Inf` last.
    pub fn push_buckets(&self) -> Vec<(f64, f64)> {
        let mut buckets: Vec<(f64, f64)> = self
            .samples()
            .filter(|(name, labels, _)| {
                *name == PUSH_BUCKET && label(labels, "resource") == Some("outbound")
            })
            .filter_map(|(_, labels, count)| {
                let le = label(labels, "le")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// The value of `key` in a label set written `a="x",b="y"`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}
