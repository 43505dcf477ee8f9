//! The binary's command line: a bad config stops it at start with every
//! problem located by file, line and column, and a non-zero exit.

use std::process::Command;

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_remora-proxy"))
}

#[test]
fn a_bad_config_is_refused_at_start_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, "services:\n  orders:\n    timeout: soon\n").unwrap();
    let out = proxy()
        .arg("--config")
        .arg(&path)
        .args([
            "--outbound",
            "127.0.0.1:0",
            "--inbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:3:", path.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        stderr.contains("services.orders.timeout") && stderr.contains("invalid duration"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_names_the_file() {
    let out = proxy()
        .args(["--config", "/nonexistent/mesh.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/mesh.yaml"), "{stderr}");
}

#[test]
fn every_flag_reads_its_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, "services: {}\n").unwrap();
    // An unparseable address in the environment is reported under its flag.
    let out = proxy()
        .env("REMORA_CONFIG", &path)
        .env("REMORA_OUTBOUND", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--outbound"), "{stderr}");
}

#[test]
fn the_mesh_comes_from_exactly_one_source() {
    let neither = proxy().output().unwrap();
    assert!(!neither.status.success());
    let stderr = String::from_utf8_lossy(&neither.stderr);
    assert!(
        stderr.contains("--config") && stderr.contains("--control-url"),
        "{stderr}"
    );
    let both = proxy()
        .args([
            "--config",
            "mesh.yaml",
            "--control-url",
            "http://127.0.0.1:8086",
        ])
        .output()
        .unwrap();
    assert!(!both.status.success());
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn bad_control_plane_flags_are_named() {
    let run = |args: &[&str]| {
        let out = proxy()
            .args([
                "--outbound",
                "127.0.0.1:0",
                "--inbound",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(&["--control-url", "https://remora-control:8086"]);
    assert!(stderr.contains("--control-url"), "{stderr}");
    let stderr = run(&["--control-url", "http://remora-control"]);
    assert!(stderr.contains("name the port"), "{stderr}");
    let stderr = run(&["--control-url", "http://127.0.0.1:1", "--label", "version"]);
    assert!(stderr.contains("key=value"), "{stderr}");
    // Labels as Kubernetes takes them, the same check the control plane
    // makes of a registration.
    let stderr = run(&[
        "--control-url",
        "http://127.0.0.1:1",
        "--label",
        "version=v 1",
    ]);
    assert!(
        stderr.contains(r#"label "version"="v 1": the value"#),
        "{stderr}"
    );
    let stderr = run(&[
        "--control-url",
        "http://127.0.0.1:1",
        "--registration-ttl",
        "2h",
    ]);
    assert!(stderr.contains("--registration-ttl"), "{stderr}");
    // An address no sidecar could dial is refused at start, as the control
    // plane would refuse it at every renewal.
    for advertise in ["0.0.0.0:4143", "10.0.0.7:0"] {
        let stderr = run(&[
            "--control-url",
            "http://127.0.0.1:1",
            "--advertise",
            advertise,
        ]);
        assert!(
            stderr.contains(&format!("the address {advertise} cannot be dialled")),
            "{stderr}"
        );
    }
    // An identity needs the anchors to check peers with, and a control plane.
    let stderr = run(&["--control-url", "http://127.0.0.1:1", "--token-file", "t"]);
    assert!(stderr.contains("--trust-anchors"), "{stderr}");
    let stderr = run(&[
        "--config",
        "m.yaml",
        "--token-file",
        "t",
        "--trust-anchors",
        "a",
    ]);
    assert!(
        stderr.contains("--token-file needs --control-url"),
        "{stderr}"
    );
    let stderr = run(&[
        "--control-url",
        "http://127.0.0.1:1",
        "--token-file",
        "t",
        "--trust-anchors",
        "/nowhere/ca.crt",
    ]);
    assert!(
        stderr.contains("cannot read --trust-anchors /nowhere/ca.crt"),
        "{stderr}"
    );
}

#[test]
fn the_pod_ip_is_read_from_pod_ip_and_checked() {
    // Kubernetes' downward API names the variable; the flag reads it.
    let out = proxy()
        .env("POD_IP", "not-an-ip")
        .args(["--control-url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--pod-ip") && stderr.contains("not-an-ip"),
        "{stderr}"
    );
}
