//! The binary's command line. (Being an integration test of this package,
//! it also makes `cargo test --workspace` build the binary that the
//! workspace's end-to-end tests run.)

use std::process::Command;

fn control() -> Command {
    Command::new(env!("CARGO_BIN_EXE_remora-control"))
}

#[test]
fn help_lists_every_subcommand() {
    let out = control().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for subcommand in ["serve", "check", "demo"] {
        assert!(help.contains(subcommand), "{help}");
    }
}

#[test]
fn a_bad_listen_address_is_named() {
    let out = control()
        .args(["serve", "--api", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--api"), "{stderr}");
}

#[test]
fn a_bad_thread_count_is_refused() {
    for threads in ["--threads=0", "--threads=many"] {
        let out = control().args(["serve", threads]).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--threads"), "{stderr}");
    }
}

#[test]
fn check_notes_a_per_try_timeout_the_route_timeout_overrides_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(
        &file,
        "services:\n  a:\n    retry: { per_try_timeout: 5s }\n    routes:\n      - timeout: 1s\n",
    )
    .unwrap();
    let out = control().arg("check").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let name = file.display();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(&format!(
            "note: {name}:5:9: services.a.routes[0].timeout: 1s is shorter than the per_try_timeout of 5s"
        )),
        "{stdout}"
    );
    assert_eq!(
        lines[1],
        format!("{name}: ok: 1 service, 1 route, 0 endpoints")
    );
}

#[test]
fn check_refuses_a_bad_file_with_its_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, "services:\n  a:\n    retry: { attempts: 11 }\n").unwrap();
    let out = control().arg("check").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "{}:3:14: services.a.retry.attempts: ",
            file.display()
        )),
        "{stdout}"
    );
}
