//! The app's probes as a sidecar answers them for the kubelet: what
//! `inject` writes in `REMORA_APP_PROBES` and in each probe's path
//! (`/app-probe/TARGET` on the admin port), and what the proxy reads.

use std::fmt;

/// One probe of the app, on loopback.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProbeTarget {
    /// `PORT/PATH` (`8080/healthz`): an HTTP `GET`; `https:PORT/PATH`,
    /// over the app's own TLS, whatever its certificate (as the kubelet).
    Http { port: u16, path: String, tls: bool },
    /// `tcp:PORT`: the port takes a connection.
    Tcp { port: u16 },
    /// `grpc:PORT`, or `grpc:PORT/SERVICE`: gRPC's health check of the
    /// server, or of `SERVICE`, answers `SERVING`.
    Grpc { port: u16, service: String },
}

impl ProbeTarget {
    pub fn port(&self) -> u16 {
        match self {
            ProbeTarget::Http { port, .. }
            | ProbeTarget::Tcp { port }
            | ProbeTarget::Grpc { port, .. } => *port,
        }
    }
}

impl std::str::FromStr for ProbeTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<ProbeTarget, String> {
        if s.contains(',') {
            return Err(format!(
                "{s:?} has a comma, which a list of probes cannot hold"
            ));
        }
        let port = |text: &str| {
            text.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{s:?}: {text:?} is not a port"))
        };
        let (kind, rest) = match s.split_once(':') {
            Some((kind @ ("https" | "tcp" | "grpc"), rest)) => (kind, rest),
            _ => ("http", s),
        };
        match kind {
            "tcp" => Ok(ProbeTarget::Tcp { port: port(rest)? }),
            "grpc" => {
                let (number, service) = rest.split_once('/').unwrap_or((rest, ""));
                Ok(ProbeTarget::Grpc {
                    port: port(number)?,
                    service: service.to_string(),
                })
            }
            _ => {
                let slash = rest.find('/').ok_or_else(|| {
                    format!("{s:?}: give PORT/PATH, https:PORT/PATH, tcp:PORT or grpc:PORT[/SERVICE], as in 8080/healthz")
                })?;
                Ok(ProbeTarget::Http {
                    port: port(&rest[..slash])?,
                    path: rest[slash..].to_string(),
                    tls: kind == "https",
                })
            }
        }
    }
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeTarget::Http { port, path, tls } => {
                let scheme = if *tls { "https:" } else { "" };
                write!(f, "{scheme}{port}{path}")
            }
            ProbeTarget::Tcp { port } => write!(f, "tcp:{port}"),
            ProbeTarget::Grpc { port, service } if service.is_empty() => write!(f, "grpc:{port}"),
            ProbeTarget::Grpc { port, service } => write!(f, "grpc:{port}/{service}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_a_kind_a_port_and_what_to_ask_and_read_back_as_written() {
        let t: ProbeTarget = "8080/healthz?full=1".parse().unwrap();
        assert_eq!(
            t,
            ProbeTarget::Http {
                port: 8080,
                path: "/healthz?full=1".into(),
                tls: false
            }
        );
        let t: ProbeTarget = "https:8443/ready".parse().unwrap();
        assert!(matches!(
            t,
            ProbeTarget::Http {
                port: 8443,
                tls: true,
                ..
            }
        ));
        assert_eq!(
            "tcp:6379".parse::<ProbeTarget>().unwrap(),
            ProbeTarget::Tcp { port: 6379 }
        );
        assert_eq!(
            "grpc:9000/shop.Orders".parse::<ProbeTarget>().unwrap(),
            ProbeTarget::Grpc {
                port: 9000,
                service: "shop.Orders".into()
            }
        );
        for text in [
            "8080/",
            "https:8443/a?b=c",
            "tcp:6379",
            "grpc:9000",
            "grpc:9000/a.B",
        ] {
            let target: ProbeTarget = text.parse().unwrap();
            assert_eq!(target.to_string(), text);
        }
        for bad in [
            "healthz",
            "0/x",
            "http/x",
            "/x",
            "70000/x",
            "tcp:",
            "tcp:x",
            "grpc:0",
            "https:8443",
            "8080/a,b",
        ] {
            assert!(bad.parse::<ProbeTarget>().is_err(), "{bad}");
        }
    }
}
