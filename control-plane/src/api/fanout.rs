//! Each API thread's own channel of every view its connections hold polls
//! on. A change reaches a thread as one wakeup of its relay task, which
//! then republishes every view the change touched in one go: so all the
//! polls a change answers on one connection are answered before that
//! connection's task runs again, and their answers leave in one write (see
//! `threads`). Were the polls woken straight from the state's channels,
//! from whichever thread made the change, the thread serving them would
//! start answering at the first wakeup, and write for each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::state::{Kind, Published, State};

/// How often views that nobody on this thread watches any more are let go
/// of when no change comes to do it.
const PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// One thread's relayed views.
pub struct ThreadViews {
    state: Arc<State>,
    /// By kind (outbound, inbound), then service.
    views: Mutex<[HashMap<String, Relayed>; 2]>,
}

/// A view of the state, and this thread's copy of it.
struct Relayed {
    from: watch::Receiver<Published>,
    to: watch::Sender<Published>,
}

impl ThreadViews {
    /// This thread's views of `state`, kept current by a task spawned on
    /// this thread's runtime for as long as the views are in use.
    pub fn start(state: Arc<State>) -> Arc<ThreadViews> {
        let changes = state.changes();
        let views = Arc::new(ThreadViews {
            state,
            views: Mutex::default(),
        });
        tokio::spawn(relay(Arc::downgrade(&views), changes));
        views
    }

    /// A receiver of `kind/service`, its current value marked seen. A
    /// service that does not exist gets a channel too, so that its watchers
    /// wake when it appears. A change the relay has not passed on yet is
    /// passed on now: a poll must never be answered from before a change
    /// that was made before it arrived (a registration, then a poll).
    pub fn watch(&self, kind: Kind, service: &str) -> watch::Receiver<Published> {
        let mut views = self.lock();
        let views = &mut views[index(kind)];
        if let Some(relayed) = views.get_mut(service) {
            if relayed.from.has_changed().unwrap_or(false) {
                relayed
                    .to
                    .send_replace(relayed.from.borrow_and_update().clone());
            }
            return relayed.to.subscribe();
        }
        let mut from = self.state.watch(kind, service);
        let (to, watcher) = watch::channel(from.borrow_and_update().clone());
        views.insert(service.to_string(), Relayed { from, to });
        watcher
    }

    /// Republishes every view that changed since the last time, and lets go
    /// of those nobody here watches.
    fn relay_changes(&self) {
        for views in self.lock().iter_mut() {
            views.retain(|_, relayed| {
                if relayed.to.receiver_count() == 0 {
                    return false;
                }
                if relayed.from.has_changed().unwrap_or(false) {
                    relayed
                        .to
                        .send_replace(relayed.from.borrow_and_update().clone());
                }
                true
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, [HashMap<String, Relayed>; 2]> {
        // Nothing here panics midway; take the maps as they are.
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn index(kind: Kind) -> usize {
    match kind {
        Kind::Outbound => 0,
        Kind::Inbound => 1,
    }
}

/// Relays each change until the views are no longer in use.
async fn relay(views: Weak<ThreadViews>, mut changes: watch::Receiver<u64>) {
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                return;
            },
            _ = prune.tick() => {}
        }
        match views.upgrade() {
            Some(views) => views.relay_changes(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;
    use remora_api::protocol::Registration;
    use std::time::Instant;

    const MESH: &str = "\
services:
  orders:
    routes:
      - split: [ { weight: 9 }, { service: orders-next, weight: 1 } ]
  orders-next: {}
  users: {}
";

    fn state() -> Arc<State> {
        let s = Arc::new(State::new(1, Gauge::default(), Default::default()));
        s.set_mesh(Arc::new(remora_api::parse_mesh("mesh.yaml", MESH).unwrap()));
        s
    }

    fn register(state: &State, service: &str, port: u16) {
        let reg = Registration {
            address: ([127, 0, 0, 1], port).into(),
            labels: Default::default(),
            app_port: None,
            ttl_seconds: 30,
        };
        let sidecar = crate::state::Registrant::Address(std::net::Ipv4Addr::LOCALHOST.into());
        state
            .register(&sidecar, service, "i", &reg, Instant::now())
            .unwrap();
    }

    /// Lets the relay task run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_change_reaches_exactly_the_watchers_of_what_it_changed() {
        let state = state();
        let views = ThreadViews::start(state.clone());
        let mut orders = views.watch(Kind::Outbound, "orders");
        let mut orders_too = views.watch(Kind::Outbound, "orders");
        let mut next = views.watch(Kind::Outbound, "orders-next");
        let users = views.watch(Kind::Outbound, "users");
        let orders_inbound = views.watch(Kind::Inbound, "orders");

        let before = orders.borrow().version;
        register(&state, "orders-next", 9000);
        settle().await;
        assert!(next.has_changed().unwrap());
        assert!(orders.has_changed().unwrap() && orders_too.has_changed().unwrap());
        assert!(!users.has_changed().unwrap());
        assert!(!orders_inbound.has_changed().unwrap());
        let after = orders.borrow_and_update().clone();
        assert!(after.version > before);
        assert_eq!(
            after.version,
            state.current(Kind::Outbound, "orders").version
        );
        next.borrow_and_update();
        orders_too.borrow_and_update();

        // A renewal changes nothing and wakes nobody.
        register(&state, "orders-next", 9000);
        settle().await;
        assert!(!orders.has_changed().unwrap() && !next.has_changed().unwrap());
        assert!(!users.has_changed().unwrap() && !orders_inbound.has_changed().unwrap());
    }

    #[tokio::test]
    async fn a_service_that_appears_wakes_who_waited_for_it() {
        let state = state();
        let views = ThreadViews::start(state.clone());
        let mut billing = views.watch(Kind::Outbound, "billing");
        assert!(!billing.borrow().exists());
        register(&state, "billing", 9100);
        settle().await;
        assert!(billing.has_changed().unwrap());
        assert!(billing.borrow_and_update().exists());
    }

    #[tokio::test]
    async fn a_poll_after_a_change_sees_it_before_the_relay_runs() {
        let state = state();
        let views = ThreadViews::start(state.clone());
        let _held = views.watch(Kind::Outbound, "users");
        register(&state, "users", 9300);
        // No yield: the relay task has not run.
        let fresh = views.watch(Kind::Outbound, "users");
        assert_eq!(
            fresh.borrow().version,
            state.current(Kind::Outbound, "users").version
        );
    }

    #[tokio::test]
    async fn views_nobody_watches_are_let_go_of() {
        let state = state();
        let views = ThreadViews::start(state.clone());
        let kept = views.watch(Kind::Outbound, "users");
        drop(views.watch(Kind::Outbound, "orders"));
        drop(views.watch(Kind::Outbound, "nowhere"));
        assert_eq!(views.lock()[0].len(), 3);
        register(&state, "users", 9200);
        settle().await;
        assert_eq!(
            views.lock()[0].keys().collect::<Vec<_>>(),
            vec!["users"],
            "only the view still watched is kept"
        );
        drop(kept);
    }
}
