//! The registrations source: sidecars announce their endpoints with `PUT`
//! (the API) and keep them alive by renewing within their TTL; the sweeper
//! here removes from the state what expired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use remora_server::serve::Drain;

use crate::state::State;

/// How often expired registrations are looked for: an expired endpoint
/// leaves the views at most this long after its expiry.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How often views of unknown services that nobody watches any more are
/// dropped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(5);

/// Removes expired registrations from `state` until drained.
pub async fn sweep(state: Arc<State>, mut drain: Drain) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                for (service, instance) in state.expire(Instant::now()) {
                    tracing::info!(%service, %instance, "registration expired");
                }
            }
            _ = prune.tick() => state.prune_unwatched(),
            _ = drain.signaled() => return,
        }
    }
}
