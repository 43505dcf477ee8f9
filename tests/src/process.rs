//! A remora binary started for a test: its log captured line by line, and
//! the addresses it announced in its `listening` log line.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where cargo put the binary: beside this test's own executable's folder.
/// A binary older than the sources it is built from is refused, since
/// `cargo test --test NAME` builds test targets only and would leave it stale.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        path.display()
    );
    let built = modified(&path);
    // Cargo lists the sources a binary was built from beside it (`NAME.d`).
    if let Ok(depinfo) = std::fs::read_to_string(dir.join(format!("{name}.d"))) {
        let sources = depinfo.split_once(": ").map_or("", |(_, deps)| deps);
        for source in sources
            .split_whitespace()
            .map(Path::new)
            .filter(|p| p.exists())
        {
            assert!(
                modified(source) <= built,
                "{} is older than {}: run `cargo build --workspace` (or `cargo test --workspace`)",
                path.display(),
                source.display()
            );
        }
    }
    path
}

/// Runs `command` to its end with `input` on its stdin, its stdout and
/// stderr captured.
pub fn run_with_input(mut command: std::process::Command, input: &str) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let what = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("writing to {what}: {e}"));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("a file's modification time")
}

/// A started process whose log (stderr, one JSON object a line) is kept.
pub struct Running {
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// The parsed `listening` log line.
    pub listening: serde_json::Value,
    /// Reads the log until the process closes it.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Spawns `command` (stderr piped, killed on drop) and waits for its
    /// `listening` log line; panics with the log if it never comes.
    pub async fn spawn(mut command: Command, what: &str) -> Running {
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("\"listening\"") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let log = |logs: &Arc<Mutex<Vec<String>>>| logs.lock().unwrap().join("\n");
        let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} did not start; its log:\n{}", log(&logs)))
            .unwrap_or_else(|| panic!("{what} exited; its log:\n{}", log(&logs)));
        let listening = serde_json::from_str(&line).expect("a JSON log line");
        Running {
            child,
            logs,
            listening,
            reader: Some(reader),
        }
    }

    /// Waits up to `limit` for the process to exit, and for its last log
    /// lines to be read, so that `logs` has all of them.
    pub async fn wait_exit(&mut self, limit: Duration, what: &str) -> std::process::ExitStatus {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{what} did not exit within {limit:?}"))
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        if let Some(reader) = self.reader.take() {
            // Closed with the process: the rest is already in the pipe.
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        status
    }

    /// An address the process announced, by its log field name.
    pub fn address(&self, field: &str) -> std::net::SocketAddr {
        self.listening[field]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {}", self.listening))
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }
}
