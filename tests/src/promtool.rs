//! Prometheus' `promtool`, the reference check of a metrics exposition.

use std::io::Write as _;

/// Whether Prometheus' `promtool` can be run (see [`crate::tools::find`]).
pub fn have_promtool() -> bool {
    crate::tools::find("promtool", "prometheus").is_some()
}

/// Runs `promtool check metrics` on `exposition`; the error names what
/// promtool said.
pub fn promtool_check(exposition: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(exposition.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("waiting for promtool");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
