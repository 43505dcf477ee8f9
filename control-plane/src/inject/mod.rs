//! `remora-control inject`: Kubernetes YAML in, the same YAML out with the
//! sidecar (and, in transparent mode, the init container that redirects
//! the pod's traffic to it) added to every workload (docs/kubernetes.md).
//!
//! Each document is planned on its data ([`sidecar::plan`]) and edited as
//! text ([`edit`]), so that what inject does not change stays byte for
//! byte, comments included. The edited text is read back and compared with
//! the planned data; should they differ (a flow-style document, such as
//! `kubectl get -o json` gives), the document is written out in full from
//! the data instead, and inject says so. Planning is idempotent: a
//! workload that already has exactly the sidecar gets no edit, so running
//! inject twice gives what running it once gave.

mod edit;
pub mod sidecar;
mod stream;
mod text;

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_yaml::Value;

pub const DEFAULT_PROXY_IMAGE: &str = concat!(
    "ghcr.io/remora-mesh/remora-proxy:",
    env!("CARGO_PKG_VERSION")
);
/// The same proxy with iptables, as root (the Dockerfile's `init` target):
/// the sidecar's own image is distroless and has no iptables.
pub const DEFAULT_INIT_IMAGE: &str = concat!(
    "ghcr.io/remora-mesh/remora-init:",
    env!("CARGO_PKG_VERSION")
);
/// The chart's control plane, installed in the namespace `remora`.
pub const DEFAULT_CONTROL_URL: &str = "https://remora-control.remora.svc:8086";
pub const DEFAULT_TOKEN_AUDIENCE: &str = "remora-control";
pub const DEFAULT_TRUST_ANCHORS_CONFIGMAP: &str = "remora-trust-anchors";
pub const DEFAULT_PROXY_LOG_LEVEL: &str = "info";
pub const DEFAULT_TRANSPARENT: bool = true;

/// Where the sidecar goes in the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+):
    /// starts before the app's containers, stops after them, and lets a
    /// Job complete.
    Native,
    /// The first of the pod's containers, with a `postStart` hook that
    /// waits until the proxy is ready; for clusters older than 1.29. A Job
    /// must then call the proxy's `/shutdown` when its work is done.
    Classic,
}

/// The flags of `remora-control inject`.
#[derive(Clone, Debug, Args)]
pub struct Settings {
    /// The sidecar's image.
    #[arg(long, env = "REMORA_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,

    /// The image of the `remora-init` init container of transparent mode,
    /// which runs `remora-proxy init`: the same version of the proxy, with
    /// iptables.
    #[arg(long, env = "REMORA_INIT_IMAGE", default_value = DEFAULT_INIT_IMAGE)]
    pub init_image: String,

    /// The control plane's API, as the sidecars reach it. With `https://`
    /// the sidecars get identities: a projected service-account token and
    /// the trust anchors are mounted; with `http://` (a control plane run
    /// with --insecure) they are not.
    #[arg(long, env = "REMORA_CONTROL_URL", default_value = DEFAULT_CONTROL_URL)]
    pub control_url: http::Uri,

    /// The audience of the projected service-account token.
    #[arg(long, env = "REMORA_TOKEN_AUDIENCE", default_value = DEFAULT_TOKEN_AUDIENCE)]
    pub token_audience: String,

    /// The ConfigMap (key `ca.crt`) holding the mesh's trust anchors in
    /// each meshed namespace; the chart makes it.
    #[arg(long, env = "REMORA_TRUST_ANCHORS_CONFIGMAP", default_value = DEFAULT_TRUST_ANCHORS_CONFIGMAP)]
    pub trust_anchors_configmap: String,

    /// Where the sidecar goes, unless a pod's `remora.io/sidecar`
    /// annotation says otherwise.
    #[arg(long, env = "REMORA_SIDECAR", value_enum, default_value_t = SidecarMode::Native)]
    pub sidecar: SidecarMode,

    /// The proxy's log filter, unless a pod's `remora.io/proxy-log-level`
    /// annotation says otherwise.
    #[arg(long, env = "REMORA_PROXY_LOG_LEVEL", default_value = DEFAULT_PROXY_LOG_LEVEL)]
    pub proxy_log_level: String,

    /// Transparent mode, unless a pod's `remora.io/transparent` annotation
    /// says otherwise: an init container, `remora-init` (`remora-proxy
    /// init`), redirects the pod's TCP through the sidecar, so the app
    /// needs no proxy settings, and the app's HTTP probes are pointed at
    /// the proxy's admin port, which forwards them. `false`: neither.
    #[arg(long, env = "REMORA_TRANSPARENT", default_value_t = DEFAULT_TRANSPARENT, action = clap::ArgAction::Set)]
    pub transparent: bool,
}

impl Settings {
    /// Whether sidecars get identities (an `https://` control plane).
    pub fn identity(&self) -> bool {
        self.control_url.scheme_str() == Some("https")
    }

    /// The control plane's URL as the proxy takes it: scheme and authority.
    pub fn proxy_control_url(&self) -> String {
        let scheme = self.control_url.scheme_str().unwrap_or("http");
        match self.control_url.authority() {
            Some(authority) => format!("{scheme}://{authority}"),
            None => self.control_url.to_string(),
        }
    }
}

/// The stream with the sidecar added, and what inject has to say about it
/// (workloads left alone, documents written out in full).
#[derive(Debug)]
pub struct Injected {
    pub output: String,
    pub notes: Vec<String>,
}

/// A document inject cannot take, and where it is in the stream.
#[derive(Debug, PartialEq, Eq)]
pub struct InjectError {
    pub line: usize,
    pub document: usize,
    pub message: String,
}

impl std::fmt::Display for InjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: document {}: {}",
            self.line, self.document, self.message
        )
    }
}

/// Reads the stream on stdin and writes it meshed on stdout, notes on
/// stderr; a bad document writes nothing and exits 1.
pub fn run(settings: &Settings) -> ExitCode {
    if let Err(e) = remora_server::logs::check_directives(&settings.proxy_log_level) {
        eprintln!("remora-control inject: --proxy-log-level: {e}");
        return ExitCode::from(2);
    }
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("remora-control inject: reading stdin: {e}");
        return ExitCode::FAILURE;
    }
    match inject(&input, settings) {
        Ok(injected) => {
            for note in &injected.notes {
                eprintln!("remora-control inject: {note}");
            }
            match std::io::stdout().write_all(injected.output.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("remora-control inject: writing stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("remora-control inject: stdin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Adds the sidecar to every workload of `stream`.
pub fn inject(stream: &str, settings: &Settings) -> Result<Injected, InjectError> {
    let mut output = String::with_capacity(stream.len() * 2);
    let mut notes = Vec::new();
    let mut first_line = 1;
    for (i, document) in stream::documents(stream).into_iter().enumerate() {
        let number = i + 1;
        let meshed = inject_document(document, settings, number, first_line, &mut notes).map_err(
            |(line, message)| InjectError {
                line,
                document: number,
                message,
            },
        )?;
        output.push_str(&meshed);
        first_line += document.matches('\n').count();
    }
    Ok(Injected { output, notes })
}

/// One document, which starts at `first_line` of the stream, meshed; an
/// error gives its line in the stream.
fn inject_document(
    document: &str,
    settings: &Settings,
    number: usize,
    first_line: usize,
    notes: &mut Vec<String>,
) -> Result<String, (usize, String)> {
    let data: Value = serde_yaml::from_str(document).map_err(|_| {
        // Read again where it sits in the stream, for lines that are the
        // stream's.
        let placed = format!("{}{document}", "\n".repeat(first_line - 1));
        let e = serde_yaml::from_str::<Value>(&placed).expect_err("the same text fails again");
        let line = e.location().map_or(first_line, |l| l.line());
        (line, format!("not YAML: {e}"))
    })?;
    let mut planned = data.clone();
    // Edits work on whole lines: the last one ends too.
    let mut text = document.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let mut in_place = true;
    for workload in sidecar::workloads(&data) {
        let name = format!("{}/{}", workload.kind, workload.name);
        let plan = sidecar::plan(&planned, &workload, settings)
            .map_err(|e| (first_line, format!("{name}: {e}")))?;
        let edits = match plan {
            sidecar::Plan::Skip(why) => {
                notes.push(format!("document {number}: {name} left as it is: {why}"));
                continue;
            }
            sidecar::Plan::Edit(edits) => edits,
        };
        for edit in edits {
            edit.apply_to_value(&mut planned);
            if in_place {
                match edit.apply_to_text(&text) {
                    Some(edited) => text = edited,
                    None => in_place = false,
                }
            }
        }
    }
    if planned == data {
        return Ok(document.to_string());
    }
    if in_place && serde_yaml::from_str::<Value>(&text).ok().as_ref() == Some(&planned) {
        return Ok(text);
    }
    notes.push(format!(
        "document {number}: written out in full from its data (it is in flow style, or in a shape not edited in place): its comments and formatting are not kept"
    ));
    Ok(write_out(document, &planned))
}

/// `data` as a whole document: JSON if the document was JSON, else YAML,
/// after the document's own opening lines (`---`, comments).
fn write_out(document: &str, data: &Value) -> String {
    let body_at = document
        .split_inclusive('\n')
        .take_while(|line| {
            let line = line.trim();
            line.is_empty() || line.starts_with('#') || line.starts_with("---")
        })
        .map(str::len)
        .sum::<usize>();
    let (head, body) = document.split_at(body_at);
    let body = if body.trim_start().starts_with('{') {
        let mut json = serde_json::to_string_pretty(data).expect("YAML data has JSON's shape");
        json.push('\n');
        json
    } else {
        serde_yaml::to_string(data).expect("a Value always serializes")
    };
    format!("{head}{body}")
}

#[cfg(test)]
mod tests;
