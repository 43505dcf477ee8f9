//! The figures of a run: latency percentiles of one round, quantiles of
//! the control plane's own histogram, medians over rounds, and the final
//! table with the targets.

use std::time::Duration;

use crate::control::Memory;

/// Push latency to all watchers, 99th percentile: the target.
pub const TARGET_P99: Duration = Duration::from_millis(200);
/// The control plane's peak resident memory: the target, in bytes (MB).
pub const TARGET_MEMORY: u64 = 200 * MB;
const MB: u64 = 1_000_000;

/// One round: one change, delivered to every watch.
#[derive(Clone, Debug)]
pub struct Round {
    /// Watches that got the change.
    pub got: usize,
    /// From the file's write to each watch's receipt of the new view.
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The control plane's own `remora_control_push_seconds` over this
    /// round: from its publication of a view to its delivery.
    pub own: OwnPush,
    pub costs: Costs,
}

/// What a round cost, from the write until every watch had the change.
#[derive(Clone, Copy, Debug, Default)]
pub struct Costs {
    /// CPU time of the control plane's threads.
    pub control_cpu: Duration,
    /// CPU time of the benchmark's own threads: the simulated proxies.
    pub client_cpu: Duration,
    /// The control plane's resident memory after the round.
    pub rss: u64,
}

/// Quantiles of the control plane's push histogram over one round.
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnPush {
    /// Deliveries it observed.
    pub count: f64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl Round {
    /// The figures of one round from each watch's latency.
    pub fn new(mut latencies: Vec<Duration>, own: OwnPush, costs: Costs) -> Round {
        latencies.sort_unstable();
        Round {
            got: latencies.len(),
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or_default(),
            own,
            costs,
        }
    }

    /// One line for the progress log.
    pub fn line(&self, watches: usize) -> String {
        format!(
            "{}/{watches} got it: p50 {} ms, p99 {} ms, max {} ms; control plane's own: p50 {} ms, p99 {} ms ({} observed); \
             CPU: control plane {} ms, client {} ms; control plane RSS {}",
            self.got,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            own_ms(self.own.p50),
            own_ms(self.own.p99),
            self.own.count,
            ms(self.costs.control_cpu),
            ms(self.costs.client_cpu),
            mb(self.costs.rss)
        )
    }
}

/// Nearest rank on sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl OwnPush {
    /// Quantiles of the observations made between two scrapes of the same
    /// cumulative histogram (`(upper bound, count)`, `+Inf` last).
    pub fn between(before: &[(f64, f64)], after: &[(f64, f64)]) -> OwnPush {
        let delta: Vec<(f64, f64)> = after
            .iter()
            .map(|&(bound, count)| {
                let earlier = before
                    .iter()
                    .find(|(b, _)| *b == bound)
                    .map_or(0.0, |(_, c)| *c);
                (bound, count - earlier)
            })
            .collect();
        OwnPush {
            count: delta.last().map_or(0.0, |(_, c)| *c),
            p50: quantile(&delta, 0.50),
            p99: quantile(&delta, 0.99),
        }
    }
}

/// `q`-quantile of a cumulative histogram, interpolated linearly inside
/// its bucket as Prometheus's `histogram_quantile` does; a quantile in the
/// `+Inf` bucket is the highest finite bound. `None` with no observations.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * fraction);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// The median of every round's figures, each figure on its own.
pub fn medians(rounds: &[Round]) -> Round {
    let mid = |f: &dyn Fn(&Round) -> f64| -> f64 {
        median(rounds.iter().map(f).collect()).unwrap_or_default()
    };
    let own = |f: &dyn Fn(&OwnPush) -> Option<f64>| -> Option<f64> {
        median(rounds.iter().filter_map(|r| f(&r.own)).collect())
    };
    Round {
        got: rounds.iter().map(|r| r.got).min().unwrap_or_default(),
        p50: Duration::from_secs_f64(mid(&|r| r.p50.as_secs_f64())),
        p99: Duration::from_secs_f64(mid(&|r| r.p99.as_secs_f64())),
        max: Duration::from_secs_f64(mid(&|r| r.max.as_secs_f64())),
        own: OwnPush {
            count: mid(&|r| r.own.count),
            p50: own(&|o| o.p50),
            p99: own(&|o| o.p99),
        },
        costs: Costs {
            control_cpu: Duration::from_secs_f64(mid(&|r| r.costs.control_cpu.as_secs_f64())),
            client_cpu: Duration::from_secs_f64(mid(&|r| r.costs.client_cpu.as_secs_f64())),
            rss: rounds.iter().map(|r| r.costs.rss).max().unwrap_or_default(),
        },
    }
}

/// The middle value, or the mean of the two middle ones; `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// What the final table shows.
pub struct Summary {
    pub proxies: usize,
    pub services: usize,
    pub rounds: usize,
    pub client_threads: usize,
    pub baseline: Round,
    pub scale: Round,
    /// The worst round's p99 at scale, to show how far rounds spread.
    pub worst_p99: Duration,
    pub idle: Memory,
    pub held: Memory,
    pub end: Memory,
}

impl Summary {
    /// Whether every target was met.
    pub fn met(&self) -> bool {
        self.scale.p99 < TARGET_P99 && self.end.peak < TARGET_MEMORY
    }

    /// The table, ready to print.
    pub fn table(&self) -> String {
        let watches = self.proxies * self.services;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut out = format!(
            "remora-control push: {} proxies x {} services = {watches} watches, {} round(s), medians over rounds\n\
             {cores} cores; the benchmark's client runs {} threads on the same machine\n\n",
            self.proxies, self.services, self.rounds, self.client_threads
        );
        out += &format!(
            "{:<22}{:>8}{:>8}{:>11}{:>11}{:>11}{:>14}{:>14}{:>13}{:>13}\n",
            "case",
            "watches",
            "got",
            "p50 (ms)",
            "p99 (ms)",
            "max (ms)",
            "own p50 (ms)",
            "own p99 (ms)",
            "cp cpu (ms)",
            "client (ms)"
        );
        for (name, n, r) in [
            ("baseline (1 x 1)".to_string(), 1, &self.baseline),
            (
                format!("scale ({} x {})", self.proxies, self.services),
                watches,
                &self.scale,
            ),
        ] {
            out += &format!(
                "{:<22}{:>8}{:>8}{:>11}{:>11}{:>11}{:>14}{:>14}{:>13}{:>13}\n",
                name,
                n,
                r.got,
                ms(r.p50),
                ms(r.p99),
                ms(r.max),
                own_ms(r.own.p50),
                own_ms(r.own.p99),
                ms(r.costs.control_cpu),
                ms(r.costs.client_cpu)
            );
        }
        let per_watch = self.held.rss.saturating_sub(self.idle.rss) / watches.max(1) as u64;
        out += &format!(
            "\ncontrol plane RSS: idle {}, {watches} watches held {} (~{:.1} KB a watch), after the rounds {}, peak {}\n\n",
            mb(self.idle.rss),
            mb(self.held.rss),
            per_watch as f64 / 1000.0,
            mb(self.end.rss),
            mb(self.end.peak)
        );
        out += &format!(
            "{:<40}{:>12}{:>12}{:>6}\n",
            "target", "measured", "limit", "met"
        );
        let yes = |ok: bool| if ok { "yes" } else { "NO" };
        out += &format!(
            "{:<40}{:>12}{:>12}{:>6}\n",
            "push p99 to all watchers, from the write",
            format!("{} ms", ms(self.scale.p99)),
            format!("{} ms", TARGET_P99.as_millis()),
            yes(self.scale.p99 < TARGET_P99)
        );
        out += &format!(
            "{:<40}{:>12}{:>12}{:>6}\n",
            "  (worst round)",
            format!("{} ms", ms(self.worst_p99)),
            format!("{} ms", TARGET_P99.as_millis()),
            yes(self.worst_p99 < TARGET_P99)
        );
        out += &format!(
            "{:<40}{:>12}{:>12}{:>6}\n",
            "control plane peak RSS",
            mb(self.end.peak),
            mb(TARGET_MEMORY),
            yes(self.end.peak < TARGET_MEMORY)
        );
        out
    }
}

/// Milliseconds with one decimal.
fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// A histogram quantile in milliseconds, or `-` with no observations.
fn own_ms(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "-".to_string(), |s| format!("{:.1}", s * 1000.0))
}

/// Bytes in MB (10⁶), as the target is written.
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / MB as f64)
}
