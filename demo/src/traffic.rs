//! Steady traffic into the shop: `GET /shop/{user}` at a fixed rate to the
//! gateway's sidecar, as an edge client outside the mesh would send it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::client;
use crate::shop::USERS;

/// The shortest pause between two rounds of sending.
const MIN_TICK: Duration = Duration::from_millis(5);
/// Past this many unanswered requests, due requests are not sent, rather
/// than piled up on a shop that stopped answering.
const MAX_IN_FLIGHT: usize = 256;
/// Above the gateway's route timeouts: the mesh answers first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests still in flight may take once the traffic stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// What the traffic generator saw, for the closing summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub sent: u64,
    /// Answered with a 2xx.
    pub ok: u64,
    /// Answered with another status.
    pub failed: u64,
    /// Not answered: no connection, a reset, or no answer in time.
    pub unanswered: u64,
}

pub struct Traffic {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Totals>,
}

impl Traffic {
    /// Sends `rps` requests a second to the gateway through `via`.
    pub fn start(via: SocketAddr, rps: u32) -> Traffic {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(drive(via, rps.max(1), stopped));
        Traffic { stop, task }
    }

    /// Stops sending and waits, within a bound, for the requests in flight.
    pub async fn stop(self) -> Totals {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

async fn drive(via: SocketAddr, rps: u32, mut stopped: watch::Receiver<bool>) -> Totals {
    let client = client::client();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut in_flight = JoinSet::new();
    let mut totals = Totals::default();
    // Timers tick at best every millisecond: each tick sends what is due
    // by then, so any rate is kept on average.
    let mut ticker = tokio::time::interval((Duration::from_secs(1) / rps).max(MIN_TICK));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let mut scheduled: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => break,
        }
        while let Some(done) = in_flight.try_join_next() {
            count(&mut totals, done.ok());
        }
        let due = due(started.elapsed(), rps);
        // After a stall (a suspended laptop), carry on at the rate rather
        // than send the backlog at once.
        scheduled = scheduled.max(due.saturating_sub(u64::from(rps)));
        while scheduled < due {
            scheduled += 1;
            // Past MAX_IN_FLIGHT the request is not sent at all.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            totals.sent += 1;
            let mut headers = HeaderMap::new();
            if let Ok(id) = HeaderValue::try_from(format!("demo-{}", totals.sent)) {
                headers.insert("x-request-id", id);
            }
            let path = format!("/shop/{}", fastrand::u64(1..=USERS));
            let client = client.clone();
            in_flight.spawn(async move {
                let _slot = slot;
                let request =
                    client::request(Method::GET, via, "gateway", &path, &headers, None).ok()?;
                let reply = client::send(&client, request, REQUEST_TIMEOUT).await.ok()?;
                Some(reply.status.is_success())
            });
        }
    }
    let _ = tokio::time::timeout(STOP_TIMEOUT, async {
        while let Some(done) = in_flight.join_next().await {
            count(&mut totals, done.ok());
        }
    })
    .await;
    totals.unanswered += in_flight.len() as u64;
    in_flight.abort_all();
    totals
}

/// How many requests are due `elapsed` into the traffic: one at once,
/// then `rps` a second.
fn due(elapsed: Duration, rps: u32) -> u64 {
    1 + (elapsed.as_secs_f64() * f64::from(rps)) as u64
}

fn count(totals: &mut Totals, outcome: Option<Option<bool>>) {
    match outcome.flatten() {
        Some(true) => totals.ok += 1,
        Some(false) => totals.failed += 1,
        None => totals.unanswered += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_at_the_rate_whatever_the_tick() {
        assert_eq!(due(Duration::ZERO, 50), 1);
        assert_eq!(due(Duration::from_millis(19), 50), 1);
        assert_eq!(due(Duration::from_millis(20), 50), 2);
        assert_eq!(due(Duration::from_secs(10), 50), 501);
        // Faster than any timer ticks.
        assert_eq!(due(Duration::from_millis(5), 20_000), 101);
    }
}
