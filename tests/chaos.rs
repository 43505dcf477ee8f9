//! Chaos through the real proxy with the config a user writes first (plus a
//! per-try timeout): three endpoints under steady load; one is killed, one
//! hangs, one slows down, then the killed one comes back. No idempotent
//! request may fail, and each fault's cost must be gone by the end of its
//! phase. The figures are printed (`cargo test --test chaos -- --nocapture`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use remora_e2e::upstream::{dead_address, text};
use remora_e2e::{Client, Proxy, Upstream};
use tokio::net::TcpListener;

const NORMAL: u8 = 0;
/// Accepts, reads the request, never answers.
const HANG: u8 = 1;
/// Answers after a second.
const SLOW: u8 = 2;

const PER_TRY_TIMEOUT: Duration = Duration::from_millis(200);
/// Requests in flight at once, each followed by a short pause.
const WORKERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(10);

/// An endpoint whose behaviour a phase sets, and that can be killed and
/// started again on its address.
struct Endpoint {
    name: &'static str,
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    server: Option<Upstream>,
}

impl Endpoint {
    async fn start(name: &'static str) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(NORMAL));
        let server = Some(serve(name, listener, mode.clone()));
        Endpoint {
            name,
            addr,
            mode,
            server,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }

    /// Gone: the listener and every open connection closed.
    fn kill(&mut self) {
        self.server = None;
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.set(NORMAL);
        self.server = Some(serve(self.name, listener, self.mode.clone()));
    }
}

fn serve(name: &'static str, listener: TcpListener, mode: Arc<AtomicU8>) -> Upstream {
    Upstream::serve(listener, move |_req| {
        let mode = mode.load(Ordering::Relaxed);
        async move {
            match mode {
                HANG => std::future::pending().await,
                SLOW => tokio::time::sleep(Duration::from_secs(1)).await,
                _ => {}
            }
            text(name)
        }
    })
}

/// One request's fate.
struct Sample {
    at: Instant,
    took: Duration,
    failure: Option<String>,
}

/// Every request's fate, from every worker.
#[derive(Clone, Default)]
struct Samples(Arc<Mutex<Vec<Sample>>>);

impl Samples {
    fn between(&self, from: Instant, to: Instant) -> (Vec<Duration>, Vec<String>) {
        let samples = self.0.lock().unwrap();
        let window = samples.iter().filter(|s| s.at >= from && s.at < to);
        let (mut took, mut failures) = (Vec::new(), Vec::new());
        for s in window {
            took.push(s.took);
            failures.extend(s.failure.clone());
        }
        took.sort();
        (took, failures)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// GETs `web` through the outbound until `stop`, one after another.
async fn worker(client: Client, url: String, samples: Samples, stop: Instant) {
    let mut n = 0u64;
    while Instant::now() < stop {
        let started = Instant::now();
        let failure = match client.get(&format!("{url}/{n}")).await {
            Ok(r) if r.status == 200 => None,
            Ok(r) => Some(format!("{} {}", r.status, r.text().trim())),
            Err(e) => Some(e),
        };
        samples.0.lock().unwrap().push(Sample {
            at: started,
            took: started.elapsed(),
            failure,
        });
        n += 1;
        tokio::time::sleep(PAUSE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_hang_slow_and_restart_cost_no_idempotent_request() {
    let (mut a, b, c) = (
        Endpoint::start("a").await,
        Endpoint::start("b").await,
        Endpoint::start("c").await,
    );
    let mesh = format!(
        "services:
  web:
    retry: {{ per_try_timeout: {}ms }}
    endpoints: [ {{ address: {} }}, {{ address: {} }}, {{ address: {} }} ]
",
        PER_TRY_TIMEOUT.as_millis(),
        a.addr,
        b.addr,
        c.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let phase = Duration::from_secs(3);
    let phases = [
        "baseline",
        "kill a",
        "hang b",
        "b back, slow c",
        "restart a",
        "all well",
    ];
    let start = Instant::now();
    let stop = start + phase * phases.len() as u32;
    let samples = Samples::default();
    let url = "http://web".to_string();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let client = Client::via(proxy.outbound, false);
            tokio::spawn(worker(client, url.clone(), samples.clone(), stop))
        })
        .collect();

    let mut bounds = vec![start];
    for (i, name) in phases.iter().enumerate().skip(1) {
        tokio::time::sleep_until((start + phase * i as u32).into()).await;
        bounds.push(Instant::now());
        match *name {
            "kill a" => a.kill(),
            "hang b" => b.set(HANG),
            "b back, slow c" => {
                b.set(NORMAL);
                c.set(SLOW);
            }
            "restart a" => a.restart().await,
            "all well" => c.set(NORMAL),
            _ => {}
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    bounds.push(Instant::now());

    // The figures, phase by phase: all of it, and its last second.
    let mut failed = Vec::new();
    let mut report = String::from(
        "phase              requests failed   p50      p99   p99 (last 1s)  waited (last 1s)\n",
    );
    let mut recovered = Vec::new();
    for (i, name) in phases.iter().enumerate() {
        let (from, to) = (bounds[i], bounds[i + 1]);
        let (took, failures) = samples.between(from, to);
        let (last, _) = samples.between(to - Duration::from_secs(1), to);
        // Requests that waited out a per-try timeout on a faulty endpoint.
        let waited = last.iter().filter(|t| **t >= PER_TRY_TIMEOUT).count();
        report += &format!(
            "{name:<18} {:>8} {:>6} {:>6.1}ms {:>6.1}ms {:>8.1}ms {:>11}/{}\n",
            took.len(),
            failures.len(),
            ms(percentile(&took, 0.5)),
            ms(percentile(&took, 0.99)),
            ms(percentile(&last, 0.99)),
            waited,
            last.len(),
        );
        failed.extend(failures.into_iter().map(|f| format!("{name}: {f}")));
        recovered.push((name, waited, last.len()));
    }
    println!("{report}");
    assert!(
        failed.is_empty(),
        "{} failed:\n{failed:#?}\n{report}",
        failed.len()
    );
    // Each fault's cost is gone within its phase: by its last second,
    // traffic stays off the hung or slow endpoint. What may remain is the
    // probation try that follows each of its ejections (1s, 2s, 4s...),
    // and, for a hung endpoint that the balancer already avoids, the rare
    // try that still reaches it before its fifth failure in a row ejects
    // it: 0 to 4 of about 280 requests here, so at most 2% may wait out a
    // per-try timeout. (At 1%, about one run in five failed.)
    for (name, waited, n) in recovered {
        assert!(
            n > 20,
            "{name}: only {n} requests in its last second\n{report}"
        );
        assert!(
            waited * 100 <= 2 * n,
            "{name}: {waited} of {n} requests in its last second waited out a per-try timeout\n{report}"
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
