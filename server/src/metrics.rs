//! The metrics of both binaries' admin ports: the registry encoded in the
//! OpenMetrics or the classic Prometheus text format, the `process_*`
//! metrics, and the label set they share.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// The `result` of an operation: config reloads (`ok`, `error`) and the like.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Counts one more of something open in a gauge until dropped, however
/// its task ends: finished, cut, or dropped by a listener that sheds it.
#[derive(Debug)]
pub struct OpenGuard(Gauge);

impl OpenGuard {
    pub fn new(gauge: Gauge) -> OpenGuard {
        gauge.inc();
        OpenGuard(gauge)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `registry` in the OpenMetrics text format.
pub fn encode_openmetrics(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

/// OpenMetrics names a counter family without its `_total` suffix and ends
/// with `# EOF`; the classic format names the family as its sample is named
/// and has no end marker. Everything else the encoder writes is the same.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let counter_meta = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {rest}"))
        });
        out.push_str(counter_meta.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// `process_*` metrics read from `/proc/self` at scrape time.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            let e = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent in seconds",
                None,
                ConstCounter::new(cpu).metric_type(),
            )?;
            ConstCounter::new(cpu).encode(e)?;
            let rss = stat.rss * procfs::page_size();
            let e = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                ConstGauge::new(rss as i64).metric_type(),
            )?;
            ConstGauge::new(rss as i64).encode(e)?;
        }
        if let Ok(fds) = me.fd_count() {
            let e = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                ConstGauge::new(fds as i64).metric_type(),
            )?;
            ConstGauge::new(fds as i64).encode(e)?;
        }
        Ok(())
    }
}
