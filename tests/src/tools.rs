//! Software the tests drive that we did not write (nginx, h2load,
//! promtool): found on `PATH` or where Debian installs it. CI installs it
//! and must have it; on a developer's machine without it the tests that
//! need it are skipped, saying so, and everything else still runs.

use std::path::PathBuf;

/// Where `command` is, if installed; `package` is the Debian package that
/// brings it, for the message.
pub fn find(command: &str, package: &str) -> Option<PathBuf> {
    find_or_say(command, &format!("Debian: `apt-get install {package}`"))
}

/// Where the `.ci/*-tools` scripts install what Debian does not package
/// (helm, kubernetes-validate, the Python stacks), under `$HOME`.
const TOOLS_DIR: &str = ".cache/remora-tools/bin";

/// Where `command` is, when `.ci/SCRIPT` installed it in its default
/// place or it is on `PATH`; otherwise as [`find_or_say`], naming the
/// script.
pub fn installed(command: &str, script: &str) -> Option<PathBuf> {
    let installed = std::env::var_os("HOME")
        .map(|home| std::path::Path::new(&home).join(TOOLS_DIR).join(command))
        .filter(|p| p.is_file());
    installed.or_else(|| {
        find_or_say(
            command,
            &format!("run `.ci/{script}`, which installs it in $HOME/{TOOLS_DIR}"),
        )
    })
}

/// Where `command` is, if installed; `how` says how to install it.
pub fn find_or_say(command: &str, how: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = on_path
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(command))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{command} is needed by this test; install it ({how})"
        );
        eprintln!("{command} not found: skipping what needs it ({how})");
    }
    found
}
