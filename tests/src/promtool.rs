//! Prometheus' `promtool`, the reference check of a metrics exposition.

/// Whether Prometheus' `promtool` can be run (see [`crate::tools::find`]).
pub fn have_promtool() -> bool {
    crate::tools::find("promtool", "prometheus").is_some()
}

/// Runs `promtool check metrics` on `exposition`; the error names what
/// promtool said.
pub fn promtool_check(exposition: &str) -> Result<(), String> {
    let mut command = std::process::Command::new("promtool");
    command.args(["check", "metrics"]);
    let out = crate::process::run_with_input(command, exposition);
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
