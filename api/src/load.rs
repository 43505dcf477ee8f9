//! Reading `mesh.yaml`: YAML syntax and types through serde (unknown keys
//! are errors), then the checks that span the file. Every problem, and
//! every note on a setting that takes no effect, names the file, line,
//! column and key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use crate::identity::{check_trust_domain, SpiffeId};
use crate::locate::{duplicate_keys, locate, Position, Segment};
use crate::mesh::{
    effective_timeout, CircuitBreaker, Endpoint, LoadBalancer, Mesh, Protocol, RetryPolicy, Route,
    Service,
};

/// One thing wrong with a config file, at its place; also the shape of a
/// [`Note`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub position: Option<Position>,
    /// The dotted key path, e.g. `services.orders.routes[0].timeout`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(p) = self.position {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a file; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A remark on a config that does not refuse it, such as a setting that
/// can never take effect: worth telling whoever wrote the file, not worth
/// refusing to run on it. Located and shown as a [`Problem`] is.
pub type Note = Problem;

/// A mesh config that passed its checks, with the notes it earned.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub mesh: Mesh,
    /// In the order the checks found them; empty for most files.
    pub notes: Vec<Note>,
}

/// Parses and checks a mesh config. `file` only names the source in errors.
/// For the notes on a good file as well, see [`parse_mesh_with_notes`].
pub fn parse_mesh(file: &str, text: &str) -> Result<Mesh, ConfigError> {
    parse_mesh_with_notes(file, text).map(|checked| checked.mesh)
}

/// Parses and checks a mesh config, keeping the notes on a good one. A
/// refused file's error lists its problems only: they are what to fix.
pub fn parse_mesh_with_notes(file: &str, text: &str) -> Result<Checked, ConfigError> {
    if let Some(problem) = services_not_given(file, text) {
        return Err(ConfigError {
            problems: vec![problem],
        });
    }
    let mesh: Mesh = match serde_yaml::from_str(text) {
        Ok(mesh) => mesh,
        Err(e) => {
            return Err(ConfigError {
                problems: vec![serde_problem(file, &e)],
            })
        }
    };
    let duplicates = duplicate_keys(text).into_iter().map(|d| Problem {
        file: file.to_string(),
        position: Some(d.again),
        key: dotted(&d.path),
        message: format!(
            "given twice in one map (first at {}:{}); the second would silently replace the first",
            d.first.line, d.first.column
        ),
    });
    let found = check(&mesh);
    let located = |(path, message): (Vec<Segment>, String)| Problem {
        file: file.to_string(),
        position: locate(text, &path),
        key: dotted(&path),
        message,
    };
    let problems: Vec<Problem> = duplicates
        .chain(found.problems.into_iter().map(located))
        .collect();
    if problems.is_empty() {
        let notes = found.notes.into_iter().map(located).collect();
        Ok(Checked { mesh, notes })
    } else {
        Err(ConfigError { problems })
    }
}

/// The one way to write a mesh with no services. A file that is empty,
/// only comments, or leaves `services` out or blank is refused instead: it
/// is what a crashed writer, a full disk or `: > mesh.yaml` leaves behind,
/// and read as a mesh it would take every service away at once.
pub const EMPTY_MESH: &str = "services: {}";

/// A problem when `text` does not say which services the mesh has; `None`
/// when it does, or when serde will find it malformed anyway.
fn services_not_given(file: &str, text: &str) -> Option<Problem> {
    let root: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    let say_so = format!("a mesh with no services says so: `{EMPTY_MESH}`");
    let services = [key("services")];
    let (key_path, position, message): (&[Segment], _, _) = match &root {
        serde_yaml::Value::Null => (
            &[],
            None,
            format!("the file holds no mesh: it is empty or only comments; {say_so}"),
        ),
        serde_yaml::Value::Mapping(map) => match map.get("services") {
            None => (&services, None, format!("not given; {say_so}")),
            Some(serde_yaml::Value::Null) => (
                &services,
                locate(text, &services),
                format!("has nothing under it; {say_so}"),
            ),
            Some(_) => return None,
        },
        _ => return None,
    };
    Some(Problem {
        file: file.to_string(),
        position,
        key: dotted(key_path),
        message,
    })
}

/// Reads a mesh config from disk.
pub fn read_mesh(path: &Path) -> Result<Mesh, ConfigError> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(&file, e.to_string()))?;
    parse_mesh(&file, &text)
}

impl ConfigError {
    /// A file that could not be read at all: one problem, of no key.
    pub fn unreadable(file: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            problems: vec![Problem {
                file: file.to_string(),
                position: None,
                key: String::new(),
                message: message.into(),
            }],
        }
    }
}

/// A serde_yaml error as a problem of `file`, its key and position split out.
pub fn serde_problem(file: &str, e: &serde_yaml::Error) -> Problem {
    // serde_yaml prefixes the message with the key path ("services.orders: ...")
    // and suffixes it with the position; split both off into their fields.
    let full = e.to_string();
    let without_position = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    let (key, message) = match without_position.split_once(": ") {
        Some((key, rest)) if !key.contains(' ') => (key.to_string(), rest.to_string()),
        _ => (String::new(), without_position),
    };
    Problem {
        file: file.to_string(),
        position: e.location().map(|l| Position {
            line: l.line(),
            column: l.column(),
        }),
        key,
        message,
    }
}

fn dotted(path: &[Segment]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// What the checks found, each at its key path: problems refuse the
/// file, notes do not.
#[derive(Default)]
struct Checker {
    problems: Vec<(Vec<Segment>, String)>,
    notes: Vec<(Vec<Segment>, String)>,
}

impl Checker {
    fn problem(&mut self, path: &[Segment], extra: &[Segment], message: impl Into<String>) {
        self.problems.push(([path, extra].concat(), message.into()));
    }

    fn note(&mut self, path: &[Segment], extra: &[Segment], message: impl Into<String>) {
        self.notes.push(([path, extra].concat(), message.into()));
    }
}

fn key(k: &str) -> Segment {
    Segment::Key(k.to_string())
}

/// Service names are what apps put in the authority: DNS labels.
pub fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The checks serde cannot make: references between parts of the file and
/// settings that contradict each other, and the notes on settings that
/// another one keeps from taking effect.
fn check(mesh: &Mesh) -> Checker {
    let mut c = Checker::default();
    if let Err(reason) = check_trust_domain(&mesh.trust_domain) {
        c.problem(&[key("trust_domain")], &[], reason);
    }
    for (name, svc) in &mesh.services {
        let at = vec![key("services"), key(name)];
        check_identities(&mut c, &at, mesh, svc);
        if !is_valid_service_name(name) {
            c.problem(&at, &[], format!("{name:?} is not a valid service name (lowercase letters, digits and '-', at most 63)"));
        }
        match (svc.load_balancer, &svc.hash_on) {
            (LoadBalancer::RingHash, None) => c.problem(
                &at,
                &[key("load_balancer")],
                "ring-hash needs hash_on: { header: NAME }",
            ),
            (lb, Some(_)) if lb != LoadBalancer::RingHash => c.problem(
                &at,
                &[key("hash_on")],
                "hash_on applies only to load_balancer: ring-hash",
            ),
            _ => {}
        }
        if svc.protocol == Protocol::Tcp && !svc.routes.is_empty() {
            c.problem(&at, &[key("routes")], "a tcp service has no HTTP routes");
        }
        if svc.protocol == Protocol::Tcp && svc.health_check.is_some() {
            c.problem(
                &at,
                &[key("health_check")],
                "a tcp service has no HTTP health checks: its endpoints leave balancing when connects to them fail",
            );
        }
        if let Some(retry) = &svc.retry {
            check_retry(&mut c, &at, retry);
            if let (Some(per_try), Some(timeout)) =
                (retry.per_try_timeout, effective_timeout(svc.timeout))
            {
                if per_try > timeout {
                    c.note(
                        &at,
                        &[key("retry"), key("per_try_timeout")],
                        format!("{per_try} is longer than the service's timeout of {timeout}, {ENDS_EVERY_TRY}"),
                    );
                }
            }
        }
        check_circuit_breaker(&mut c, &at, &svc.circuit_breaker);
        if let Some(hc) = &svc.health_check {
            if !hc.path.starts_with('/') {
                c.problem(
                    &at,
                    &[key("health_check"), key("path")],
                    "must start with '/'",
                );
            }
            if hc.unhealthy_after == 0 || hc.healthy_after == 0 {
                c.problem(
                    &at,
                    &[key("health_check")],
                    "unhealthy_after and healthy_after must be at least 1",
                );
            }
        }
        if let Some(rl) = svc.inbound.as_ref().and_then(|i| i.rate_limit) {
            if rl.requests_per_second == 0 {
                c.problem(
                    &at,
                    &[
                        key("inbound"),
                        key("rate_limit"),
                        key("requests_per_second"),
                    ],
                    "must be at least 1",
                );
            }
        }
        let mut seen_addresses = BTreeSet::new();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            if !seen_addresses.insert(ep.address) {
                c.problem(
                    &at,
                    &[key("endpoints"), Segment::Index(i), key("address")],
                    format!("{} is listed twice", ep.address),
                );
            }
            // As a registration's labels are: the same labels select both.
            if let Err(e) = crate::labels::check_labels(&ep.labels) {
                c.problem(
                    &at,
                    &[key("endpoints"), Segment::Index(i), key("labels")],
                    e.to_string(),
                );
            }
        }
        let mut route_names = BTreeSet::new();
        for (i, route) in svc.routes.iter().enumerate() {
            let at = [at.as_slice(), &[key("routes"), Segment::Index(i)]].concat();
            if let Some(n) = &route.name {
                if !route_names.insert(n.as_str()) {
                    c.problem(
                        &at,
                        &[key("name")],
                        format!("route name {n:?} is used twice in this service"),
                    );
                }
            }
            let m = &route.matches;
            let path_kinds = [
                m.path.is_some(),
                m.path_prefix.is_some(),
                m.path_regex.is_some(),
            ];
            if path_kinds.iter().filter(|b| **b).count() > 1 {
                c.problem(
                    &at,
                    &[key("match")],
                    "give at most one of path, path_prefix and path_regex",
                );
            }
            for (header, value) in &m.headers {
                // A value no request can carry would be dropped from the
                // match, which would then take requests without it.
                if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
                    c.problem(
                        &at,
                        &[key("match"), key("headers"), key(header.as_str())],
                        "a header value cannot hold control characters",
                    );
                }
            }
            for (k, p) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
                if p.as_deref().is_some_and(|p| !p.starts_with('/')) {
                    c.problem(&at, &[key("match"), key(k)], "must start with '/'");
                }
            }
            if !route.split.is_empty() && route.split.iter().all(|s| s.weight == 0) {
                c.problem(
                    &at,
                    &[key("split")],
                    "the weights add up to zero, so no request could be sent",
                );
            }
            let total: u64 = route.split.iter().map(|s| u64::from(s.weight)).sum();
            if total > u64::from(u32::MAX) {
                c.problem(
                    &at,
                    &[key("split")],
                    format!(
                        "the weights add up to {total}; at most {} is allowed",
                        u32::MAX
                    ),
                );
            }
            for (j, split) in route.split.iter().enumerate() {
                let at = [at.as_slice(), &[key("split"), Segment::Index(j)]].concat();
                if let Some(other) = &split.service {
                    if other == name {
                        c.problem(
                            &at,
                            &[key("service")],
                            format!("{other:?} is this route's own service; leave `service` out to split among its own endpoints"),
                        );
                    } else if !mesh.services.contains_key(other) {
                        c.problem(
                            &at,
                            &[key("service")],
                            format!("no service named {other:?} in this mesh"),
                        );
                    }
                }
                let target = split.service.as_deref().unwrap_or(name);
                if let Some(target_svc) = mesh.services.get(target) {
                    check_split_labels(&mut c, &at, target, target_svc, &split.labels);
                }
            }
            if let Some(retry) = &route.retry {
                check_retry(&mut c, &at, retry);
            }
            note_per_try_timeout(&mut c, &at, svc, route);
        }
    }
    c
}

/// Every identity the service names (its own, its endpoints', those its
/// inbound policy allows) must resolve to a SPIFFE id.
fn check_identities(c: &mut Checker, at: &[Segment], mesh: &Mesh, svc: &Service) {
    // A bad trust domain is a problem of its own: check the names' own form.
    let trust_domain = match check_trust_domain(&mesh.trust_domain) {
        Ok(()) => mesh.trust_domain.as_str(),
        Err(_) => crate::mesh::DEFAULT_TRUST_DOMAIN,
    };
    let mut check = |extra: &[Segment], name: &str| {
        if let Err(e) = SpiffeId::resolve(name, trust_domain) {
            c.problem(at, extra, e.reason);
        }
    };
    if let Some(identity) = &svc.identity {
        check(&[key("identity")], identity);
    }
    for (i, ep) in svc.endpoints.iter().enumerate() {
        if let Some(identity) = &ep.identity {
            check(
                &[key("endpoints"), Segment::Index(i), key("identity")],
                identity,
            );
        }
    }
    let allowed = svc.inbound.as_ref().and_then(|i| i.allow.as_deref());
    for (i, identity) in allowed.unwrap_or_default().iter().enumerate() {
        check(&[key("inbound"), key("allow"), Segment::Index(i)], identity);
    }
}

/// A split's labels must select at least one endpoint, as far as the file
/// can tell: a service that lists static endpoints is checked against
/// them; one that lists none gets its endpoints from registrations, which
/// the file cannot know.
fn check_split_labels(
    c: &mut Checker,
    at: &[Segment],
    target: &str,
    target_svc: &Service,
    labels: &BTreeMap<String, String>,
) {
    if labels.is_empty() || target_svc.endpoints.is_empty() {
        return;
    }
    let selects = |ep: &Endpoint| labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v));
    if !target_svc.endpoints.iter().any(selects) {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        c.problem(
            at,
            &[key("labels")],
            format!(
                "no static endpoint of {target:?} has the labels {}; endpoints registered at run time are not considered",
                wanted.join(", ")
            ),
        );
    }
}

/// Why a per-try timeout longer than the request's is only noted: the
/// request's timeout wraps all its tries, so it ends a try first and the
/// caller gets its 504. The file is still good, as in Envoy and Istio;
/// the setting is merely idle (and a `per-try-timeout` retry with it).
const ENDS_EVERY_TRY: &str = "which ends every try first: the per-try timeout never applies";

/// A route's tries are bounded by its effective timeout (its own, else
/// the service's), so a longer per-try timeout in its effective retry
/// policy (its own, else the service's) never takes effect: a note. One
/// the route inherits whole from its service is noted once, at the
/// service.
fn note_per_try_timeout(c: &mut Checker, at: &[Segment], svc: &Service, route: &Route) {
    if route.timeout.is_none() && route.retry.is_none() {
        return;
    }
    let Some(timeout) = effective_timeout(route.timeout.or(svc.timeout)) else {
        return;
    };
    let Some(per_try) = route
        .retry
        .as_ref()
        .or(svc.retry.as_ref())
        .and_then(|r| r.per_try_timeout)
    else {
        return;
    };
    if per_try <= timeout {
        return;
    }
    let per_try_key = [key("retry"), key("per_try_timeout")];
    match (&route.retry, route.timeout) {
        (Some(_), Some(_)) => c.note(
            at,
            &per_try_key,
            format!("{per_try} is longer than the route's timeout of {timeout}, {ENDS_EVERY_TRY}"),
        ),
        (Some(_), None) => c.note(
            at,
            &per_try_key,
            format!("{per_try} is longer than the service's timeout of {timeout}, {ENDS_EVERY_TRY}"),
        ),
        _ => c.note(
            at,
            &[key("timeout")],
            format!("{timeout} is shorter than the per_try_timeout of {per_try} in the service's retry policy, so it ends every try first: that per-try timeout never applies on this route"),
        ),
    }
}

fn check_circuit_breaker(c: &mut Checker, at: &[Segment], cb: &CircuitBreaker) {
    if cb.consecutive_failures == 0 {
        c.problem(
            at,
            &[key("circuit_breaker"), key("consecutive_failures")],
            "must be at least 1",
        );
    }
    if cb.max_ejected_percent > 100 {
        c.problem(
            at,
            &[key("circuit_breaker"), key("max_ejected_percent")],
            "must be within 0 and 100",
        );
    }
    if cb.base_ejection > cb.max_ejection {
        c.problem(
            at,
            &[key("circuit_breaker"), key("base_ejection")],
            format!(
                "{} is longer than max_ejection ({})",
                cb.base_ejection, cb.max_ejection
            ),
        );
    }
}

fn check_retry(c: &mut Checker, at: &[Segment], retry: &RetryPolicy) {
    const MAX_ATTEMPTS: u32 = 10;
    if retry.attempts > MAX_ATTEMPTS {
        c.problem(
            at,
            &[key("retry"), key("attempts")],
            format!("at most {MAX_ATTEMPTS} extra tries"),
        );
    }
    if retry.backoff.base > retry.backoff.max {
        c.problem(
            at,
            &[key("retry"), key("backoff")],
            "base must not exceed max",
        );
    }
    if retry.on.is_empty() {
        c.problem(
            at,
            &[key("retry"), key("on")],
            "name at least one condition to retry on",
        );
    }
}
