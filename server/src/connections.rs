//! A listener's open connections: what each is doing, the verdict that
//! closes one that stays silent, idle or stalled too long, and the cap
//! that makes room for a newcomer by shedding the longest-idle.
//!
//! Every limit counts from something the peer cannot stretch: the first
//! request from accept (a byte at a time does not help), idleness from
//! the end of the last response, a stall from the last byte moved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remora_api::HumanDuration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a listener allows each connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From accept to the end of the first request's head (the TLS
    /// handshake included), and for each later HTTP/1 head from its
    /// first byte.
    pub header_read: Duration,
    /// How long a connection with no request in flight stays open.
    pub idle: Duration,
    /// How long a request or response body, or an HTTP/1 connection with
    /// a request in flight, may go without progress.
    pub stream_idle: Duration,
    /// Connections open at once; at the cap, the longest-idle one is
    /// closed to make room.
    pub max_connections: usize,
}

/// Tighter than Envoy's 15s listener timeout.
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
/// Envoy's: a client that keeps an idle connection longer than the
/// server meets, now and then, a connection closed under its next request;
/// clients' pools let go long before (remora's after 4s, Go's after 90s).
/// Idle connections cost the listener little: at its cap they are the
/// first to go.
pub const DEFAULT_IDLE_TIMEOUT: &str = "1h";
/// Envoy's stream idle timeout.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: &str = "5m";
/// The admin listeners serve probes and scrapes, a few at a time.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The connection flags of both binaries (each also `REMORA_<FLAG>`).
#[derive(Clone, Debug, clap::Args)]
pub struct ConnectionFlags {
    /// How long a client may take from connecting to the end of its first
    /// request's headers (TLS handshake included), and over HTTP/1 from the
    /// first byte of a later request's headers to their end.
    #[arg(long, env = "REMORA_HEADER_READ_TIMEOUT", default_value = DEFAULT_HEADER_READ_TIMEOUT)]
    pub header_read_timeout: HumanDuration,

    /// How long a connection with no request in flight stays open.
    #[arg(long, env = "REMORA_IDLE_TIMEOUT", default_value = DEFAULT_IDLE_TIMEOUT)]
    pub idle_timeout: HumanDuration,

    /// How long a request or response body may go without progress before
    /// its stream is cut (and an HTTP/1 connection whose request moves no
    /// byte).
    #[arg(long, env = "REMORA_STREAM_IDLE_TIMEOUT", default_value = DEFAULT_STREAM_IDLE_TIMEOUT)]
    pub stream_idle_timeout: HumanDuration,

    /// Connections each traffic listener holds at once; at the cap, the
    /// longest-idle is closed for a newcomer. Default: a share of the
    /// open-files limit.
    #[arg(long, env = "REMORA_MAX_CONNECTIONS")]
    pub max_connections: Option<std::num::NonZeroUsize>,
}

impl ConnectionFlags {
    /// The limits of a traffic listener, whose default cap is `default_max`.
    pub fn limits(&self, default_max: usize) -> Limits {
        Limits {
            header_read: self.header_read_timeout.get(),
            idle: self.idle_timeout.get(),
            stream_idle: self.stream_idle_timeout.get(),
            max_connections: self.max_connections.map_or(default_max, |m| m.get()),
        }
    }

    /// The limits of an admin listener.
    pub fn admin_limits(&self) -> Limits {
        Limits {
            max_connections: ADMIN_MAX_CONNECTIONS,
            ..self.limits(ADMIN_MAX_CONNECTIONS)
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as servers do:
/// the connection caps are shares of it.
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}
/// File descriptors kept back from the listeners' share: logs, the
/// config file and its watcher, the control plane's connection.
const RESERVED_FILES: u64 = 32;

/// The connections each of `listeners` may hold by default: an even
/// share of `fraction` of the open-files limit, after a reserve.
/// A proxied connection often needs one upstream too, so the proxy gives
/// its listeners half of the limit; the control plane, which dials
/// nothing per request, most of it.
pub fn default_max_connections(listeners: u64, fraction: f64) -> usize {
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    max_connections_for(files, listeners, fraction)
}

fn max_connections_for(files: u64, listeners: u64, fraction: f64) -> usize {
    let usable = files.saturating_sub(RESERVED_FILES) as f64 * fraction;
    let share = (usable / listeners.max(1) as f64) as u64;
    usize::try_from(share.max(8)).unwrap_or(usize::MAX)
}

/// What one connection is doing, shared by its requests, its watchdog
/// and its listener's table.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    /// Requests whose response has not ended (body finished or dropped).
    in_flight: AtomicU32,
    /// Whether any request head has arrived, or an opaque stream has moved
    /// a byte.
    started: AtomicBool,
    /// When the connection last went idle, in milliseconds after
    /// `opened`: its last response ended, or its stream last moved a byte.
    idle_from_ms: AtomicU64,
    /// Set by every read and write, taken by the watchdog.
    moved: AtomicBool,
    /// When an HTTP/1 head that arrives in parts began, in milliseconds
    /// after `opened` (plus one, so that 0 means none).
    head_begun_ms: AtomicU64,
    /// Told when the listener sheds this connection.
    shed: Notify,
    /// Wakes the watchdog when a head begins to arrive in parts, so that
    /// its limit is kept however long the connection was idle before.
    head_begun: Notify,
}

impl Activity {
    fn new(opened: Instant) -> Activity {
        Activity {
            opened,
            in_flight: AtomicU32::new(0),
            started: AtomicBool::new(false),
            idle_from_ms: AtomicU64::new(0),
            moved: AtomicBool::new(false),
            head_begun_ms: AtomicU64::new(0),
            shed: Notify::new(),
            head_begun: Notify::new(),
        }
    }

    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// A request head arrived; the guard ends the request when dropped
    /// with its response.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::Relaxed);
        if self.head_begun_ms.load(Ordering::Relaxed) != 0 {
            self.head_begun_ms.store(0, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.moved.store(true, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Bytes were read or written.
    pub fn moved(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// An opaque stream moved bytes: it is idle from now, as a connection
    /// is from the end of its last response.
    pub fn stream_moved(&self) {
        let since_open = Instant::now().duration_since(self.opened);
        let ms = u64::try_from(since_open.as_millis()).unwrap_or(u64::MAX);
        self.idle_from_ms.store(ms, Ordering::Relaxed);
        self.started.store(true, Ordering::Relaxed);
    }

    /// An HTTP/1 head is arriving in parts: from now it has the header
    /// read limit to be whole.
    pub fn head_in_parts(&self) {
        if self.head_begun_ms.load(Ordering::Relaxed) == 0 {
            let since_open = Instant::now().duration_since(self.opened);
            let ms = u64::try_from(since_open.as_millis()).unwrap_or(u64::MAX - 1);
            self.head_begun_ms.store(ms + 1, Ordering::Relaxed);
            self.head_begun.notify_one();
        }
    }

    /// Resolves when the listener sheds this connection.
    pub async fn shed(&self) {
        self.shed.notified().await
    }

    /// Resolves when a head begins to arrive in parts.
    pub async fn head_begun(&self) {
        self.head_begun.notified().await
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
    }

    /// Since when the connection has had nothing to do.
    fn idle_since(&self) -> Instant {
        if !self.started.load(Ordering::Relaxed) {
            return self.opened;
        }
        self.opened + Duration::from_millis(self.idle_from_ms.load(Ordering::Relaxed))
    }

    /// What the watchdog should do now; `last_progress` is its own record
    /// of when bytes last moved under a request.
    pub fn verdict(&self, now: Instant, limits: &Limits, last_progress: &mut Instant) -> Verdict {
        if !self.started.load(Ordering::Relaxed) {
            let deadline = self.opened + limits.header_read;
            return if now >= deadline {
                Verdict::Silent
            } else {
                Verdict::CheckAt(deadline)
            };
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            if self.moved.swap(false, Ordering::Relaxed) {
                *last_progress = now;
            }
            // Checked twice per limit: a stall is cut within 1.5 times it.
            return if now.duration_since(*last_progress) >= limits.stream_idle {
                Verdict::Stalled
            } else {
                Verdict::CheckAt(now + limits.stream_idle / 2)
            };
        }
        *last_progress = now;
        let head_deadline = match self.head_begun_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.opened + Duration::from_millis(ms - 1) + limits.header_read),
        };
        if head_deadline.is_some_and(|d| now >= d) {
            return Verdict::Silent;
        }
        let deadline = self.idle_since() + limits.idle;
        if now >= deadline {
            Verdict::Idle
        } else {
            Verdict::CheckAt(head_deadline.map_or(deadline, |d| d.min(deadline)))
        }
    }

    /// What the watchdog of an opaque stream should do now. A stream has no
    /// requests: it is silent until its first byte moves (for the shorter
    /// of the two limits), then idle from its last.
    pub fn stream_verdict(&self, now: Instant, limits: &Limits) -> Verdict {
        let (deadline, verdict) = match self.started.load(Ordering::Relaxed) {
            false => (
                self.opened + limits.header_read.min(limits.idle),
                Verdict::Silent,
            ),
            true => (self.idle_since() + limits.idle, Verdict::Idle),
        };
        if now >= deadline {
            verdict
        } else {
            Verdict::CheckAt(deadline)
        }
    }
}

/// What becomes of a connection when its watchdog looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet: look again then.
    CheckAt(Instant),
    /// No request head within the first-request limit, or a later head
    /// not whole within the header read limit of its first part (for a
    /// stream, no byte ever moved): cut.
    Silent,
    /// Nothing to do for the idle limit: closed gracefully (a stream is
    /// cut).
    Idle,
    /// Requests in flight and no byte moved for the stall limit: cut.
    Stalled,
}

/// One request in flight on a connection, until dropped with its response.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let since_open = Instant::now().duration_since(activity.opened);
        activity.idle_from_ms.store(
            u64::try_from(since_open.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener's open connections, capped.
#[derive(Debug)]
pub struct Table {
    max: usize,
    inner: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    connections: HashMap<u64, Arc<Activity>>,
    /// When a refusal was last logged, so that a flood logs once a second.
    last_refusal_logged: Option<Instant>,
}

impl Table {
    pub fn new(max: usize) -> Arc<Table> {
        Arc::new(Table {
            max: max.max(1),
            inner: Mutex::default(),
        })
    }

    /// Takes a connection just accepted. At the cap, the connection idle
    /// the longest (a silent one counts as idle since its accept) is shed
    /// to make room; when every connection has a request in flight, the
    /// newcomer is refused (`None`).
    pub fn admit(self: &Arc<Self>, now: Instant) -> Option<Admitted> {
        let mut open = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if open.connections.len() >= self.max {
            let longest_idle = open
                .connections
                .iter()
                .filter(|(_, a)| a.is_idle())
                .min_by_key(|(_, a)| a.idle_since())
                .map(|(id, _)| *id);
            match longest_idle.and_then(|id| open.connections.remove(&id)) {
                Some(victim) => victim.shed.notify_one(),
                None => {
                    let quiet = open
                        .last_refusal_logged
                        .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
                    if quiet {
                        open.last_refusal_logged = Some(now);
                        tracing::warn!(
                            max = self.max,
                            "connection refused: every connection of this listener has a request in flight"
                        );
                    }
                    return None;
                }
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        let activity = Arc::new(Activity::new(now));
        open.connections.insert(id, activity.clone());
        Some(Admitted {
            id,
            activity,
            table: self.clone(),
        })
    }

    /// Connections held now; the listener itself never needs to know.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .connections
            .len()
    }
}

/// A connection's place in its listener's table, given up when dropped.
#[derive(Debug)]
pub struct Admitted {
    id: u64,
    pub activity: Arc<Activity>,
    table: Arc<Table>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.table.inner.lock().unwrap_or_else(|e| e.into_inner());
        open.connections.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            stream_idle: Duration::from_secs(300),
            max_connections: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_is_silent_at_its_deadline() {
        let table = Table::new(2);
        let admitted = table.admit(Instant::now()).unwrap();
        let mut progress = Instant::now();
        let start = Instant::now();
        let verdict = admitted.activity.verdict(start, &limits(), &mut progress);
        assert_eq!(verdict, Verdict::CheckAt(start + Duration::from_secs(10)));
        // Bytes that never finish a head do not push the deadline.
        admitted.activity.moved();
        let later = start + Duration::from_secs(10);
        assert_eq!(
            admitted.activity.verdict(later, &limits(), &mut progress),
            Verdict::Silent
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_counts_from_the_last_response() {
        let table = Table::new(2);
        let admitted = table.admit(Instant::now()).unwrap();
        let activity = &admitted.activity;
        let mut progress = Instant::now();
        let request = activity.request_started();
        tokio::time::advance(Duration::from_secs(100)).await;
        let now = Instant::now();
        // In flight and bytes moved: not idle, whatever the time.
        assert!(matches!(
            activity.verdict(now, &limits(), &mut progress),
            Verdict::CheckAt(_)
        ));
        drop(request);
        let ended = Instant::now();
        assert_eq!(
            activity.verdict(ended, &limits(), &mut progress),
            Verdict::CheckAt(ended + Duration::from_secs(60))
        );
        assert_eq!(
            activity.verdict(ended + Duration::from_secs(60), &limits(), &mut progress),
            Verdict::Idle
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_head_in_parts_has_the_header_read_limit_from_its_first_part() {
        let table = Table::new(2);
        let admitted = table.admit(Instant::now()).unwrap();
        let activity = &admitted.activity;
        let mut progress = Instant::now();
        drop(activity.request_started());
        // Idle long past the header read limit: still open.
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        assert_eq!(
            activity.verdict(now, &limits(), &mut progress),
            Verdict::CheckAt(now + Duration::from_secs(30))
        );
        activity.head_in_parts();
        let begun = Instant::now();
        assert_eq!(
            activity.verdict(begun, &limits(), &mut progress),
            Verdict::CheckAt(begun + Duration::from_secs(10))
        );
        assert_eq!(
            activity.verdict(begun + Duration::from_secs(10), &limits(), &mut progress),
            Verdict::Silent
        );
        // A head that completes ends the timer.
        drop(activity.request_started());
        assert!(matches!(
            activity.verdict(begun + Duration::from_secs(10), &limits(), &mut progress),
            Verdict::CheckAt(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_stalled_when_no_byte_moves() {
        let table = Table::new(2);
        let admitted = table.admit(Instant::now()).unwrap();
        let activity = &admitted.activity;
        let mut progress = Instant::now();
        let _request = activity.request_started();
        let start = Instant::now();
        assert!(matches!(
            activity.verdict(start, &limits(), &mut progress),
            Verdict::CheckAt(_)
        ));
        let mid = start + Duration::from_secs(200);
        activity.moved();
        assert!(matches!(
            activity.verdict(mid, &limits(), &mut progress),
            Verdict::CheckAt(_)
        ));
        assert_eq!(
            activity.verdict(mid + Duration::from_secs(300), &limits(), &mut progress),
            Verdict::Stalled
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let table = Table::new(2);
        let silent = table.admit(Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let busy = table.admit(Instant::now()).unwrap();
        let _request = busy.activity.request_started();
        let newcomer = table
            .admit(Instant::now())
            .expect("the silent one makes room");
        assert_eq!(table.len(), 2);
        // The silent one was told, and its place is gone.
        tokio::time::timeout(Duration::from_millis(1), silent.activity.shed())
            .await
            .expect("the shed connection is told");
        drop(silent);
        assert_eq!(table.len(), 2);
        // Every connection busy: the next is refused.
        let _second = newcomer.activity.request_started();
        assert!(table.admit(Instant::now()).is_none());
        drop(busy);
        assert_eq!(table.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_silent_until_its_first_byte_then_idle_from_its_last() {
        let table = Table::new(2);
        let admitted = table.admit(Instant::now()).unwrap();
        let activity = &admitted.activity;
        let start = Instant::now();
        assert_eq!(
            activity.stream_verdict(start, &limits()),
            Verdict::CheckAt(start + Duration::from_secs(10))
        );
        assert_eq!(
            activity.stream_verdict(start + Duration::from_secs(10), &limits()),
            Verdict::Silent
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.stream_moved();
        let moved = Instant::now();
        assert_eq!(
            activity.stream_verdict(moved + Duration::from_secs(59), &limits()),
            Verdict::CheckAt(moved + Duration::from_secs(60))
        );
        assert_eq!(
            activity.stream_verdict(moved + Duration::from_secs(60), &limits()),
            Verdict::Idle
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_stream_quiet_the_longest_makes_room() {
        let table = Table::new(2);
        let chatty = table.admit(Instant::now()).unwrap();
        let quiet = table.admit(Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        quiet.activity.stream_moved();
        tokio::time::advance(Duration::from_secs(1)).await;
        // Opened first, but moved a byte last.
        chatty.activity.stream_moved();
        let _newcomer = table.admit(Instant::now()).expect("a stream makes room");
        tokio::time::timeout(Duration::from_millis(1), quiet.activity.shed())
            .await
            .expect("the quieter stream is shed");
    }

    #[test]
    fn the_default_cap_shares_the_open_files_limit() {
        assert_eq!(max_connections_for(256, 2, 0.5), 56);
        assert_eq!(max_connections_for(1_048_576, 2, 0.5), 262_136);
        // A tiny limit still admits a few.
        assert_eq!(max_connections_for(16, 2, 0.5), 8);
    }
}
