//! The app's kubelet probes, answered through the admin listener. In
//! transparent mode a probe of the app's port would meet the inbound,
//! which takes no plaintext; `inject` points each HTTP probe at
//! `/app-probe/PORT/PATH` on the admin port instead, and this forwards it
//! to the app on loopback: only the targets the proxy was given
//! (`--app-probes`), so that the admin port opens nothing else of the
//! app's.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use remora_server::admin::text;

use crate::http::client::{ClientSettings, Clients, HttpClient};
use crate::http::{empty, Body};

/// The admin path a forwarded probe takes, before `PORT/PATH`.
pub const PREFIX: &str = "/app-probe/";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The kubelet gives up sooner (a probe's `timeoutSeconds`, 1s unless
/// set); this bounds only what is left behind.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One probe target: the app's port and the path (query included) the
/// probe asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub port: u16,
    pub path: String,
}

impl std::str::FromStr for Target {
    type Err = String;

    /// `PORT/PATH`, as `8080/healthz`.
    fn from_str(s: &str) -> Result<Target, String> {
        let slash = s
            .find('/')
            .ok_or_else(|| format!("{s:?}: give PORT/PATH, as in 8080/healthz"))?;
        let port = s[..slash]
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?}: {:?} is not a port", &s[..slash]))?;
        Ok(Target {
            port,
            path: s[slash..].to_string(),
        })
    }
}

/// The targets the admin listener forwards, each with a client of its port.
#[derive(Default)]
pub struct AppProbes {
    targets: HashMap<Target, HttpClient>,
}

impl AppProbes {
    pub fn new(targets: &[Target]) -> AppProbes {
        let settings = ClientSettings {
            connect_timeout: CONNECT_TIMEOUT,
            ..ClientSettings::default()
        };
        let clients = Clients::default();
        let targets = targets
            .iter()
            .map(|t| {
                let app = SocketAddr::from((Ipv4Addr::LOCALHOST, t.port));
                (t.clone(), clients.to(settings, app, None))
            })
            .collect();
        AppProbes { targets }
    }

    /// The app's answer to the probe `PORT/PATH` (what follows
    /// [`PREFIX`]): its status, or `503` when it cannot be had, or `404`
    /// for a target not given.
    pub async fn forward(&self, target: &str) -> Response<Body> {
        let known = target
            .parse::<Target>()
            .ok()
            .and_then(|t| self.targets.get_key_value(&t));
        let Some((target, client)) = known else {
            return text(
                StatusCode::NOT_FOUND,
                format!("{PREFIX}{target} is not a probe of this pod's app\n"),
            );
        };
        let authority = format!("127.0.0.1:{}", target.port);
        let mut request = Request::new(empty());
        *request.uri_mut() = match format!("http://{authority}{}", target.path).parse() {
            Ok(uri) => uri,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        if let Ok(host) = HeaderValue::from_str(&authority) {
            request.headers_mut().insert(header::HOST, host);
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, client.request(request)).await {
            Ok(Ok(answer)) => {
                let status = answer.status();
                text(status, format!("the app answered {status}\n"))
            }
            Ok(Err(e)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the app at {authority} did not answer: {e}\n"),
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the app at {authority} did not answer within {ANSWER_TIMEOUT:?}\n"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_a_port_and_a_path() {
        let t: Target = "8080/healthz?full=1".parse().unwrap();
        assert_eq!((t.port, t.path.as_str()), (8080, "/healthz?full=1"));
        assert_eq!("9090/".parse::<Target>().unwrap().path, "/");
        for bad in ["healthz", "0/x", "http/x", "/x", "70000/x"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }
}
