//! The control plane shares code with the proxy through `remora-server`,
//! `remora-api` and `remora-certs`, never by linking the data plane: a
//! change to the proxy must not rebuild, or bloat, the control plane.

use std::process::Command;

#[test]
fn the_control_plane_does_not_link_the_proxy() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--manifest-path", manifest])
        .args([
            "-p",
            "remora-control",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .expect("running cargo tree");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo tree failed: {stderr}");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.lines().any(|l| l.starts_with("remora-server ")),
        "the tree should hold remora-server:\n{tree}"
    );
    let proxy: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("remora-proxy "))
        .collect();
    assert!(proxy.is_empty(), "remora-control depends on {proxy:?}");
}
