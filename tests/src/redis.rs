//! A real `redis-server` (Debian's `redis-server`) on a free loopback
//! port, and its real client, `redis-cli`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::tools;

pub struct Redis {
    pub addr: SocketAddr,
    _server: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// A server with no persistence, ready for commands; `None` where
    /// redis is not installed (see [`tools::find`]).
    pub async fn start() -> Option<Redis> {
        let server = tools::find("redis-server", "redis-server")?;
        let cli = cli()?;
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = crate::upstream::dead_address().await.port();
        let child = Command::new(server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting redis-server");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        crate::eventually(Duration::from_secs(10), "redis-server to answer", || {
            let cli = cli.clone();
            async move {
                run(&cli, addr, &["PING"], None)
                    .await
                    .is_ok_and(|o| o == "PONG")
            }
        })
        .await;
        Some(Redis {
            addr,
            _server: child,
            _dir: dir,
        })
    }
}

/// `redis-cli`, where Debian's `redis-tools` installs it.
pub fn cli() -> Option<PathBuf> {
    tools::find("redis-cli", "redis-tools")
}

/// Runs `redis-cli` against `addr` with `args` (and `input` on its
/// stdin, for `-x`); its output, trimmed, or its error.
pub async fn run(
    cli: &PathBuf,
    addr: SocketAddr,
    args: &[&str],
    input: Option<&[u8]>,
) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(cli)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting redis-cli: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    if let Some(input) = input {
        stdin.write_all(input).await.map_err(|e| e.to_string())?;
    }
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .map_err(|_| "redis-cli did not finish in 20s".to_string())?
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // redis-cli reports a lost connection on stdout or stderr, and may
    // exit 0 regardless.
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() || stdout.starts_with("Error") || !stderr.is_empty() {
        return Err(format!("redis-cli {args:?}: {stdout} {stderr}"));
    }
    Ok(stdout)
}
