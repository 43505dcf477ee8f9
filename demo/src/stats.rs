//! The numbers the demo prints each second: a service's request rate,
//! success rate and latency quantiles, from the change in its sidecar's
//! inbound metrics between two scrapes of `/metrics`.

use std::time::Duration;

/// The counter of answered requests (docs/metrics.md).
const REQUESTS: &str = "remora_requests_total";
/// The buckets of the time to response headers, cumulative by `le`.
const DURATION_BUCKETS: &str = "remora_request_duration_seconds_bucket";

/// One sample line of the Prometheus (or OpenMetrics) text format.
#[derive(Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a scrape; comments, blank lines and lines that are not
/// samples are skipped.
pub fn parse(text: &str) -> Vec<Sample<'_>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_sample)
        .collect()
}

/// `name{label="value",...} value [timestamp]`, or `name value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The labels after `{`, up to and past the closing `}`; values unescaped.
fn parse_labels(mut text: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = text.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.trim(), value));
        text = &after[end + 1..];
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// A sidecar's counters of one direction at one moment, summed over
/// routes, status codes and classifications.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub requests: f64,
    pub successes: f64,
    /// Requests that came or went over mutual TLS.
    pub mutual_tls: f64,
    /// Cumulative request counts by upper bound (`le`), in rising order,
    /// `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

impl Counters {
    /// The counters of `direction` (`inbound` or `outbound`) in a scrape.
    pub fn of(metrics: &str, direction: &str) -> Counters {
        let mut counters = Counters::default();
        for sample in parse(metrics) {
            if sample.label("direction") != Some(direction) {
                continue;
            }
            match sample.name {
                REQUESTS => {
                    counters.requests += sample.value;
                    if sample.label("classification") == Some("success") {
                        counters.successes += sample.value;
                    }
                    if sample.label("tls") == Some("true") {
                        counters.mutual_tls += sample.value;
                    }
                }
                DURATION_BUCKETS => {
                    let Some(le) = sample.label("le").and_then(parse_value) else {
                        continue;
                    };
                    match counters.buckets.iter_mut().find(|(b, _)| *b == le) {
                        Some((_, count)) => *count += sample.value,
                        None => counters.buckets.push((le, sample.value)),
                    }
                }
                _ => {}
            }
        }
        counters.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        counters
    }

    /// What happened between `earlier` and `self`. A sidecar that
    /// restarted in between counts from zero.
    fn since(&self, earlier: &Counters) -> Counters {
        if self.requests < earlier.requests {
            return self.clone();
        }
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c)
        };
        Counters {
            requests: self.requests - earlier.requests,
            successes: self.successes - earlier.successes,
            mutual_tls: self.mutual_tls - earlier.mutual_tls,
            buckets: self
                .buckets
                .iter()
                .map(|&(le, count)| (le, (count - before(le)).max(0.0)))
                .collect(),
        }
    }
}

/// One service's numbers over one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub rps: f64,
    /// `None` when no request was answered.
    pub success_rate: Option<f64>,
    /// The share that came over mutual TLS; `None` when none was answered.
    pub mutual_tls: Option<f64>,
    /// Seconds; `None` when no request was answered.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl Window {
    pub fn between(earlier: &Counters, later: &Counters, elapsed: Duration) -> Window {
        let delta = later.since(earlier);
        let seconds = elapsed.as_secs_f64();
        Window {
            rps: if seconds > 0.0 {
                delta.requests / seconds
            } else {
                0.0
            },
            success_rate: (delta.requests > 0.0).then(|| delta.successes / delta.requests),
            mutual_tls: (delta.requests > 0.0).then(|| delta.mutual_tls / delta.requests),
            p50: quantile(0.5, &delta.buckets),
            p99: quantile(0.99, &delta.buckets),
        }
    }
}

/// The `q` quantile of cumulative `buckets`, interpolated linearly within
/// the bucket it falls in, as Prometheus's `histogram_quantile` does: the
/// first bucket starts at 0, and a quantile in the `+Inf` bucket is the
/// highest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            if within <= 0.0 {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below) / within);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// The header of the per-second lines.
pub fn header() -> String {
    format!(
        "{:>6}  {:<10} {:>7} {:>8} {:>9} {:>9} {:>6}",
        "time", "service", "rps", "success", "p50", "p99", "mtls"
    )
}

/// One service's line: `  12s  orders        40.0    97.5%     2.1ms    48.0ms   100%`.
pub fn line(elapsed: Duration, service: &str, window: &Window) -> String {
    let success = window
        .success_rate
        .map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
    let mutual_tls = window
        .mutual_tls
        .map_or("-".to_string(), |r| format!("{:.0}%", r * 100.0));
    format!(
        "{:>6}  {:<10} {:>7.1} {:>8} {:>9} {:>9} {:>6}",
        format!("{}s", elapsed.as_secs()),
        service,
        window.rps,
        success,
        latency(window.p50),
        latency(window.p99),
        mutual_tls,
    )
}

fn latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_string(),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP remora_requests Requests answered.
# TYPE remora_requests counter
remora_requests_total{direction="inbound",service="orders",route="inbound",status_code="200",classification="success",tls="false",peer="unmeshed"} 90
remora_requests_total{direction="inbound",service="orders",route="inbound",status_code="502",classification="failure",tls="false",peer="unmeshed"} 10
remora_requests_total{direction="outbound",service="inventory",route="default",status_code="200",classification="success",tls="false",peer="unmeshed"} 500
# TYPE remora_request_duration_seconds histogram
remora_request_duration_seconds_sum{direction="inbound",service="orders",route="inbound",classification="success"} 0.9
remora_request_duration_seconds_count{direction="inbound",service="orders",route="inbound",classification="success"} 90
remora_request_duration_seconds_bucket{le="0.001",direction="inbound",service="orders",route="inbound",classification="success"} 0
remora_request_duration_seconds_bucket{le="0.01",direction="inbound",service="orders",route="inbound",classification="success"} 80
remora_request_duration_seconds_bucket{le="0.1",direction="inbound",service="orders",route="inbound",classification="success"} 90
remora_request_duration_seconds_bucket{le="+Inf",direction="inbound",service="orders",route="inbound",classification="success"} 90
remora_request_duration_seconds_bucket{le="0.001",direction="inbound",service="orders",route="inbound",classification="failure"} 0
remora_request_duration_seconds_bucket{le="0.01",direction="inbound",service="orders",route="inbound",classification="failure"} 0
remora_request_duration_seconds_bucket{le="0.1",direction="inbound",service="orders",route="inbound",classification="failure"} 10
remora_request_duration_seconds_bucket{le="+Inf",direction="inbound",service="orders",route="inbound",classification="failure"} 10
remora_request_duration_seconds_bucket{le="0.01",direction="outbound",service="inventory",route="default",classification="success"} 500
remora_request_duration_seconds_bucket{le="+Inf",direction="outbound",service="inventory",route="default",classification="success"} 500
process_open_fds 12
# EOF
"#;

    #[test]
    fn samples_are_parsed_with_their_labels() {
        let samples = parse(SCRAPE);
        assert_eq!(samples.len(), 16);
        assert_eq!(samples[0].name, "remora_requests_total");
        assert_eq!(samples[0].label("status_code"), Some("200"));
        assert_eq!(samples[0].value, 90.0);
        let inf = samples
            .iter()
            .find(|s| s.label("le") == Some("+Inf"))
            .unwrap();
        assert_eq!(inf.name, "remora_request_duration_seconds_bucket");
        assert_eq!(samples.last().unwrap().name, "process_open_fds");
        assert!(samples.last().unwrap().labels.is_empty());
    }

    #[test]
    fn label_values_are_unescaped_and_timestamps_ignored() {
        let samples = parse(
            "m{a=\"x\\\"y\\\\z\\n\", b=\"c,d}\"} 1.5e3 1700000000000\nbad line\nm2{a=\"open 3\n",
        );
        assert_eq!(samples.len(), 1, "{samples:?}");
        assert_eq!(samples[0].label("a"), Some("x\"y\\z\n"));
        assert_eq!(samples[0].label("b"), Some("c,d}"));
        assert_eq!(samples[0].value, 1500.0);
    }

    #[test]
    fn counters_sum_one_direction_across_series() {
        let c = Counters::of(SCRAPE, "inbound");
        assert_eq!((c.requests, c.successes), (100.0, 90.0));
        assert_eq!(
            c.buckets,
            vec![
                (0.001, 0.0),
                (0.01, 80.0),
                (0.1, 100.0),
                (f64::INFINITY, 100.0)
            ]
        );
        let out = Counters::of(SCRAPE, "outbound");
        assert_eq!((out.requests, out.successes), (500.0, 500.0));
        assert_eq!(Counters::of("", "inbound"), Counters::default());
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let buckets = [
            (0.001, 0.0),
            (0.01, 80.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // The 50th of 100 is 50/80 of the way through (0.001, 0.01].
        let p50 = quantile(0.5, &buckets).unwrap();
        assert!((p50 - (0.001 + 0.009 * 50.0 / 80.0)).abs() < 1e-12, "{p50}");
        // The 99th is 19/20 of the way through (0.01, 0.1].
        let p99 = quantile(0.99, &buckets).unwrap();
        assert!((p99 - (0.01 + 0.09 * 19.0 / 20.0)).abs() < 1e-12, "{p99}");
        // The first bucket starts at zero.
        assert_eq!(
            quantile(0.5, &[(0.1, 10.0), (f64::INFINITY, 10.0)]),
            Some(0.05)
        );
        // Past the last finite bound: that bound.
        assert_eq!(
            quantile(0.99, &[(0.1, 1.0), (f64::INFINITY, 10.0)]),
            Some(0.1)
        );
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn a_window_is_the_change_between_two_scrapes() {
        let earlier = Counters {
            requests: 100.0,
            successes: 90.0,
            mutual_tls: 100.0,
            buckets: vec![(0.01, 80.0), (0.1, 100.0), (f64::INFINITY, 100.0)],
        };
        let later = Counters {
            requests: 300.0,
            successes: 289.0,
            mutual_tls: 250.0,
            buckets: vec![(0.01, 180.0), (0.1, 298.0), (f64::INFINITY, 300.0)],
        };
        let w = Window::between(&earlier, &later, Duration::from_secs(2));
        assert_eq!(w.rps, 100.0);
        assert_eq!(w.success_rate, Some(199.0 / 200.0));
        assert_eq!(w.mutual_tls, Some(150.0 / 200.0));
        // 100 of 200 in the first bucket: the median is its upper bound.
        assert_eq!(w.p50, Some(0.01));
        // The 198th of 200 is the 98th of the 98 in (0.01, 0.1].
        assert!((w.p99.unwrap() - 0.1).abs() < 1e-12, "{w:?}");
    }

    #[test]
    fn an_idle_window_has_no_rates_and_a_restart_counts_from_zero() {
        let c = Counters {
            requests: 5.0,
            successes: 5.0,
            mutual_tls: 0.0,
            buckets: vec![(0.01, 5.0), (f64::INFINITY, 5.0)],
        };
        let idle = Window::between(&c, &c, Duration::from_secs(1));
        assert_eq!((idle.rps, idle.success_rate, idle.p50), (0.0, None, None));
        let restarted = Counters {
            requests: 2.0,
            successes: 1.0,
            mutual_tls: 2.0,
            buckets: vec![(0.01, 2.0), (f64::INFINITY, 2.0)],
        };
        let w = Window::between(&c, &restarted, Duration::from_secs(1));
        assert_eq!((w.rps, w.success_rate), (2.0, Some(0.5)));
    }

    #[test]
    fn lines_line_up_under_the_header() {
        let w = Window {
            rps: 40.0,
            success_rate: Some(0.975),
            mutual_tls: Some(1.0),
            p50: Some(0.0021),
            p99: Some(1.5),
        };
        let l = line(Duration::from_millis(12_400), "orders", &w);
        assert_eq!(
            l.split_whitespace().collect::<Vec<_>>(),
            ["12s", "orders", "40.0", "97.5%", "2.1ms", "1.50s", "100%"]
        );
        assert_eq!(l.len(), header().len());
        let idle = Window {
            rps: 0.0,
            success_rate: None,
            mutual_tls: None,
            p50: None,
            p99: None,
        };
        assert_eq!(
            line(Duration::ZERO, "users", &idle)
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["0s", "users", "0.0", "-", "-", "-", "-"]
        );
    }
}
