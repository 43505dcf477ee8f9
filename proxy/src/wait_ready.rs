//! `remora-proxy wait-ready`: polls the admin listener's `/ready` until it
//! answers 200. A classic sidecar's `postStart` hook runs it: the kubelet
//! starts the pod's next container only when the hook returns, so the app
//! starts with its proxy ready. Plain blocking I/O: it runs alone, briefly.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::WaitReadyArgs;

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const PAUSE: Duration = Duration::from_millis(200);

pub fn run(args: &WaitReadyArgs) -> ExitCode {
    let address = dialable(args.admin);
    let deadline = Instant::now() + Duration::from(args.timeout);
    loop {
        let outcome = ready(address);
        if outcome.is_ok() {
            return ExitCode::SUCCESS;
        }
        if Instant::now() >= deadline {
            let why = outcome.err().unwrap_or_default();
            eprintln!(
                "remora-proxy wait-ready: http://{address}/ready not ready after {}: {why}",
                args.timeout
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(PAUSE);
    }
}

/// The listener's own address, with an unspecified IP (listen on all) as
/// this host's loopback.
fn dialable(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, address.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, address.port()).into(),
        _ => address,
    }
}

/// One `GET /ready`: `Ok` on a 200, else what happened.
fn ready(address: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&address, ATTEMPT_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(ATTEMPT_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ATTEMPT_TIMEOUT)))
        .and_then(|()| {
            stream.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        })
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(e.to_string()),
        }
    }
    let status_line = String::from_utf8_lossy(&head[..read]);
    match status_line.split(' ').nth(1) {
        Some("200") => Ok(()),
        Some(status) => Err(format!("answered {status}")),
        None => Err("no HTTP answer".into()),
    }
}
