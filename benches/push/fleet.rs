//! The simulated proxies: each one HTTP/2 connection (prior knowledge) to
//! the control plane carrying one long-poll per watched service, polled as
//! `remora-proxy` polls: a first poll for the current view, then held polls
//! with the version it has, re-armed as soon as a view arrives.
//!
//! The proxies are shared out among threads, each running a
//! single-threaded runtime, as `remora-proxy` runs by default: the answers
//! that arrive together on a connection are read at once, and the polls
//! that re-arm them leave in one write. They speak HTTP/2 with the `h2`
//! crate, which hyper's client is built on, without the task hyper adds
//! for each request: the client shares the cores with the control plane it
//! measures, and the less of them it takes, the more the figures are the
//! control plane's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::StatusCode;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// How long a held poll asks the control plane to hold it.
const WAIT: Duration = Duration::from_secs(60);
/// How long one connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `collect` looks for what the watches received. Looking,
/// rather than waiting for each delivery, spares the client threads a
/// wakeup of this one per delivery; each delivery carries the time it was
/// read, so this adds nothing to what is measured.
const COLLECT_INTERVAL: Duration = Duration::from_millis(2);
/// The header that carries a view's version.
const VERSION_HEADER: &str = "remora-version";

/// A view one watch received while it held a long-poll.
pub struct Delivery {
    pub watch: usize,
    /// When its body was read in full.
    pub at: Instant,
    pub version: u64,
    pub body: Bytes,
}

/// What the watch tasks tell the benchmark.
pub enum Event {
    /// A watch got its first view and now holds a poll with its version.
    Armed { watch: usize, version: u64 },
    /// A held poll answered `200`: the view changed.
    Delivered(Delivery),
    /// A poll failed; the watch has stopped.
    Failed { watch: usize, error: String },
    /// A proxy could not connect; its watches never started.
    Unconnected { proxy: usize, error: String },
}

/// Every simulated proxy and its watches; dropping it closes them all.
pub struct Fleet {
    /// Dropped to stop the threads, which close their connections.
    stop: Option<watch::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    events: mpsc::UnboundedReceiver<Event>,
    /// The service each watch polls, by watch number.
    pub services: Vec<String>,
    /// The version each watch has, by watch number.
    pub versions: Vec<u64>,
}

impl Fleet {
    /// Opens `proxies` connections to `api` from `threads` threads, each
    /// connection watching every one of `services`, and waits until every
    /// watch has its first view. Each thread opens its connections one
    /// after another, so the control plane's accept backlog never
    /// overflows (a dropped SYN would cost a second). Proxy `p`'s watch of
    /// `services[s]` is watch number `p * services.len() + s`.
    pub async fn start(
        api: SocketAddr,
        proxies: usize,
        threads: usize,
        services: &[String],
        limit: Duration,
    ) -> anyhow::Result<Fleet> {
        let deadline = Instant::now() + limit;
        let (tx, events) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(());
        let services: Arc<[String]> = services.into();
        let threads = (0..threads.clamp(1, proxies.max(1)))
            .map(|n| {
                let mine: Vec<usize> = (n..proxies).step_by(threads).collect();
                let (services, tx, stopped) = (services.clone(), tx.clone(), stopped.clone());
                std::thread::Builder::new()
                    .name(format!("proxies-{n}"))
                    .spawn(move || run_thread(api, mine, services, tx, stopped))
                    .context("starting a client thread")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let watched = (0..proxies)
            .flat_map(|_| services.iter().cloned())
            .collect::<Vec<_>>();
        let mut fleet = Fleet {
            stop: Some(stop),
            threads,
            events,
            versions: vec![0; watched.len()],
            services: watched,
        };
        fleet.armed(deadline, limit).await?;
        Ok(fleet)
    }

    /// How many watches there are.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Waits for every watch's first view.
    async fn armed(&mut self, deadline: Instant, limit: Duration) -> anyhow::Result<()> {
        let mut armed = 0;
        while armed < self.len() {
            let event = tokio::time::timeout_at(deadline.into(), self.events.recv())
                .await
                .map_err(|_| {
                    anyhow!(
                        "only {armed} of {} watches got their first view within {limit:?}",
                        self.len()
                    )
                })?
                .context("every watch task ended")?;
            match event {
                Event::Armed { watch, version } => {
                    self.versions[watch] = version;
                    armed += 1;
                }
                Event::Delivered(d) => bail!(
                    "watch {} ({}) got a view before it had its first one",
                    d.watch,
                    self.services[d.watch]
                ),
                other => return Err(self.unexpected(other)),
            }
        }
        Ok(())
    }

    /// An error if any watch was woken or failed since the last round: with
    /// no change made, nothing may have answered.
    pub fn expect_quiet(&mut self) -> anyhow::Result<()> {
        match self.events.try_recv() {
            Ok(Event::Delivered(d)) => bail!(
                "watch {} ({}) got version {} with no change made (it had {})",
                d.watch,
                self.services[d.watch],
                d.version,
                self.versions[d.watch]
            ),
            Ok(other) => Err(self.unexpected(other)),
            Err(_) => Ok(()),
        }
    }

    /// The first view each watch receives until every watch has one or
    /// `deadline` passes, by watch number (`None`: nothing came).
    pub async fn collect(&mut self, deadline: Instant) -> anyhow::Result<Vec<Option<Delivery>>> {
        let mut got: Vec<Option<Delivery>> = (0..self.len()).map(|_| None).collect();
        let mut count = 0;
        while count < self.len() {
            let event = match self.events.try_recv() {
                Ok(event) => event,
                Err(TryRecvError::Empty) if Instant::now() < deadline => {
                    tokio::time::sleep(COLLECT_INTERVAL).await;
                    continue;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => bail!("every watch task ended"),
            };
            match event {
                Event::Delivered(d) => {
                    let watch = d.watch;
                    if got[watch].is_some() {
                        bail!(
                            "watch {watch} ({}) got two views for one change",
                            self.services[watch]
                        );
                    }
                    self.versions[watch] = d.version;
                    got[watch] = Some(d);
                    count += 1;
                }
                other => return Err(self.unexpected(other)),
            }
        }
        Ok(got)
    }

    /// What an event that should not have come says.
    fn unexpected(&self, event: Event) -> anyhow::Error {
        match event {
            Event::Armed { watch, .. } => anyhow!("watch {watch} was armed twice"),
            Event::Delivered(d) => anyhow!("watch {} got a view it did not wait for", d.watch),
            Event::Failed { watch, error } => {
                anyhow!("watch {watch} ({}) failed: {error}", self.services[watch])
            }
            Event::Unconnected { proxy, error } => anyhow!("proxy {proxy}: {error}"),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        drop(self.stop.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One client thread: connects `proxies` one after another, runs their
/// watches, and closes them all when `stop` is dropped.
fn run_thread(
    api: SocketAddr,
    proxies: Vec<usize>,
    services: Arc<[String]>,
    events: mpsc::UnboundedSender<Event>,
    mut stop: watch::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            for proxy in proxies {
                let error = format!("building its thread's runtime: {e}");
                let _ = events.send(Event::Unconnected { proxy, error });
            }
            return;
        }
    };
    let base: Arc<str> = format!("http://{api}").into();
    runtime.block_on(async move {
        let mut tasks = JoinSet::new();
        for proxy in proxies {
            let sender = match connect(api, &mut tasks).await {
                Ok(s) => s,
                Err(e) => {
                    let error = format!("connecting to {api}: {e:#}");
                    let _ = events.send(Event::Unconnected { proxy, error });
                    continue;
                }
            };
            for (s, service) in services.iter().enumerate() {
                tasks.spawn(run_watch(
                    sender.clone(),
                    base.clone(),
                    service.clone(),
                    proxy * services.len() + s,
                    events.clone(),
                ));
            }
        }
        // Until the fleet is dropped; then `tasks` drops, which aborts them.
        let _ = stop.changed().await;
    });
}

/// Opens one HTTP/2 connection and drives it in `tasks`.
async fn connect(api: SocketAddr, tasks: &mut JoinSet<()>) -> anyhow::Result<SendRequest<Bytes>> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(api))
        .await
        .map_err(|_| anyhow!("no connection within {CONNECT_TIMEOUT:?}"))??;
    stream.set_nodelay(true)?;
    let (sender, connection) = h2::client::handshake(stream)
        .await
        .context("the HTTP/2 handshake failed")?;
    // An error here reaches the watches as failed requests.
    tasks.spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One watch: the first view, then held polls until a poll fails.
async fn run_watch(
    sender: SendRequest<Bytes>,
    base: Arc<str>,
    service: String,
    watch: usize,
    events: mpsc::UnboundedSender<Event>,
) {
    let result: anyhow::Result<()> = async {
        let (mut version, ..) = poll(&sender, &base, &service, None)
            .await?
            .context("the first poll answered 304")?;
        events.send(Event::Armed { watch, version })?;
        loop {
            if let Some((new, body, at)) = poll(&sender, &base, &service, Some(version)).await? {
                version = new;
                events.send(Event::Delivered(Delivery {
                    watch,
                    at,
                    version,
                    body,
                }))?;
            }
        }
    }
    .await;
    if let Err(e) = result {
        // Nobody listens any more once the benchmark has ended.
        let _ = events.send(Event::Failed {
            watch,
            error: format!("{e:#}"),
        });
    }
}

/// One poll of `outbound/SERVICE`: with no version, answered at once with
/// the current view; with one, held until the view changes. The new
/// version, the body and when it was read, or `None` on `304`. No timeout
/// of its own: every wait of the benchmark has a limit (`START_LIMIT`,
/// `ROUND_LIMIT`) that a poll which never ends runs into.
async fn poll(
    sender: &SendRequest<Bytes>,
    base: &str,
    service: &str,
    version: Option<u64>,
) -> anyhow::Result<Option<(u64, Bytes, Instant)>> {
    let uri = match version {
        None => format!("{base}/v1/outbound/{service}?wait=0s"),
        Some(v) => format!(
            "{base}/v1/outbound/{service}?version={v}&wait={}s",
            WAIT.as_secs()
        ),
    };
    let exchange = async {
        let request = http::Request::get(&uri).body(())?;
        let mut ready = sender.clone().ready().await?;
        let (response, _) = ready.send_request(request, true)?;
        let (parts, body) = response.await?.into_parts();
        let body = read_body(body).await?;
        anyhow::Ok((parts, body, Instant::now()))
    };
    let (parts, body, at) = exchange.await.with_context(|| uri.clone())?;
    match parts.status {
        StatusCode::OK => {
            let version = parts
                .headers
                .get(VERSION_HEADER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("{uri}: a 200 with no {VERSION_HEADER} header"))?;
            Ok(Some((version, body, at)))
        }
        StatusCode::NOT_MODIFIED => Ok(None),
        status => bail!("{uri}: {status}: {}", String::from_utf8_lossy(&body).trim()),
    }
}

/// The whole body, its flow-control capacity given back as it is read.
async fn read_body(mut body: h2::RecvStream) -> Result<Bytes, h2::Error> {
    let mut whole: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        // A view usually comes in one piece: keep it without a copy.
        match whole.take() {
            None if joined.is_empty() => whole = Some(chunk),
            None => joined.extend_from_slice(&chunk),
            Some(first) => {
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
            }
        }
    }
    Ok(whole.unwrap_or_else(|| joined.freeze()))
}
