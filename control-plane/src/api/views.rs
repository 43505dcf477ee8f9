//! `GET /v1/outbound/{service}` and `GET /v1/inbound/{service}`: answer at
//! once when the caller's version is not the current one, else hold the
//! request on the resource's channel until it changes or the wait passes.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Response, StatusCode};
use prometheus_client::metrics::gauge::Gauge;
use remora_api::load::is_valid_service_name;
use remora_api::protocol::{DEFAULT_WAIT, MAX_WAIT, VERSION_HEADER};
use remora_api::HumanDuration;
use remora_server::{empty, Body};

use super::{chunks, error, json_body, Api, ThreadViews};
use crate::state::{Kind, Published};

/// A long-poll's query: `version=V&wait=30s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// The version the caller has; `None` when it has none.
    pub version: Option<u64>,
    pub wait: Duration,
}

/// Reads `version` and `wait`; other parameters are ignored.
pub fn parse_query(query: Option<&str>) -> Result<Query, String> {
    let mut q = Query {
        version: None,
        wait: DEFAULT_WAIT,
    };
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match name {
            "version" => {
                let v: u64 = value.parse().map_err(|_| {
                    format!("version must be a whole number (the version you have, or 0), not {value:?}")
                })?;
                q.version = (v != 0).then_some(v);
            }
            "wait" => {
                let wait: HumanDuration = value.parse()?;
                q.wait = wait.get().min(MAX_WAIT);
            }
            _ => {}
        }
    }
    Ok(q)
}

/// `%XX` and `+` as a query string writes them; anything undecodable is
/// kept as it is, for the parse that follows to reject.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Whether `published` is worth an answer to a caller that has `version`.
fn is_news(published: &Published, version: Option<u64>) -> bool {
    published.exists() && Some(published.version) != version
}

/// Counts a held long-poll for as long as it is held, however it ends
/// (answered, or dropped with its connection).
struct Held(Gauge);

impl Held {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub async fn poll(
    api: &Api,
    views: &ThreadViews,
    kind: Kind,
    service: &str,
    query: Option<&str>,
) -> Response<Body> {
    if !is_valid_service_name(service) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{service:?} is not a valid service name (lowercase letters, digits and '-', at most 63)"),
        );
    }
    let query = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let metrics = api.view_metrics(kind);
    let mut rx = views.watch(kind, service);
    let mut wait = query.wait;
    let absent = !rx.borrow().exists();
    if let Some(remaining) = api.restart.remaining(query.version).filter(|_| absent) {
        // The caller keeps its view from before the restart of a service
        // that only registrations named: until the sidecars had the time
        // to register again, it is not told the service is unknown. (A
        // view that exists is answered at once, marked `incomplete`.)
        let mut drain = api.drain.clone();
        tokio::select! {
            _ = tokio::time::sleep(remaining.min(wait)) => {}
            _ = drain.signaled() => {}
        }
        if wait <= remaining || api.drain.is_draining() {
            return not_modified(rx.borrow().version);
        }
        wait -= remaining;
    }
    let mut current = rx.borrow_and_update().clone();
    if is_news(&current, query.version) {
        return view(&current);
    }
    if !wait.is_zero() && !api.drain.is_draining() {
        let _held = Held::new(&metrics.watches);
        let existed = current.exists();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        let mut drain = api.drain.clone();
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    current = rx.borrow_and_update().clone();
                    if is_news(&current, query.version) {
                        let response = view(&current);
                        metrics.push.observe(current.at.elapsed().as_secs_f64());
                        return response;
                    }
                    if existed && !current.exists() {
                        // It went away while held: say so now.
                        return unknown(kind, service);
                    }
                }
                _ = &mut deadline => break,
                // Shutting down: answer as if the wait had passed.
                _ = drain.signaled() => break,
            }
        }
    }
    if current.exists() {
        not_modified(current.version)
    } else {
        unknown(kind, service)
    }
}

fn view(published: &Published) -> Response<Body> {
    let body = published.body.clone().unwrap_or_default();
    let mut r = json_body(StatusCode::OK, chunks::in_pieces(body));
    r.headers_mut()
        .insert(VERSION, version_header(published.version));
    r
}

/// The header's name, made once rather than parsed for every answer.
const VERSION: HeaderName = HeaderName::from_static(VERSION_HEADER);

/// The `remora-version` header's value. Marked never to be indexed by HPACK:
/// versions change with every push, so an entry for one in a connection's
/// header table would never be used again, and would push out entries
/// that are (`content-type`, `date`, each view's `content-length`).
fn version_header(version: u64) -> HeaderValue {
    let mut value = HeaderValue::from(version);
    value.set_sensitive(true);
    value
}

fn not_modified(version: u64) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    r.headers_mut().insert(VERSION, version_header(version));
    r
}

fn unknown(kind: Kind, service: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no service named {service:?}: mesh.yaml does not name it and no endpoint of it is registered (asked for its {} view)",
            kind.as_str()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_has_defaults_and_a_ceiling() {
        assert_eq!(
            parse_query(None).unwrap(),
            Query {
                version: None,
                wait: DEFAULT_WAIT
            }
        );
        let q = parse_query(Some("version=17&wait=250ms&other=x")).unwrap();
        assert_eq!(q.version, Some(17));
        assert_eq!(q.wait, Duration::from_millis(250));
        assert_eq!(parse_query(Some("version=0")).unwrap().version, None);
        assert_eq!(parse_query(Some("wait=1h")).unwrap().wait, MAX_WAIT);
        assert_eq!(parse_query(Some("wait=0s")).unwrap().wait, Duration::ZERO);
        assert_eq!(
            parse_query(Some("wait=1m%2030s")).unwrap().wait,
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_query(Some("wait=1m+30s")).unwrap().wait,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn a_bad_query_says_what_is_wrong() {
        assert!(parse_query(Some("version=abc"))
            .unwrap_err()
            .contains("version"));
        assert!(parse_query(Some("version=-1")).is_err());
        assert!(parse_query(Some("wait=5")).unwrap_err().contains("250ms"));
        assert!(parse_query(Some("wait=soon")).is_err());
        assert!(parse_query(Some("wait=%zz")).is_err());
    }
}
