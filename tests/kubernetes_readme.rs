//! The README's Kubernetes walk-through, run as written. There is no
//! cluster here, so `kubectl` is a stand-in (below) that plays the API
//! server's part as far as a file can: every object it is asked to apply
//! is checked against Kubernetes' own schemas (`kubernetes-validate
//! --strict`) and kept for the test to read, and every file a Secret is
//! made from must exist. `helm`, `remora-certs` and `remora-control` are
//! the real ones; `cargo install` is skipped (the test runs the binaries
//! this build made).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

use remora_e2e::kubernetes;
use remora_e2e::process::binary;

/// Marks the README's block that the test runs.
const MARK: &str = "<!-- kubernetes-walkthrough:";

/// The oldest Kubernetes the chart and inject support.
const KUBERNETES: &str = "1.29.0";

const STAND_IN_KUBECTL: &str = r#"#!/usr/bin/env bash
# kubectl's stand-in: records each command; `apply -f -` validates what it
# is given and keeps it; `create secret` needs its files.
set -euo pipefail
echo "kubectl $*" >> "$WALKTHROUGH_LOG/commands"
case "$1 ${2:-}" in
    "apply -f")
        [ "${3:-}" = "-" ] || { echo "kubectl stand-in: apply reads stdin here" >&2; exit 64; }
        n=$(find "$WALKTHROUGH_LOG" -name 'applied-*.yaml' | wc -l)
        file="$WALKTHROUGH_LOG/applied-$n.yaml"
        cat > "$file"
        "$KUBERNETES_VALIDATE" --strict --kubernetes-version "$KUBERNETES_VERSION" "$file" >&2
        ;;
    "create namespace") ;;
    "create secret")
        for arg in "$@"; do
            case "$arg" in
                --from-file=*)
                    path="${arg#--from-file=}"
                    path="${path#*=}"
                    [ -s "$path" ] || { echo "kubectl stand-in: no file $path" >&2; exit 1; }
                    ;;
            esac
        done
        ;;
    *) echo "kubectl stand-in: '$*' is not played" >&2; exit 64 ;;
esac
"#;

/// The README's marked shell block.
fn walkthrough() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(readme).expect("README.md");
    let after = readme
        .split_once(MARK)
        .expect("the README marks its Kubernetes walk-through")
        .1;
    let block = after
        .split_once("```sh\n")
        .expect("a shell block after the mark")
        .1;
    block
        .split_once("```")
        .expect("the block ends")
        .0
        .to_string()
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("writing a stand-in");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn documents(file: &Path) -> Vec<Value> {
    kubernetes::documents(&std::fs::read_to_string(file).expect("an applied file"))
}

#[test]
fn the_readme_walkthrough_installs_the_chart_and_a_meshed_workload() {
    let Some(tools) = kubernetes::tools() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("log");
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    write_executable(&bin.join("kubectl"), STAND_IN_KUBECTL);
    write_executable(
        &bin.join("cargo"),
        "#!/bin/sh\necho \"cargo $*\" >> \"$WALKTHROUGH_LOG/commands\"\n",
    );
    // The repository's files, as the README's `cd` into it would give.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cwd = work.path().join("remora");
    std::fs::create_dir_all(&cwd).unwrap();
    for dir in ["charts", "examples"] {
        std::os::unix::fs::symlink(repo.join(dir).canonicalize().unwrap(), cwd.join(dir)).unwrap();
    }
    let built: PathBuf = binary("remora-control").parent().unwrap().into();
    binary("remora-certs");
    let helm_dir: PathBuf = tools.helm.parent().unwrap().into();
    let path = std::env::join_paths([bin, built, helm_dir].into_iter().chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();

    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &walkthrough()])
        .current_dir(&cwd)
        .env("PATH", path)
        .env("WALKTHROUGH_LOG", &log)
        .env("KUBERNETES_VALIDATE", &tools.validate)
        .env("KUBERNETES_VERSION", KUBERNETES)
        .output()
        .expect("running bash");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the walk-through failed:\n{said}");

    let commands = std::fs::read_to_string(log.join("commands")).unwrap();
    let commands: Vec<&str> = commands.lines().collect();
    // Two installs, two namespaces, the issuer's Secret, two applies.
    assert_eq!(commands.len(), 7, "{commands:#?}");
    assert_eq!(
        commands
            .iter()
            .filter(|c| **c == "kubectl apply -f -")
            .count(),
        2,
        "{commands:#?}"
    );

    // What the chart applied: the control plane, watching `shop` and
    // checking its pods' tokens with TokenReview (nothing else grants an
    // identity), and the trust anchors where the sidecars of `shop` find
    // them.
    let chart = documents(&log.join("applied-0.yaml"));
    let deployment = kubernetes::find_doc(&chart, "Deployment", "remora-control");
    assert_eq!(deployment["metadata"]["namespace"], "remora");
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("the control plane's args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--kubernetes"), "{args:?}");
    assert!(!args.contains(&"--tokens"), "{args:?}");
    let reviews = chart.iter().any(|d| {
        d["kind"] == "ClusterRole"
            && d["rules"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|r| r["resources"][0] == "tokenreviews")
    });
    assert!(reviews, "RBAC for TokenReview");
    let anchors = chart
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "remora-trust-anchors")
        .expect("the trust anchors' ConfigMap");
    assert_eq!(anchors["metadata"]["namespace"], "shop");
    let ca = std::fs::read_to_string(cwd.join("ca/ca.crt")).unwrap();
    assert_eq!(
        anchors["data"]["ca.crt"].as_str().map(str::trim),
        Some(ca.trim())
    );

    // What inject applied: the workload, with its sidecar and its service
    // account's token, projected for the control plane.
    let workload = documents(&log.join("applied-1.yaml"));
    let web = kubernetes::find_doc(&workload, "Deployment", "web");
    let spec = &web["spec"]["template"]["spec"];
    assert_eq!(spec["initContainers"][0]["name"], "remora-init");
    assert_eq!(spec["initContainers"][1]["name"], "remora-proxy");
    let token_volume = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "remora-token")
        .expect("the token's volume");
    let projected = &token_volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(projected["audience"], "remora-control", "{token_volume:?}");
    assert_eq!(spec["serviceAccountName"], "web");
}
