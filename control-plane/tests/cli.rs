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
