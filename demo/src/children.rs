//! The processes the demo starts: each writes its log to a file, announces
//! its addresses in a JSON `listening` log line, and is stopped with SIGTERM
//! within a bound, or killed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// How long a process may take to announce its addresses.
const LISTENING_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of a process's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 20;

/// A started process.
pub struct Process {
    /// What it is, for people: `orders proxy`, `control plane`.
    pub name: String,
    pub log: PathBuf,
    child: Child,
    listening: serde_json::Value,
}

impl Process {
    /// Starts `command` with its output appended to `log` and waits for
    /// its `listening` log line on stderr. The process gets its own process
    /// group, so a Ctrl-C in the terminal reaches the demo alone, which
    /// then stops everything in order; it is killed if the demo drops it.
    pub async fn start(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Process> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))
        };
        // Settings the demo's own environment might hold are not the
        // children's: each gets exactly the flags it is given.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REMORA_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        let stderr = child.stderr.take().context("the child's stderr")?;
        let mut file = tokio::fs::File::from_std(open()?);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.is_some() {
                    if let Some(fields) = listening(&line) {
                        let _ = tx.take().map(|tx| tx.send(fields));
                    }
                }
                // The log is for people: a failed write loses a line, no more.
                let _ = file.write_all(line.as_bytes()).await;
                let _ = file.write_all(b"\n").await;
                let _ = file.flush().await;
            }
        });
        let listening = match tokio::time::timeout(LISTENING_TIMEOUT, rx).await {
            Ok(Ok(fields)) => fields,
            Ok(Err(_)) => {
                let status = child.wait().await.ok();
                bail!(
                    "the {name} exited ({}) before it was listening; the end of its log ({}):\n{}",
                    status.map_or("?".to_string(), |s| s.to_string()),
                    log.display(),
                    tail(log)
                )
            }
            Err(_) => bail!(
                "the {name} did not announce its addresses within {LISTENING_TIMEOUT:?}; the end of its log ({}):\n{}",
                log.display(),
                tail(log)
            ),
        };
        Ok(Process {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            listening,
        })
    }

    /// An address from the `listening` line, by field name.
    pub fn address(&self, field: &str) -> anyhow::Result<SocketAddr> {
        self.listening[field]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| {
                format!(
                    "the {}'s listening line has no address {field}: {}",
                    self.name, self.listening
                )
            })
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the process to stop: remora's binaries drain, then exit.
    pub fn terminate(&self) {
        let pid = self
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            // It may have exited since: then there is nothing to stop.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }

    /// Waits up to `limit` for the process to exit after `terminate`, then
    /// kills it: `None` when it had to be killed.
    pub async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                None
            }
        }
    }
}

/// The fields of a JSON `listening` log line; `None` for other lines.
fn listening(line: &str) -> Option<serde_json::Value> {
    if !line.contains("\"listening\"") {
        return None;
    }
    let fields: serde_json::Value = serde_json::from_str(line).ok()?;
    (fields["message"] == "listening").then_some(fields)
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_is_picked_out() {
        let line = r#"{"timestamp":"2025-01-01T00:00:00Z","level":"INFO","message":"listening","api":"127.0.0.1:4000","admin":"127.0.0.1:4001","target":"remora_control"}"#;
        let fields = listening(line).unwrap();
        assert_eq!(fields["api"], "127.0.0.1:4000");
        assert!(listening(r#"{"message":"not listening yet","listening":"no"}"#).is_none());
        assert!(listening("listening").is_none());
    }

    #[tokio::test]
    async fn a_process_that_exits_early_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let mut command = Command::new("sh");
        command.args(["-c", "echo to stdout; echo boom >&2; exit 3"]);
        let error = Process::start("shell", command, &log).await.err().unwrap();
        let text = format!("{error:#}");
        assert!(text.contains("exited (exit status: 3)"), "{text}");
        assert!(text.contains("boom"), "{text}");
        assert!(std::fs::read_to_string(&log).unwrap().contains("to stdout"));
    }

    #[tokio::test]
    async fn a_process_is_stopped_by_sigterm_and_its_addresses_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let mut command = Command::new("sh");
        command.args([
            "-c",
            r#"echo '{"message":"listening","admin":"127.0.0.1:9"}' >&2; exec sleep 30"#,
        ]);
        let mut p = Process::start("shell", command, &log).await.unwrap();
        assert_eq!(p.address("admin").unwrap(), "127.0.0.1:9".parse().unwrap());
        assert!(p.address("api").is_err());
        assert!(p.exited().is_none());
        p.terminate();
        let status = p.wait(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(15)
        );
    }
}
