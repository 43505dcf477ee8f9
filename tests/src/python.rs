//! Real third-party protocol stacks, in Python: the scripts of
//! `tests/python/` (grpcio and websockets servers and clients) run by the
//! `remora-python` that `.ci/python-tools` installs. A script
//! says what it has to say as one JSON object a line on its stdout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a server script may take to say its port: grpcio's import
/// alone takes a while.
const START_LIMIT: Duration = Duration::from_secs(20);

/// `remora-python`, when installed. Without it a test is skipped, saying
/// so; under CI (`CI` set) its absence fails it: the rule of
/// [`crate::tools::installed`].
pub fn python() -> Option<PathBuf> {
    crate::tools::installed("remora-python", "python-tools")
}

/// A script of `tests/python/` running: its stdout read line by line,
/// its stderr kept for the message when it fails, its stdin open until it
/// is dropped or [`Script::finish`]ed (the servers end when it closes),
/// and killed on drop.
pub struct Script {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
}

impl Script {
    /// Starts `tests/python/NAME` with `args`.
    pub fn start(python: &Path, name: &str, args: &[&str]) -> Script {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join(name);
        let mut child = Command::new(python)
            // Unbuffered: each line reaches the test when it is printed;
            // and no `__pycache__` left in the source tree.
            .args(["-u", "-B"])
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = sink.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        Script {
            name: name.to_string(),
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().expect("piped stdout")).lines(),
            stderr,
            child,
        }
    }

    /// Starts a server script and waits for the `{"port": N}` it prints
    /// once it listens on 127.0.0.1.
    pub async fn serving(python: &Path, name: &str, args: &[&str]) -> (Script, SocketAddr) {
        let mut script = Script::start(python, name, args);
        let line = script.next(START_LIMIT).await;
        let port = line["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("{name} printed {line} for its port"));
        (script, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The next line the script prints, parsed; panics with its stderr
    /// when none comes within `limit`.
    pub async fn next(&mut self, limit: Duration) -> serde_json::Value {
        let line = match tokio::time::timeout(limit, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => self.fail("ended its output").await,
            Ok(Err(e)) => self.fail(&format!("could not be read: {e}")).await,
            Err(_) => {
                self.fail(&format!("printed nothing within {limit:?}"))
                    .await
            }
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{} printed {line:?}, not JSON: {e}", self.name))
    }

    /// Writes `line` to the script's stdin.
    pub async fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open until finish");
        let written = stdin.write_all(format!("{line}\n").as_bytes()).await;
        if let Err(e) = written.and(stdin.flush().await) {
            self.fail(&format!("did not take {line:?}: {e}")).await;
        }
    }

    /// Closes the script's stdin and waits up to `limit` for it to end
    /// successfully; the last line it printed, parsed.
    pub async fn finish(mut self, limit: Duration) -> serde_json::Value {
        drop(self.stdin.take());
        let mut last = None;
        let read = tokio::time::timeout(limit, async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                last = Some(line);
            }
            self.child.wait().await
        })
        .await;
        match read {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => self.fail(&format!("exited with {status}")).await,
            Ok(Err(e)) => self.fail(&format!("could not be waited for: {e}")).await,
            Err(_) => self.fail(&format!("did not end within {limit:?}")).await,
        }
        let last = last.unwrap_or_else(|| panic!("{} printed nothing", self.name));
        serde_json::from_str(&last)
            .unwrap_or_else(|e| panic!("{} printed {last:?}, not JSON: {e}", self.name))
    }

    /// Panics with `what` and what the script wrote on stderr (given a
    /// moment to arrive, for a script that just failed).
    async fn fail(&mut self, what: &str) -> ! {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stderr = self.stderr.lock().unwrap().clone();
        panic!("{} {what}; its stderr:\n{stderr}", self.name)
    }
}

/// Runs `tests/python/NAME` with `args` to its end, within `limit`; the
/// last line it printed, parsed.
pub async fn run(python: &Path, name: &str, args: &[&str], limit: Duration) -> serde_json::Value {
    Script::start(python, name, args).finish(limit).await
}
