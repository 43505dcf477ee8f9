//! The shop binary's command line. (Being an integration test of this
//! package, it also makes `cargo test --workspace` build the binary that
//! the demo starts.)

use std::process::Command;

#[test]
fn an_unknown_role_is_refused_with_the_roles_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_remora-shop"))
        .args([
            "--role",
            "billing",
            "--listen",
            "127.0.0.1:0",
            "--outbound",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gateway") && stderr.contains("inventory"),
        "{stderr}"
    );
}
