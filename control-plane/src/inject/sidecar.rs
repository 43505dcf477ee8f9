//! What a meshed pod gets: the `remora-proxy` container, in transparent
//! mode the `remora-init` container before it and the app's HTTP probes
//! pointed at the proxy, the volumes they mount and the scrape
//! annotations, decided from the inject settings and the pod's own
//! `remora.io/*` annotations, as a list of edits.

use remora_api::probe::ProbeTarget;
use serde_yaml::{Mapping, Value};

use super::edit::{Edit, Edits};
use super::text::Step;
use super::{Settings, SidecarMode};

/// The name of the sidecar container, in `initContainers` (native) or
/// `containers` (classic).
pub const CONTAINER: &str = "remora-proxy";
/// The name of the init container that installs transparent mode's
/// iptables rules (`remora-proxy init`): the first of `initContainers`.
pub const INIT_CONTAINER: &str = "remora-init";
pub const TOKEN_VOLUME: &str = "remora-token";
pub const TRUST_ANCHORS_VOLUME: &str = "remora-trust-anchors";
/// An empty directory at `/run` for the init container, whose root
/// filesystem is read-only: iptables-legacy takes its lock in
/// `/run/xtables.lock`.
pub const XTABLES_LOCK_VOLUME: &str = "remora-xtables-lock";
pub const TOKEN_DIR: &str = "/var/run/secrets/remora.io";
pub const TRUST_ANCHORS_DIR: &str = "/var/run/remora.io/trust-anchors";
const XTABLES_LOCK_DIR: &str = "/run";
/// The proxy's uid: not root, not the app's usual 1000 or 65532.
pub const PROXY_UID: i64 = remora_api::PROXY_UID as i64;
pub const INBOUND_PORT: u16 = 4143;
pub const ADMIN_PORT: u16 = 4191;
const OUTBOUND_PORT: u16 = 4140;
/// Where the app listens when no annotation says and no container
/// declares a port: the proxy's own default.
const DEFAULT_APP_PORT: u16 = 8080;
/// A projected token lives an hour; the kubelet renews it at 80%.
const TOKEN_LIFETIME_SECONDS: i64 = 3600;

pub const DEFAULT_CPU_REQUEST: &str = "10m";
pub const DEFAULT_MEMORY_REQUEST: &str = "20Mi";
pub const DEFAULT_MEMORY_LIMIT: &str = "256Mi";
/// The init container runs iptables a few dozen times and exits.
pub const INIT_CPU_REQUEST: &str = "10m";
pub const INIT_MEMORY_REQUEST: &str = "10Mi";
pub const INIT_MEMORY_LIMIT: &str = "32Mi";

/// The kubelet's probes of a container.
const PROBES: [&str; 3] = ["livenessProbe", "readinessProbe", "startupProbe"];
/// Where a probe pointed at the proxy's admin port names its target
/// (`remora_api::probe::ProbeTarget`): the proxy's `/app-probe/`
/// (`proxy/src/app_probes.rs`).
pub const APP_PROBE_PREFIX: &str = "/app-probe/";

/// The annotations that steer injection, on the pod template (or on the
/// workload itself; the pod template's win).
pub mod annotation {
    pub const INJECT: &str = "remora.io/inject";
    pub const SIDECAR: &str = "remora.io/sidecar";
    pub const SERVICE: &str = "remora.io/service";
    pub const APP_PORT: &str = "remora.io/app-port";
    pub const LOG_LEVEL: &str = "remora.io/proxy-log-level";
    pub const CPU_REQUEST: &str = "remora.io/proxy-cpu-request";
    pub const CPU_LIMIT: &str = "remora.io/proxy-cpu-limit";
    pub const MEMORY_REQUEST: &str = "remora.io/proxy-memory-request";
    pub const MEMORY_LIMIT: &str = "remora.io/proxy-memory-limit";
    pub const TOKEN_SECRET: &str = "remora.io/token-secret";
    pub const TRANSPARENT: &str = "remora.io/transparent";
    pub const SKIP_INBOUND_PORTS: &str = "remora.io/skip-inbound-ports";
    pub const SKIP_OUTBOUND_PORTS: &str = "remora.io/skip-outbound-ports";
}

/// A workload found in a document: where its pod template is.
pub struct Workload {
    pub kind: String,
    pub name: String,
    /// The workload's own mapping.
    pub at: Vec<Step>,
    /// The pod template (a mapping with `metadata` and `spec`); for a Pod,
    /// the Pod itself.
    pub pod: Vec<Step>,
}

/// What to do with one workload.
pub enum Plan {
    Skip(String),
    Edit(Vec<Edit>),
}

/// The kinds that run pods, and where each keeps its pod template.
fn pod_template(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// The workloads of a document: itself, or the items of a `List`.
pub fn workloads(document: &Value) -> Vec<Workload> {
    let mut found = Vec::new();
    let mut visit = |value: &Value, at: Vec<Step>| {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(template) = pod_template(kind) {
            let mut pod = at.clone();
            pod.extend(template.iter().map(|k| Step::Key(k.to_string())));
            found.push(Workload {
                kind: kind.to_string(),
                name: text(value, &["metadata", "name"]).unwrap_or_default(),
                at,
                pod,
            });
        }
    };
    if document.get("kind").and_then(Value::as_str) == Some("List") {
        if let Some(items) = document.get("items").and_then(Value::as_sequence) {
            for (i, item) in items.iter().enumerate() {
                visit(item, vec![Step::Key("items".into()), Step::Index(i)]);
            }
        }
    } else {
        visit(document, Vec::new());
    }
    found
}

/// The edits that mesh `workload` (or why it is left alone), given the
/// document as it is now. An `Err` names the annotation or field at fault.
pub fn plan(document: &Value, workload: &Workload, settings: &Settings) -> Result<Plan, String> {
    let own = super::edit::get(document, &workload.at).unwrap_or(&Value::Null);
    let pod = super::edit::get(document, &workload.pod).unwrap_or(&Value::Null);
    let overrides = Overrides::read(own, pod)?;
    if overrides.disabled {
        return Ok(Plan::Skip(format!("{}: disabled", annotation::INJECT)));
    }
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Plan::Skip(
            "hostNetwork: the pod shares its node's network, where a sidecar cannot stand in front of it".into(),
        ));
    }
    let mode = overrides.mode.unwrap_or(settings.sidecar);
    let service = match overrides.service.clone() {
        Some(s) => s,
        None => default_service(own, pod)?,
    };
    if !remora_api::load::is_valid_service_name(&service) {
        return Err(format!(
            "{service:?} is not a valid service name (lowercase letters, digits and '-', at most 63); set {}",
            annotation::SERVICE
        ));
    }
    let app_port = match overrides.app_port {
        Some(port) => port,
        None => first_container_port(spec)?.unwrap_or(DEFAULT_APP_PORT),
    };
    if [OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT].contains(&app_port) {
        return Err(format!(
            "the app's port {app_port} is one of the proxy's own ({OUTBOUND_PORT}, {INBOUND_PORT}, {ADMIN_PORT}); set {}",
            annotation::APP_PORT
        ));
    }
    let transparent = overrides.transparent.unwrap_or(settings.transparent);

    // Each edit is made on the pod as those before it left it.
    let mut edits = Edits::new(pod);
    let spec_at = [Step::Key("spec".into())];
    let app_probes = app_probes(&mut edits, transparent, app_port)?;
    let sidecar = container(
        settings,
        &overrides,
        mode,
        &service,
        app_port,
        &app_probes,
        pod,
    );
    // Native: [remora-init, remora-proxy, the pod's own init containers];
    // classic: remora-init first among init containers, remora-proxy
    // first among containers. Switching modes moves only remora-proxy.
    if transparent {
        let init = init_container(settings, &overrides, app_port);
        ensure_item(&mut edits, &spec_at, "initContainers", init, At::First)?;
    } else {
        remove_named(&mut edits, &spec_at, "initContainers", INIT_CONTAINER);
    }
    let (home, other, at) = match mode {
        SidecarMode::Native => ("initContainers", "containers", At::After(INIT_CONTAINER)),
        SidecarMode::Classic => ("containers", "initContainers", At::First),
    };
    remove_named(&mut edits, &spec_at, other, CONTAINER);
    ensure_item(&mut edits, &spec_at, home, sidecar, at)?;
    let mut volumes = Vec::new();
    if settings.identity() {
        volumes.extend(identity_volumes(
            settings,
            overrides.token_secret.as_deref(),
        ));
    }
    if transparent {
        volumes.push(map([
            ("name", XTABLES_LOCK_VOLUME.into()),
            ("emptyDir", Value::Mapping(Mapping::new())),
        ]));
    } else {
        remove_named(&mut edits, &spec_at, "volumes", XTABLES_LOCK_VOLUME);
    }
    for volume in volumes {
        ensure_item(&mut edits, &spec_at, "volumes", volume, At::Last)?;
    }
    annotate(&mut edits);
    Ok(Plan::Edit(edits.placed_at(&workload.pod)))
}

/// The `remora.io/*` annotations of a workload, checked.
#[derive(Default)]
struct Overrides {
    disabled: bool,
    mode: Option<SidecarMode>,
    service: Option<String>,
    app_port: Option<u16>,
    log_level: Option<String>,
    cpu_request: Option<String>,
    cpu_limit: Option<String>,
    memory_request: Option<String>,
    memory_limit: Option<String>,
    token_secret: Option<String>,
    transparent: Option<bool>,
    /// Comma-separated, as `remora-proxy init` takes them.
    skip_inbound_ports: Option<String>,
    skip_outbound_ports: Option<String>,
}

impl Overrides {
    fn read(own: &Value, pod: &Value) -> Result<Overrides, String> {
        let find = |key: &str| -> Option<String> {
            [pod, own].iter().find_map(|v| {
                let value = v.get("metadata")?.get("annotations")?.get(key)?;
                Some(match value {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).ok()?.trim().to_string(),
                })
            })
        };
        let bad = |key: &str, value: &str, expected: &str| {
            format!("annotation {key}: {value:?} is not {expected}")
        };
        let disabled = match find(annotation::INJECT).as_deref() {
            None | Some("enabled") | Some("true") => false,
            Some("disabled") | Some("false") => true,
            Some(other) => return Err(bad(annotation::INJECT, other, "enabled or disabled")),
        };
        let transparent = match find(annotation::TRANSPARENT).as_deref() {
            None => None,
            Some("enabled") | Some("true") => Some(true),
            Some("disabled") | Some("false") => Some(false),
            Some(other) => return Err(bad(annotation::TRANSPARENT, other, "enabled or disabled")),
        };
        let ports = |key: &str| match find(key) {
            None => Ok(None),
            Some(list) => port_list(&list)
                .map(Some)
                .ok_or_else(|| bad(key, &list, "comma-separated port numbers (22,9100)")),
        };
        let mode = match find(annotation::SIDECAR).as_deref() {
            None => None,
            Some("native") => Some(SidecarMode::Native),
            Some("classic") => Some(SidecarMode::Classic),
            Some(other) => return Err(bad(annotation::SIDECAR, other, "native or classic")),
        };
        let app_port = match find(annotation::APP_PORT) {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port > 0 => Some(port),
                _ => return Err(bad(annotation::APP_PORT, &p, "a port number")),
            },
        };
        let quantity = |key: &str| match find(key) {
            Some(q) if !is_quantity(&q) => {
                Err(bad(key, &q, "a Kubernetes quantity (100m, 64Mi, 1)"))
            }
            q => Ok(q),
        };
        let log_level = match find(annotation::LOG_LEVEL) {
            Some(level) => {
                remora_server::logs::check_directives(&level)
                    .map_err(|e| format!("annotation {}: {e}", annotation::LOG_LEVEL))?;
                Some(level)
            }
            None => None,
        };
        let token_secret = match find(annotation::TOKEN_SECRET) {
            Some(name) if !remora_api::labels::is_dns_subdomain(&name) => {
                return Err(bad(annotation::TOKEN_SECRET, &name, "a Secret's name"))
            }
            name => name,
        };
        Ok(Overrides {
            token_secret,
            disabled,
            mode,
            service: find(annotation::SERVICE),
            app_port,
            log_level,
            cpu_request: quantity(annotation::CPU_REQUEST)?,
            cpu_limit: quantity(annotation::CPU_LIMIT)?,
            memory_request: quantity(annotation::MEMORY_REQUEST)?,
            memory_limit: quantity(annotation::MEMORY_LIMIT)?,
            transparent,
            skip_inbound_ports: ports(annotation::SKIP_INBOUND_PORTS)?,
            skip_outbound_ports: ports(annotation::SKIP_OUTBOUND_PORTS)?,
        })
    }
}

/// `22, 9100` as `22,9100`; `None` unless every item is a port number.
fn port_list(list: &str) -> Option<String> {
    let ports = list
        .split(',')
        .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0))
        .collect::<Option<Vec<u16>>>()?;
    Some(
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// A Kubernetes resource quantity: a decimal number and an optional
/// suffix (`100m`, `0.5`, `64Mi`, `1G`, `1e3`).
fn is_quantity(q: &str) -> bool {
    let number_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
        !exp.is_empty()
            && exp
                .trim_start_matches(['+', '-'])
                .bytes()
                .all(|b| b.is_ascii_digit())
    });
    number_ok && suffix_ok
}

/// The mesh service a workload belongs to when no annotation names it:
/// its `app.kubernetes.io/name` or `app` label, else its own name.
fn default_service(own: &Value, pod: &Value) -> Result<String, String> {
    ["app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|label| text(pod, &["metadata", "labels", label]))
        .or_else(|| text(own, &["metadata", "name"]))
        .ok_or_else(|| {
            format!(
                "no service name: no app.kubernetes.io/name or app label and no metadata.name; set {}",
                annotation::SERVICE
            )
        })
}

/// The first `containerPort` of the app's containers.
fn first_container_port(spec: &Value) -> Result<Option<u16>, String> {
    let containers = spec.get("containers").and_then(Value::as_sequence);
    let ports = containers
        .into_iter()
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) != Some(CONTAINER))
        .flat_map(|c| {
            c.get("ports")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
        });
    for port in ports {
        if let Some(number) = port.get("containerPort") {
            return match number.as_u64().and_then(|n| u16::try_from(n).ok()) {
                Some(p) if p > 0 => Ok(Some(p)),
                _ => Err(format!("containerPort {number:?} is not a port number")),
            };
        }
    }
    Ok(None)
}

fn container(
    settings: &Settings,
    overrides: &Overrides,
    mode: SidecarMode,
    service: &str,
    app_port: u16,
    app_probes: &[String],
    pod: &Value,
) -> Value {
    let mut env = vec![
        from_field("POD_IP", "status.podIP"),
        from_field("POD_NAMESPACE", "metadata.namespace"),
        from_field("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        from_field("REMORA_INSTANCE", "metadata.name"),
        env_value("REMORA_SERVICE", service),
        env_value("REMORA_APP", &format!("127.0.0.1:{app_port}")),
    ];
    if !app_probes.is_empty() {
        env.push(env_value("REMORA_APP_PROBES", &app_probes.join(",")));
    }
    env.push(env_value(
        "REMORA_CONTROL_URL",
        &settings.proxy_control_url(),
    ));
    if settings.identity() {
        env.push(env_value(
            "REMORA_TOKEN_FILE",
            &format!("{TOKEN_DIR}/token"),
        ));
        env.push(env_value(
            "REMORA_TRUST_ANCHORS",
            &format!("{TRUST_ANCHORS_DIR}/ca.crt"),
        ));
    }
    // Routes split traffic by labels; `version` is the one workloads
    // already carry for that.
    if let Some(version) = text(pod, &["metadata", "labels", "version"]) {
        env.push(env_value("REMORA_LABEL", &format!("version={version}")));
    }
    let log_level = overrides
        .log_level
        .as_deref()
        .unwrap_or(&settings.proxy_log_level);
    env.push(env_value("REMORA_LOG_LEVEL", log_level));

    let mut c = Mapping::new();
    c.insert("name".into(), CONTAINER.into());
    c.insert("image".into(), settings.proxy_image.as_str().into());
    c.insert("imagePullPolicy".into(), "IfNotPresent".into());
    if mode == SidecarMode::Native {
        // A native sidecar: starts before the app, ends after it, and
        // does not keep a Job from completing.
        c.insert("restartPolicy".into(), "Always".into());
    }
    c.insert("env".into(), Value::Sequence(env));
    c.insert(
        "ports".into(),
        Value::Sequence(vec![
            port("remora-inbound", INBOUND_PORT),
            port("remora-admin", ADMIN_PORT),
        ]),
    );
    if mode == SidecarMode::Native {
        // The app's containers start once this has passed.
        let mut startup = probe("/ready");
        startup.insert("periodSeconds".into(), 1.into());
        startup.insert("failureThreshold".into(), 120.into());
        c.insert("startupProbe".into(), startup.into());
    } else {
        // The kubelet starts the next container only when this returns,
        // so the app's first calls find the proxy ready.
        c.insert(
            "lifecycle".into(),
            map([(
                "postStart",
                map([(
                    "exec",
                    map([(
                        "command",
                        Value::Sequence(vec![
                            "/usr/local/bin/remora-proxy".into(),
                            "wait-ready".into(),
                        ]),
                    )]),
                )]),
            )]),
        );
    }
    c.insert("readinessProbe".into(), probe("/ready").into());
    c.insert("livenessProbe".into(), probe("/live").into());
    let cpu_request = overrides
        .cpu_request
        .as_deref()
        .unwrap_or(DEFAULT_CPU_REQUEST);
    let memory_request = overrides
        .memory_request
        .as_deref()
        .unwrap_or(DEFAULT_MEMORY_REQUEST);
    let memory_limit = overrides
        .memory_limit
        .as_deref()
        .unwrap_or(DEFAULT_MEMORY_LIMIT);
    let mut limits = Mapping::new();
    if let Some(cpu) = &overrides.cpu_limit {
        limits.insert("cpu".into(), cpu.as_str().into());
    }
    limits.insert("memory".into(), memory_limit.into());
    c.insert(
        "resources".into(),
        map([
            (
                "requests",
                map([
                    ("cpu", cpu_request.into()),
                    ("memory", memory_request.into()),
                ]),
            ),
            ("limits", limits.into()),
        ]),
    );
    c.insert(
        "securityContext".into(),
        map([
            ("runAsUser", PROXY_UID.into()),
            ("runAsGroup", PROXY_UID.into()),
            ("runAsNonRoot", true.into()),
            ("readOnlyRootFilesystem", true.into()),
            ("allowPrivilegeEscalation", false.into()),
            (
                "capabilities",
                map([("drop", Value::Sequence(vec!["ALL".into()]))]),
            ),
            ("seccompProfile", map([("type", "RuntimeDefault".into())])),
        ]),
    );
    if settings.identity() {
        c.insert(
            "volumeMounts".into(),
            Value::Sequence(vec![
                map([
                    ("name", TOKEN_VOLUME.into()),
                    ("mountPath", TOKEN_DIR.into()),
                    ("readOnly", true.into()),
                ]),
                map([
                    ("name", TRUST_ANCHORS_VOLUME.into()),
                    ("mountPath", TRUST_ANCHORS_DIR.into()),
                    ("readOnly", true.into()),
                ]),
            ]),
        );
    }
    c.into()
}

/// The token that proves the pod's identity to the control plane (its
/// service account's, projected for the control plane's audience; or the
/// key `token` of the Secret a `remora.io/token-secret` annotation names),
/// and the trust anchors that prove the control plane to the proxy.
fn identity_volumes(settings: &Settings, token_secret: Option<&str>) -> Vec<Value> {
    let token = match token_secret {
        Some(secret) => map([
            ("name", TOKEN_VOLUME.into()),
            (
                "secret",
                map([
                    ("secretName", secret.into()),
                    (
                        "items",
                        Value::Sequence(vec![map([
                            ("key", "token".into()),
                            ("path", "token".into()),
                        ])]),
                    ),
                ]),
            ),
        ]),
        None => {
            let projected = map([(
                "serviceAccountToken",
                map([
                    ("audience", settings.token_audience.as_str().into()),
                    ("expirationSeconds", TOKEN_LIFETIME_SECONDS.into()),
                    ("path", "token".into()),
                ]),
            )]);
            map([
                ("name", TOKEN_VOLUME.into()),
                (
                    "projected",
                    map([("sources", Value::Sequence(vec![projected]))]),
                ),
            ])
        }
    };
    let trust_anchors = map([
        ("name", TRUST_ANCHORS_VOLUME.into()),
        (
            "configMap",
            map([("name", settings.trust_anchors_configmap.as_str().into())]),
        ),
    ]);
    vec![token, trust_anchors]
}

/// `remora-proxy init` as the pod's first init container, from the init
/// image (the proxy's has no iptables): as root with only the capabilities
/// iptables needs. Inbound, only the app's port is redirected: the sidecar
/// hands whatever it takes to that port, so the pod's other ports are left
/// to be reached as without a mesh. The ports the annotations skip are in
/// its environment too.
fn init_container(settings: &Settings, overrides: &Overrides, app_port: u16) -> Value {
    let mut c = Mapping::new();
    c.insert("name".into(), INIT_CONTAINER.into());
    c.insert("image".into(), settings.init_image.as_str().into());
    c.insert("imagePullPolicy".into(), "IfNotPresent".into());
    c.insert("args".into(), Value::Sequence(vec!["init".into()]));
    let app_port = Some(app_port.to_string());
    let env: Vec<Value> = [
        ("REMORA_INBOUND_PORTS", &app_port),
        ("REMORA_SKIP_INBOUND_PORTS", &overrides.skip_inbound_ports),
        ("REMORA_SKIP_OUTBOUND_PORTS", &overrides.skip_outbound_ports),
    ]
    .into_iter()
    .filter_map(|(name, ports)| Some(env_value(name, ports.as_deref()?)))
    .collect();
    c.insert("env".into(), Value::Sequence(env));
    c.insert(
        "resources".into(),
        map([
            (
                "requests",
                map([
                    ("cpu", INIT_CPU_REQUEST.into()),
                    ("memory", INIT_MEMORY_REQUEST.into()),
                ]),
            ),
            ("limits", map([("memory", INIT_MEMORY_LIMIT.into())])),
        ]),
    );
    c.insert(
        "securityContext".into(),
        map([
            // iptables needs root in the pod's network namespace, and
            // NET_ADMIN and NET_RAW; nothing else.
            ("runAsUser", 0.into()),
            ("runAsNonRoot", false.into()),
            ("allowPrivilegeEscalation", false.into()),
            ("readOnlyRootFilesystem", true.into()),
            (
                "capabilities",
                map([
                    (
                        "add",
                        Value::Sequence(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                    ),
                    ("drop", Value::Sequence(vec!["ALL".into()])),
                ]),
            ),
            ("seccompProfile", map([("type", "RuntimeDefault".into())])),
        ]),
    );
    c.insert(
        "volumeMounts".into(),
        Value::Sequence(vec![map([
            ("name", XTABLES_LOCK_VOLUME.into()),
            ("mountPath", XTABLES_LOCK_DIR.into()),
        ])]),
    );
    c.into()
}

/// What a kubelet's probe of an app's container asks for.
enum Probed {
    /// The app's port, by `handler` (`httpGet`, `tcpSocket`, `grpc`):
    /// the kubelet would reach it through the inbound listener.
    App {
        handler: &'static str,
        target: ProbeTarget,
    },
    /// Already pointed at the proxy's admin port, for the app's `target`.
    Forwarded(ProbeTarget),
    /// `exec`, another host, or the admin port itself: left as it is.
    Other,
}

/// The targets the proxy forwards from its admin port
/// (`REMORA_APP_PROBES`): those of the app's probes already pointed there,
/// and, when `rewrite` (transparent mode), those of its probes of
/// `app_port`, which are pointed there now. The kubelet probes from
/// outside the pod, and iptables sends what it sends to the app's port to
/// the inbound listener, which takes no plaintext, takes a TLS handshake
/// for mutual TLS and accepts a connection whether the app is up or not;
/// the admin port is never redirected. Each `httpGet`, `tcpSocket` and
/// `grpc` probe of the app's port becomes an `httpGet` of the admin port's
/// `/app-probe/TARGET`; probes of the pod's other ports, which are not
/// redirected, and `exec` probes are left as they are.
fn app_probes(edits: &mut Edits, rewrite: bool, app_port: u16) -> Result<Vec<String>, String> {
    let containers_at = [Step::Key("spec".into()), Step::Key("containers".into())];
    let containers = edits
        .get(&containers_at)
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    let mut targets: Vec<String> = Vec::new();
    for (index, container) in containers.iter().enumerate() {
        let name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if name == CONTAINER {
            continue;
        }
        for kind in PROBES {
            let Some(probe) = container.get(kind) else {
                continue;
            };
            // Without transparent mode, only a probe already pointed at
            // the proxy matters; one the kubelet sends to the app as it
            // stands is the app's business.
            let probed = match read_probe(container, probe) {
                Ok(probed) => probed,
                Err(e) if rewrite => return Err(format!("container {name}: {kind}: {e}")),
                Err(_) => continue,
            };
            let target = match probed {
                Probed::Other => continue,
                Probed::Forwarded(target) => target,
                Probed::App { target, .. } if !rewrite || target.port() != app_port => continue,
                Probed::App { handler, target } => {
                    let text = target.to_string();
                    if text.contains(',') {
                        return Err(format!(
                            "container {name}: {kind}: {text:?} has a comma, which the proxy's list of probes (REMORA_APP_PROBES) cannot hold; set {}: disabled, or probe another path",
                            annotation::TRANSPARENT
                        ));
                    }
                    let mut at = containers_at.to_vec();
                    at.extend([Step::Index(index), Step::Key(kind.into())]);
                    let path = format!("{APP_PROBE_PREFIX}{target}");
                    let tls = matches!(target, ProbeTarget::Http { tls: true, .. });
                    if handler == "httpGet" {
                        at.push(Step::Key("httpGet".into()));
                        let mut entries = Mapping::new();
                        entries.insert("path".into(), path.into());
                        entries.insert("port".into(), ADMIN_PORT.into());
                        if tls {
                            entries.insert("scheme".into(), "HTTP".into());
                        }
                        edits.push(Edit::SetEntries { map: at, entries });
                    } else {
                        // Added before the handler goes: a probe is never
                        // an empty mapping, which text cannot add to.
                        edits.push(Edit::AddEntry {
                            map: at.clone(),
                            key: "httpGet".into(),
                            value: map([("port", ADMIN_PORT.into()), ("path", path.into())]),
                        });
                        edits.push(Edit::RemoveEntry {
                            map: at,
                            key: handler.into(),
                        });
                    }
                    target
                }
            };
            let target = target.to_string();
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
    }
    Ok(targets)
}

/// Reads a probe of `container`, as the kubelet would: a named port is
/// one of the container's `ports`, an HTTP probe's missing path is `/`.
fn read_probe(container: &Value, probe: &Value) -> Result<Probed, String> {
    if let Some(get) = probe.get("httpGet") {
        return http_probe(container, get);
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        let host = tcp.get("host").and_then(Value::as_str).unwrap_or_default();
        if !host.is_empty() {
            return Ok(Probed::Other);
        }
        let port = probe_port(container, tcp.get("port"), "tcpSocket")?;
        return Ok(Probed::App {
            handler: "tcpSocket",
            target: ProbeTarget::Tcp { port },
        });
    }
    if let Some(grpc) = probe.get("grpc") {
        // The kubelet's gRPC probe takes a port number only.
        let port = probe_port(container, grpc.get("port"), "grpc")?;
        let service = match grpc.get("service") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(service)) => service.clone(),
            Some(other) => return Err(format!("grpc service {other:?} is not a string")),
        };
        return Ok(Probed::App {
            handler: "grpc",
            target: ProbeTarget::Grpc { port, service },
        });
    }
    Ok(Probed::Other)
}

/// An `httpGet` probe: of the app, or already of the proxy's admin port.
fn http_probe(container: &Value, get: &Value) -> Result<Probed, String> {
    let scheme = get.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
    let host = get.get("host").and_then(Value::as_str).unwrap_or_default();
    if !host.is_empty() || !matches!(scheme, "HTTP" | "HTTPS") {
        return Ok(Probed::Other);
    }
    let port = probe_port(container, get.get("port"), "httpGet")?;
    let path = match get.get("path") {
        None | Some(Value::Null) => "/".to_string(),
        Some(Value::String(path)) if path.starts_with('/') => path.clone(),
        // The kubelet asks for `/healthz` when told `healthz`.
        Some(Value::String(path)) => format!("/{path}"),
        Some(other) => return Err(format!("path {other:?} is not a string")),
    };
    if port == ADMIN_PORT {
        return Ok(match path.strip_prefix(APP_PROBE_PREFIX) {
            Some(target) => match target.parse::<ProbeTarget>() {
                Ok(target) => Probed::Forwarded(target),
                Err(_) => {
                    return Err(format!(
                        "path {path:?} on the proxy's admin port is not {APP_PROBE_PREFIX}TARGET (PORT/PATH, https:PORT/PATH, tcp:PORT or grpc:PORT[/SERVICE])"
                    ))
                }
            },
            None => Probed::Other,
        });
    }
    Ok(Probed::App {
        handler: "httpGet",
        target: ProbeTarget::Http {
            port,
            path,
            tls: scheme == "HTTPS",
        },
    })
}

/// A probe's `port`, as the kubelet reads it: a number, or the name of one
/// of the container's ports.
fn probe_port(container: &Value, port: Option<&Value>, handler: &str) -> Result<u16, String> {
    match port {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {n} is not a port number")),
        Some(Value::String(name)) => named_port(container, name)
            .or_else(|| name.parse::<u16>().ok().filter(|p| *p > 0))
            .ok_or_else(|| format!("port {name:?} is the name of none of the container's ports")),
        _ => Err(format!("{handler} has no port")),
    }
}

/// The `containerPort` of the container's port named `name`.
fn named_port(container: &Value, name: &str) -> Option<u16> {
    container
        .get("ports")?
        .as_sequence()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
        .get("containerPort")?
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
}

/// Prometheus' scrape annotations, unless the pod has its own (which point
/// at the app's metrics; a PodMonitor then scrapes the proxy by port name).
fn annotate(edits: &mut Edits) {
    let wanted = [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", ADMIN_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ];
    let metadata = edits.get(&[]).and_then(|pod| pod.get("metadata")).cloned();
    let annotations = metadata.as_ref().and_then(|m| m.get("annotations"));
    if annotations
        .and_then(|a| a.get("prometheus.io/scrape"))
        .is_some()
    {
        return;
    }
    let wanted: Mapping = wanted
        .into_iter()
        .filter(|(k, _)| annotations.and_then(|a| a.get(*k)).is_none())
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let metadata_at = vec![Step::Key("metadata".into())];
    match (&metadata, annotations) {
        (None, _) => edits.push(Edit::AddEntry {
            map: Vec::new(),
            key: "metadata".into(),
            value: map([("annotations", wanted.into())]),
        }),
        (Some(_), None) => edits.push(Edit::AddEntry {
            map: metadata_at,
            key: "annotations".into(),
            value: wanted.into(),
        }),
        (Some(_), Some(Value::Null)) => {
            edits.push(Edit::RemoveEntry {
                map: metadata_at.clone(),
                key: "annotations".into(),
            });
            edits.push(Edit::AddEntry {
                map: metadata_at,
                key: "annotations".into(),
                value: wanted.into(),
            });
        }
        (Some(_), Some(_)) => {
            let annotations_at = child(&metadata_at, "annotations");
            for (key, value) in wanted {
                edits.push(Edit::AddEntry {
                    map: annotations_at.clone(),
                    key: key.as_str().unwrap_or_default().to_string(),
                    value,
                });
            }
        }
    }
}

/// Where an item missing from its list goes.
enum At {
    First,
    Last,
    /// Just after the item of that name; first if there is none.
    After(&'static str),
}

/// Makes the list `key` of the spec at `spec_at` hold `item` (matched by
/// name): replaced where it stands if different, else put where `at` says.
fn ensure_item(
    edits: &mut Edits,
    spec_at: &[Step],
    key: &str,
    item: Value,
    at: At,
) -> Result<(), String> {
    let spec = edits.get(spec_at).unwrap_or(&Value::Null);
    let list = match spec.get(key) {
        None => None,
        Some(Value::Null) => {
            edits.push(Edit::RemoveEntry {
                map: spec_at.to_vec(),
                key: key.into(),
            });
            None
        }
        Some(Value::Sequence(list)) => Some(list),
        Some(_) => return Err(format!("spec.{key} is not a list")),
    };
    let Some(list) = list else {
        edits.push(Edit::AddEntry {
            map: spec_at.to_vec(),
            key: key.into(),
            value: Value::Sequence(vec![item]),
        });
        return Ok(());
    };
    let position = |name: &str| {
        list.iter()
            .position(|i| i.get("name") == Some(&name.into()))
    };
    let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
    let edit = match position(name) {
        Some(index) if list[index] == item => return Ok(()),
        Some(index) => Edit::ReplaceItem {
            seq: child(spec_at, key),
            index,
            item,
        },
        None => Edit::InsertItem {
            seq: child(spec_at, key),
            index: match at {
                At::First => 0,
                At::Last => list.len(),
                At::After(before) => position(before).map_or(0, |i| i + 1),
            },
            item,
        },
    };
    edits.push(edit);
    Ok(())
}

/// Takes the item `name` out of the list `key` of the spec at `spec_at`;
/// the list goes with it when it held nothing else.
fn remove_named(edits: &mut Edits, spec_at: &[Step], key: &str, name: &str) {
    let list = edits
        .get(spec_at)
        .and_then(|spec| spec.get(key))
        .and_then(Value::as_sequence);
    let Some(list) = list else {
        return;
    };
    let Some(index) = list
        .iter()
        .position(|i| i.get("name").and_then(Value::as_str) == Some(name))
    else {
        return;
    };
    let edit = match list.len() {
        1 => Edit::RemoveEntry {
            map: spec_at.to_vec(),
            key: key.into(),
        },
        _ => Edit::RemoveItem {
            seq: child(spec_at, key),
            index,
        },
    };
    edits.push(edit);
}

fn child(at: &[Step], key: &str) -> Vec<Step> {
    let mut path = at.to_vec();
    path.push(Step::Key(key.into()));
    path
}

fn text(value: &Value, path: &[&str]) -> Option<String> {
    let mut at = value;
    for key in path {
        at = at.get(key)?;
    }
    at.as_str().map(str::to_string)
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

fn env_value(name: &str, value: &str) -> Value {
    map([("name", name.into()), ("value", value.into())])
}

fn from_field(name: &str, field: &str) -> Value {
    map([
        ("name", name.into()),
        (
            "valueFrom",
            map([("fieldRef", map([("fieldPath", field.into())]))]),
        ),
    ])
}

fn port(name: &str, number: u16) -> Value {
    map([("name", name.into()), ("containerPort", number.into())])
}

fn probe(path: &str) -> Mapping {
    let mut probe = Mapping::new();
    probe.insert(
        "httpGet".into(),
        map([("path", path.into()), ("port", ADMIN_PORT.into())]),
    );
    probe
}

#[cfg(test)]
mod tests {
    use super::is_quantity;

    #[test]
    fn quantities_are_those_kubernetes_takes() {
        for q in ["100m", "0.5", "1", "64Mi", "1G", "1e3", "2E-1", ".5"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "m", "1.2.3", "64MB", "abc", "1e", "-", "."] {
            assert!(!is_quantity(q), "{q}");
        }
    }
}
