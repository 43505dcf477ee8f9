//! The chart `charts/remora` through the tools Kubernetes users run: `helm`
//! renders and lints it, `kubernetes-validate` checks what it renders
//! against Kubernetes' own OpenAPI schemas. Both come from
//! `.ci/kubernetes-tools`, which installs them in
//! `$HOME/.cache/remora-tools/bin`; they are also found on `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

/// The chart, in the workspace.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("charts")
        .join("remora")
}

/// `helm` and `kubernetes-validate`.
pub struct Tools {
    pub helm: PathBuf,
    pub validate: PathBuf,
}

/// The tools, when installed. Without them a test is skipped, saying so;
/// under CI (`CI` set) their absence fails it: the rule of
/// [`crate::tools::installed`].
pub fn tools() -> Option<Tools> {
    let helm = find("helm")?;
    let validate = find("kubernetes-validate")?;
    Some(Tools { helm, validate })
}

fn find(command: &str) -> Option<PathBuf> {
    crate::tools::installed(command, "kubernetes-tools")
}

/// What a command printed, or why it failed: its status and output.
fn run(mut command: Command) -> Result<String, String> {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {:?}: {e}", command.get_program()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{}\n{stdout}{stderr}", out.status))
    }
}

impl Tools {
    /// `helm version --short`.
    pub fn helm_version(&self) -> String {
        let mut command = Command::new(&self.helm);
        command.args(["version", "--short"]);
        run(command).expect("helm version").trim().to_string()
    }

    /// `helm lint [--strict] CHART` with `args`; its output, or why it failed.
    pub fn lint(&self, strict: bool, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(&self.helm);
        command.arg("lint").arg(chart_dir());
        if strict {
            command.arg("--strict");
        }
        command.args(args);
        run(command)
    }

    /// `helm template remora CHART` for Kubernetes `kube_version`, with
    /// `args` (`-f FILE`, `--set K=V`, `--set-file K=FILE`): the rendered
    /// YAML, or helm's complaint.
    pub fn template(&self, kube_version: &str, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(&self.helm);
        command
            .args(["template", "remora"])
            .arg(chart_dir())
            .args(["--kube-version", kube_version])
            .args(args);
        run(command)
    }

    /// Runs `kubernetes-validate --strict` (unknown fields are errors) on
    /// `rendered` against Kubernetes `kube_version`.
    pub fn validate(&self, rendered: &str, kube_version: &str) -> Validation {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, rendered).expect("writing the rendered chart");
        let out = Command::new(&self.validate)
            .args(["--strict", "--kubernetes-version", kube_version])
            .arg(&file)
            .output()
            .expect("running kubernetes-validate");
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        Validation::read(out.status.success(), &report)
    }
}

/// What `kubernetes-validate` said of each resource.
#[derive(Debug)]
pub struct Validation {
    pub succeeded: bool,
    /// `kind/name` of each resource that passed.
    pub passed: Vec<String>,
    /// Kinds it has no schema for (custom resources), as `Kind apiVersion`.
    pub unknown: Vec<String>,
    /// Everything it said, for messages.
    pub report: String,
}

impl Validation {
    fn read(succeeded: bool, report: &str) -> Validation {
        let mut passed = Vec::new();
        let mut unknown = Vec::new();
        for line in report.lines() {
            // INFO FILE passed for resource kind/name against version V
            if let Some(rest) = line.split_once(" passed for resource ").map(|(_, r)| r) {
                if let Some((resource, _)) = rest.split_once(" against version ") {
                    passed.push(resource.to_string());
                }
            }
            // WARN FILE Couldn't find schema for kind K with api version A for ...
            if let Some(rest) = line
                .split_once("Couldn't find schema for kind ")
                .map(|(_, r)| r)
            {
                let mut words = rest.split_whitespace();
                let kind = words.next().unwrap_or_default();
                let api = words.nth(3).unwrap_or_default();
                unknown.push(format!("{kind} {api}"));
            }
        }
        Validation {
            succeeded,
            passed,
            unknown,
            report: report.to_string(),
        }
    }
}

/// The `kubernetes-validate` version string.
pub fn validate_version(tools: &Tools) -> String {
    let mut command = Command::new(&tools.validate);
    command.arg("--version");
    run(command)
        .expect("kubernetes-validate --version")
        .trim()
        .to_string()
}

/// Every document of a multi-document YAML stream, empty ones left out.
/// Helm separates them with `---` lines; inside a document such a line
/// could only be part of a block scalar, which helm indents.
pub fn documents(yaml: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in yaml.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let doc: Value = serde_yaml::from_str(&current)
                .unwrap_or_else(|e| panic!("helm rendered bad YAML ({e}):\n{current}"));
            if !doc.is_null() {
                docs.push(doc);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}

/// The one document of `kind` named `name`; panics naming what is there.
pub fn find_doc<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", kinds(docs)))
}

/// `Kind/name` (namespace) of each document.
pub fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{} ({})",
                str_of(&d["kind"]),
                str_of(&d["metadata"]["name"]),
                str_of(&d["metadata"]["namespace"])
            )
        })
        .collect()
}

/// A YAML scalar as text ("" when absent).
pub fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}
