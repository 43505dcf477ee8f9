//! The Helm chart `charts/remora`, checked with the tools its users run:
//! `helm lint` and `helm template` with default and non-default values;
//! every object it renders validated against Kubernetes' own schemas
//! (`kubernetes-validate --strict`) for the oldest Kubernetes it supports
//! and the newest the validator knows; wrong values refused by the values
//! schema, naming the key; the control plane's Deployment keeping its
//! promises, down to the real `remora-control` starting and turning ready
//! on the arguments and files the chart gives it; the mesh it carries
//! passing `remora-control check`; and the Grafana dashboard's queries
//! parsed by `promtool` and using only the metrics and labels that real
//! sidecars and a real control plane expose.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use remora_e2e::fake_kube::{Asked, FakeKube};
use remora_e2e::identity::{grant_tokens, token_file};
use remora_e2e::kubernetes::{self, chart_dir, documents, find_doc, kinds, str_of, Tools};
use remora_e2e::process::{binary, Running};
use remora_e2e::upstream::{dead_address, status, text};
use remora_e2e::{eventually, Client, ControlPlane, Proxy, Upstream};
use serde_yaml::Value;

/// The oldest Kubernetes the chart supports (native sidecars: Chart.yaml's
/// kubeVersion) and the newest that kubernetes-validate has schemas of.
const KUBE_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// Where the rendered Deployment mounts things, as docs/kubernetes.md says.
const NAMESPACE: &str = "remora";
const NAME: &str = "remora-control";

/// One way of installing the chart: a name and the arguments to helm.
struct ValueSet {
    name: &'static str,
    args: Vec<String>,
}

impl ValueSet {
    fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }
}

/// The CA files of one install, made as docs/kubernetes.md says.
struct Pems {
    /// `remora-certs init` output: ca.crt, ca.key, issuer.crt, issuer.key.
    remora: PathBuf,
    /// What cert-manager writes for a CA Certificate: tls.crt, tls.key
    /// (PKCS#8), ca.crt.
    cert_manager: PathBuf,
    /// tokens.yaml granting one identity.
    tokens: PathBuf,
    _dir: tempfile::TempDir,
}

fn pems() -> Pems {
    let dir = tempfile::tempdir().expect("a temp dir");
    let remora = dir.path().join("remora");
    let out = Command::new(binary("remora-certs"))
        .args(["init", "--trust-domain", "cluster.local", "--out"])
        .arg(&remora)
        .output()
        .expect("running remora-certs init");
    assert!(
        out.status.success(),
        "remora-certs init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert_manager = dir.path().join("cert-manager");
    cert_manager_like_issuer(&cert_manager);
    let tokens = PathBuf::from(grant_tokens(dir.path(), &[("orders", "orders-token")]));
    Pems {
        remora,
        cert_manager,
        tokens,
        _dir: dir,
    }
}

/// A root CA (ca.crt) and an intermediate CA signed by it (tls.crt, its
/// key tls.key in SEC1), as cert-manager writes a Certificate with
/// `isCA: true` and ECDSA P-256 (its default key encoding is SEC1), made
/// with openssl.
fn cert_manager_like_issuer(dir: &Path) {
    std::fs::create_dir_all(dir).expect("a dir");
    // Each command line is split at spaces: none of its words has one.
    let openssl = |line: &str| {
        let out = Command::new("openssl")
            .args(line.split_whitespace())
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n",
    )
    .expect("writing ext");
    let p256 = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(&format!(
        "req -x509 {p256} -keyout root.key -out ca.crt -subj /CN=root -days 30 \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    ));
    // A key written by `req -newkey` is PKCS#8.
    openssl(&format!(
        "req -new {p256} -keyout tls.key -out issuer.csr -subj /CN=remora-issuer"
    ));
    openssl(
        "x509 -req -in issuer.csr -CA ca.crt -CAkey root.key -CAcreateserial -out tls.crt \
         -days 20 -extfile ext",
    );
    // cert-manager's default encoding: `EC PRIVATE KEY`.
    openssl("ec -in tls.key -out tls.key");
    let key = std::fs::read_to_string(dir.join("tls.key")).expect("tls.key");
    assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
}

/// The chart's values files for its own tests.
fn ci_values(file: &str) -> String {
    chart_dir().join("ci").join(file).display().to_string()
}

/// Default values; identity off with many non-default values; the issuer
/// made by the chart from PEMs; the issuer from cert-manager's Secret.
fn value_sets(pems: &Pems) -> Vec<ValueSet> {
    let pem = |file: &str| pems.remora.join(file).display().to_string();
    vec![
        ValueSet {
            name: "default",
            args: vec![],
        },
        ValueSet {
            name: "insecure",
            args: vec!["-f".into(), ci_values("insecure-values.yaml")],
        },
        ValueSet {
            name: "issuer-created",
            args: vec![
                "--set".into(),
                "identity.issuer.create=true".into(),
                "--set-file".into(),
                format!("identity.issuer.certPEM={}", pem("issuer.crt")),
                "--set-file".into(),
                format!("identity.issuer.keyPEM={}", pem("issuer.key")),
                "--set-file".into(),
                format!("identity.trustAnchorsPEM={}", pem("ca.crt")),
                "--set".into(),
                "meshNamespaces={default,shop}".into(),
                "--set".into(),
                "identity.tokens.secretName=remora-tokens".into(),
            ],
        },
        ValueSet {
            name: "cert-manager",
            args: vec!["-f".into(), ci_values("cert-manager-values.yaml")],
        },
    ]
}

fn render(tools: &Tools, set: &ValueSet) -> String {
    tools
        .template(KUBE_VERSIONS[0], &set.args())
        .unwrap_or_else(|e| panic!("helm template with the {} values failed: {e}", set.name))
}

#[test]
fn helm_lint_passes_strict_with_every_value_set() {
    let Some(tools) = kubernetes::tools() else {
        return;
    };
    let pems = pems();
    for set in value_sets(&pems) {
        for strict in [false, true] {
            let out = tools.lint(strict, &set.args()).unwrap_or_else(|e| {
                panic!(
                    "helm lint (strict: {strict}) with the {} values: {e}",
                    set.name
                )
            });
            assert!(
                out.contains("1 chart(s) linted, 0 chart(s) failed"),
                "{}: {out}",
                set.name
            );
        }
    }
}

#[test]
fn every_rendered_object_is_valid_kubernetes() {
    let Some(tools) = kubernetes::tools() else {
        return;
    };
    eprintln!(
        "helm {}, kubernetes-validate {}",
        tools.helm_version(),
        kubernetes::validate_version(&tools)
    );
    let pems = pems();
    for set in value_sets(&pems) {
        for version in KUBE_VERSIONS {
            let rendered = tools
                .template(version, &set.args())
                .unwrap_or_else(|e| panic!("helm template ({}, {version}): {e}", set.name));
            let docs = documents(&rendered);
            let report = tools.validate(&rendered, version);
            assert!(
                report.succeeded,
                "{} values against Kubernetes {version}:\n{}",
                set.name, report.report
            );
            // The validator skips kinds it has no schema of: only the
            // Prometheus Operator's PodMonitor may be one, checked below.
            for doc in &docs {
                let (kind, name) = (str_of(&doc["kind"]), str_of(&doc["metadata"]["name"]));
                let resource = format!("{}/{name}", kind.to_lowercase());
                if kind == "PodMonitor" {
                    check_pod_monitor(doc);
                    continue;
                }
                assert!(
                    report.passed.contains(&resource),
                    "{resource} ({} values) was not validated against {version}:\n{}",
                    set.name,
                    report.report
                );
            }
            for unknown in &report.unknown {
                assert_eq!(
                    unknown, "PodMonitor monitoring.coreos.com/v1",
                    "not validated:\n{}",
                    report.report
                );
            }
            assert_eq!(
                report.passed.len() + report.unknown.len(),
                docs.len(),
                "{}: {:?}\n{}",
                set.name,
                kinds(&docs),
                report.report
            );
        }
    }
}

/// A PodMonitor as the Prometheus Operator's CRD (monitoring.coreos.com/v1)
/// defines it: only fields of its schema, of their types.
fn check_pod_monitor(doc: &Value) {
    let name = str_of(&doc["metadata"]["name"]);
    let keys = |v: &Value| -> Vec<String> {
        v.as_mapping()
            .map(|m| m.keys().map(str_of).collect())
            .unwrap_or_default()
    };
    let only = |v: &Value, allowed: &[&str], at: &str| {
        assert!(
            v.is_mapping(),
            "PodMonitor {name}: {at} is not a map: {v:?}"
        );
        for key in keys(v) {
            assert!(
                allowed.contains(&key.as_str()),
                "PodMonitor {name}: {at}.{key} is not a field of the CRD"
            );
        }
    };
    assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
    only(doc, &["apiVersion", "kind", "metadata", "spec"], "");
    only(
        &doc["metadata"],
        &["name", "namespace", "labels", "annotations"],
        "metadata",
    );
    let spec = &doc["spec"];
    only(
        spec,
        &[
            "selector",
            "namespaceSelector",
            "podMetricsEndpoints",
            "jobLabel",
            "podTargetLabels",
        ],
        "spec",
    );
    only(
        &spec["selector"],
        &["matchLabels", "matchExpressions"],
        "spec.selector",
    );
    let namespaces = &spec["namespaceSelector"];
    only(namespaces, &["any", "matchNames"], "spec.namespaceSelector");
    assert!(
        namespaces["any"].is_bool() || namespaces["matchNames"].is_sequence(),
        "PodMonitor {name}: namespaceSelector {namespaces:?}"
    );
    let endpoints = spec["podMetricsEndpoints"]
        .as_sequence()
        .unwrap_or_else(|| panic!("PodMonitor {name}: no podMetricsEndpoints"));
    assert!(!endpoints.is_empty());
    for e in endpoints {
        only(
            e,
            &["port", "path", "interval", "scrapeTimeout", "scheme"],
            "spec.podMetricsEndpoints[]",
        );
        assert!(e["port"].is_string(), "{e:?}");
        assert!(str_of(&e["path"]).starts_with('/'), "{e:?}");
        // The CRD's pattern for a duration: units from y to ms.
        let interval = str_of(&e["interval"]);
        assert!(
            !interval.is_empty()
                && interval
                    .trim_end_matches(|c: char| c.is_ascii_lowercase())
                    .chars()
                    .all(|c| c.is_ascii_digit()),
            "PodMonitor {name}: interval {interval:?}"
        );
    }
}

#[test]
fn a_wrong_value_fails_naming_its_key() {
    let Some(tools) = kubernetes::tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 8] = [
        ("replicas: two\n", &["replicas", "integer"]),
        ("replica: 2\n", &["replica", "Additional property"]),
        ("image:\n  pullPolicy: Sometimes\n", &["image.pullPolicy"]),
        ("identity:\n  insecur: true\n", &["identity", "insecur"]),
        ("mesh:\n  services: {}\n", &["mesh", "string"]),
        ("podMonitor:\n  interval: 30\n", &["podMonitor.interval"]),
        ("meshNamespaces: [Shop]\n", &["meshNamespaces.0"]),
        // Not a schema check: the template's own, for a value needed only
        // with another.
        (
            "identity:\n  issuer:\n    create: true\n",
            &["identity.issuer.certPEM is required"],
        ),
    ];
    for (i, (values, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("wrong-{i}.yaml"));
        std::fs::write(&file, values).unwrap();
        let file = file.display().to_string();
        let complaint = match tools.template(KUBE_VERSIONS[0], &["-f", &file]) {
            Ok(_) => panic!("helm template took {values:?}"),
            Err(complaint) => complaint,
        };
        for word in *expected {
            assert!(
                complaint.contains(word),
                "helm's complaint about {values:?} does not name {word:?}: {complaint}"
            );
        }
    }
}

/// The flags of `--flag value` (or a lone `--flag`) in `args`.
fn flags(args: &[String]) -> BTreeMap<String, String> {
    let mut flags = BTreeMap::new();
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        if let Some(flag) = arg.strip_prefix("--") {
            let value = match it.peek() {
                Some(next) if !next.starts_with("--") => it.next().cloned().unwrap_or_default(),
                _ => String::new(),
            };
            flags.insert(flag.to_string(), value);
        }
    }
    flags
}

/// The values of every `--kubernetes-namespace` in `args`.
fn kubernetes_namespaces(args: &[String]) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == "--kubernetes-namespace")
        .map(|w| w[1].clone())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(str_of).collect())
        .unwrap_or_default()
}

/// `selector` picks the pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) {
    let selector = selector.as_mapping().expect("matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&labels[k], v, "the pods lack the selector's label {k:?}");
    }
}

/// The volume mounted at the directory holding `path`, and the file name.
fn mount_of<'a>(
    container: &'a Value,
    pod: &'a Value,
    path: &str,
) -> (&'a Value, &'a Value, String) {
    let (dir, file) = path.rsplit_once('/').expect("an absolute path");
    let mount = container["volumeMounts"]
        .as_sequence()
        .and_then(|m| m.iter().find(|m| m["mountPath"] == dir))
        .unwrap_or_else(|| panic!("nothing is mounted at {dir} (for {path})"));
    let volume = pod["volumes"]
        .as_sequence()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .unwrap_or_else(|| panic!("no volume {:?}", mount["name"]));
    (mount, volume, file.to_string())
}

#[test]
fn the_control_plane_deployment_keeps_its_promises() {
    let Some(tools) = kubernetes::tools() else {
        return;
    };
    let pems = pems();
    let sets = value_sets(&pems);
    let docs = documents(&render(&tools, &sets[0]));

    // Every object of the control plane in `remora`, named remora-control:
    // the identity its certificate names (remora-control.remora). Its
    // access to the API server is cluster-wide (a ClusterRole) or in the
    // mesh's namespaces (Roles), checked below.
    for doc in &docs {
        if str_of(&doc["kind"]).contains("Role") {
            continue;
        }
        assert_eq!(doc["metadata"]["namespace"], NAMESPACE, "{doc:?}");
    }
    let deployment = find_doc(&docs, "Deployment", NAME);
    find_doc(&docs, "ServiceAccount", NAME);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let template = &deployment["spec"]["template"];
    let pod_labels = &template["metadata"]["labels"];
    selects(&deployment["spec"]["selector"]["matchLabels"], pod_labels);
    let pod = &template["spec"];
    assert_eq!(pod["serviceAccountName"], NAME);
    // Its token, to reach the API server; the ServiceAccount mounts it in
    // no other pod.
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(
        find_doc(&docs, "ServiceAccount", NAME)["automountServiceAccountToken"],
        false
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["runAsGroup"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let spread =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        spread["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    selects(
        &spread["podAffinityTerm"]["labelSelector"]["matchLabels"],
        pod_labels,
    );

    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"], "ghcr.io/remora-mesh/remora-control:0.1.0");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    let port = |name: &str| {
        c["ports"]
            .as_sequence()
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .map(|p| p["containerPort"].as_u64().expect("a port number"))
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    assert_eq!((port("api"), port("admin")), (8086, 9990));
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/live")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !str_of(&c["resources"][kind][resource]).is_empty(),
                "no {kind}.{resource}"
            );
        }
    }

    let args = strings(&c["args"]);
    assert_eq!(args[0], "serve");
    let flags = flags(&args);
    assert_eq!(flags["log-format"], "json");
    // Endpoints from the API server, in the mesh's namespaces.
    assert!(flags.contains_key("kubernetes"));
    assert_eq!(kubernetes_namespaces(&args), ["default"]);
    // Every flag is one the real binary takes.
    let help = Command::new(binary("remora-control"))
        .args(["serve", "--help"])
        .output()
        .expect("remora-control serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in flags.keys() {
        assert!(
            help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
            "remora-control serve has no --{flag}:\n{help}"
        );
    }

    // The mesh: a ConfigMap mounted as a directory (a subPath would never
    // see an update), whose mesh.yaml is --config.
    let (mount, volume, file) = mount_of(c, pod, &flags["config"]);
    assert!(mount["subPath"].is_null(), "{mount:?}");
    let configmap = find_doc(&docs, "ConfigMap", &str_of(&volume["configMap"]["name"]));
    assert!(
        configmap["data"][file.as_str()].is_string(),
        "{configmap:?}"
    );

    // --data-dir on an emptyDir: the root filesystem is read-only.
    let data = c["volumeMounts"]
        .as_sequence()
        .and_then(|m| {
            m.iter()
                .find(|m| m["mountPath"] == flags["data-dir"].as_str())
        })
        .expect("a volume at --data-dir");
    let data_volume = pod["volumes"]
        .as_sequence()
        .and_then(|v| v.iter().find(|v| v["name"] == data["name"]))
        .expect("the data volume");
    assert!(data_volume["emptyDir"].is_mapping(), "{data_volume:?}");

    // The issuer: the three files of the Secret remora-issuer, by the key
    // names `remora-certs init` gives them.
    assert!(!flags.contains_key("insecure"));
    for (flag, key) in [
        ("issuer-cert", "issuer.crt"),
        ("issuer-key", "issuer.key"),
        ("trust-anchors", "ca.crt"),
    ] {
        let (mount, volume, file) = mount_of(c, pod, &flags[flag]);
        assert!(mount["subPath"].is_null());
        assert_eq!(volume["secret"]["secretName"], "remora-issuer");
        assert_eq!(file, key, "--{flag}");
        assert!(
            volume["secret"]["items"]
                .as_sequence()
                .is_some_and(|items| items.iter().any(|i| i["key"] == key && i["path"] == key)),
            "{volume:?}"
        );
    }

    let pdb = find_doc(&docs, "PodDisruptionBudget", NAME);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels);

    let service = find_doc(&docs, "Service", NAME);
    selects(&service["spec"]["selector"], pod_labels);
    for (name, number) in [("api", 8086), ("admin", 9990)] {
        let p = service["spec"]["ports"]
            .as_sequence()
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("the Service has no port {name}"));
        assert_eq!(p["port"], number);
        assert_eq!(p["targetPort"], name);
    }

    // Least privilege: exactly what --kubernetes uses, for the control
    // plane's ServiceAccount alone.
    for set in &sets {
        let docs = documents(&render(&tools, set));
        let deployment = find_doc(&docs, "Deployment", NAME);
        let namespace = str_of(&deployment["metadata"]["namespace"]);
        let args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
        let insecure = args.iter().any(|a| a == "--insecure");
        let watched = kubernetes_namespaces(&args);
        let mut expected = Vec::new();
        if !insecure {
            expected.push(("ClusterRole".to_string(), None));
            expected.push(("ClusterRoleBinding".to_string(), None));
        }
        for ns in &watched {
            expected.push(("Role".to_string(), Some(ns.clone())));
            expected.push(("RoleBinding".to_string(), Some(ns.clone())));
        }
        let mut rbac: Vec<(String, Option<String>)> = docs
            .iter()
            .filter(|d| str_of(&d["kind"]).contains("Role"))
            .map(|d| {
                let ns = &d["metadata"]["namespace"];
                (str_of(&d["kind"]), (!ns.is_null()).then(|| str_of(ns)))
            })
            .collect();
        rbac.sort();
        expected.sort();
        assert_eq!(rbac, expected, "{}", set.name);
        let cluster_name = format!("{namespace}-{NAME}");
        for doc in docs.iter().filter(|d| str_of(&d["kind"]).contains("Role")) {
            let kind = str_of(&doc["kind"]);
            let binding = kind.ends_with("Binding");
            let cluster = kind.starts_with("Cluster");
            let name = if cluster { cluster_name.as_str() } else { NAME };
            assert_eq!(doc["metadata"]["name"], name, "{}: {kind}", set.name);
            if binding {
                assert_eq!(doc["roleRef"]["kind"], kind.trim_end_matches("Binding"));
                assert_eq!(doc["roleRef"]["name"], name);
                let subjects = doc["subjects"].as_sequence().expect("subjects");
                assert_eq!(subjects.len(), 1, "{}: {kind}", set.name);
                assert_eq!(subjects[0]["kind"], "ServiceAccount");
                assert_eq!(subjects[0]["name"], NAME);
                assert_eq!(subjects[0]["namespace"], namespace.as_str());
                continue;
            }
            let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = doc["rules"]
                .as_sequence()
                .expect("rules")
                .iter()
                .map(|r| {
                    (
                        strings(&r["apiGroups"]),
                        strings(&r["resources"]),
                        strings(&r["verbs"]),
                    )
                })
                .collect();
            let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let exactly = if cluster {
                vec![(
                    v(&["authentication.k8s.io"]),
                    v(&["tokenreviews"]),
                    v(&["create"]),
                )]
            } else {
                vec![
                    (v(&[""]), v(&["services", "pods"]), v(&["list", "watch"])),
                    (
                        v(&["discovery.k8s.io"]),
                        v(&["endpointslices"]),
                        v(&["list", "watch"]),
                    ),
                ]
            };
            assert_eq!(rules, exactly, "{}: {kind}", set.name);
        }
    }
    // Without rbac.create, nothing is granted: the operator grants it.
    let none = tools
        .template(KUBE_VERSIONS[0], &["--set", "rbac.create=false"])
        .expect("rbac.create=false");
    assert!(
        !documents(&none)
            .iter()
            .any(|d| str_of(&d["kind"]).contains("Role")),
        "rbac.create=false makes no Role"
    );

    // Identity off, three replicas, other resources.
    let docs = documents(&render(&tools, &sets[1]));
    let deployment = find_doc(&docs, "Deployment", NAME);
    assert_eq!(deployment["metadata"]["namespace"], "mesh-system");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let flags = self::flags(&strings(&c["args"]));
    assert!(flags.contains_key("insecure"));
    assert!(
        flags.contains_key("kubernetes"),
        "endpoints still come from Kubernetes"
    );
    assert_eq!(
        kubernetes_namespaces(&strings(&c["args"])),
        ["shop", "payments"]
    );
    for flag in ["issuer-cert", "issuer-key", "trust-anchors", "tokens"] {
        assert!(!flags.contains_key(flag), "--{flag} with identity off");
    }
    assert!(
        pod["volumes"]
            .as_sequence()
            .is_some_and(|v| v.iter().all(|v| v["secret"].is_null())),
        "a Secret is mounted with identity off: {:?}",
        pod["volumes"]
    );
    assert_eq!(c["resources"]["requests"]["cpu"], "250m");
    assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(
        find_doc(&docs, "PodDisruptionBudget", NAME)["spec"]["minAvailable"],
        2
    );

    // One replica: nothing to keep available through a drain.
    let one = tools
        .template(KUBE_VERSIONS[0], &["--set", "replicas=1"])
        .expect("one replica");
    assert!(
        !documents(&one)
            .iter()
            .any(|d| d["kind"] == "PodDisruptionBudget"),
        "a PodDisruptionBudget for one replica would block every drain"
    );
}

#[test]
fn secrets_trust_anchors_and_the_dashboard_land_where_the_values_say() {
    let Some(tools) = kubernetes::tools() else {
        return;
    };
    let pems = pems();
    let sets = value_sets(&pems);
    let read = |file: &str| std::fs::read_to_string(pems.remora.join(file)).unwrap();

    // Default: the issuer Secret is the operator's; no trust anchors given.
    let docs = documents(&render(&tools, &sets[0]));
    assert!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "{:?}",
        kinds(&docs)
    );
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == "remora-trust-anchors"),
        "{:?}",
        kinds(&docs)
    );
    let dashboard = find_doc(&docs, "ConfigMap", "remora-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = std::fs::read_to_string(chart_dir().join("dashboards/remora.json")).unwrap();
    assert_eq!(
        str_of(&dashboard["data"]["remora.json"]).trim_end(),
        json.trim_end(),
        "the dashboard ConfigMap holds dashboards/remora.json"
    );
    assert!(!docs.iter().any(|d| d["kind"] == "PodMonitor"));

    // The chart makes the issuer Secret from the PEMs, and the trust
    // anchors in every mesh namespace.
    let docs = documents(&render(&tools, &sets[2]));
    let secret = find_doc(&docs, "Secret", "remora-issuer");
    assert_eq!(secret["metadata"]["namespace"], NAMESPACE);
    for key in ["issuer.crt", "issuer.key", "ca.crt"] {
        assert_eq!(
            base64_decode(&str_of(&secret["data"][key])),
            read(key),
            "the Secret's {key}"
        );
    }
    let anchors: Vec<&Value> = docs
        .iter()
        .filter(|d| d["metadata"]["name"] == "remora-trust-anchors")
        .collect();
    let namespaces: BTreeSet<String> = anchors
        .iter()
        .map(|d| str_of(&d["metadata"]["namespace"]))
        .collect();
    assert_eq!(
        namespaces,
        BTreeSet::from(["default".into(), "shop".into()])
    );
    for a in anchors {
        assert_eq!(a["kind"], "ConfigMap");
        assert_eq!(
            str_of(&a["data"]["ca.crt"]).trim_end(),
            read("ca.crt").trim_end()
        );
    }
    let deployment = find_doc(&docs, "Deployment", NAME);
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/issuer"].is_string(),
        "a Secret the chart makes rolls the pods when it changes"
    );

    // Identity off: neither Secret nor trust anchors; PodMonitors for the
    // sidecars (port remora-admin) and the control plane (port admin).
    let docs = documents(&render(&tools, &sets[1]));
    assert!(!docs.iter().any(|d| d["kind"] == "Secret"));
    assert!(!docs
        .iter()
        .any(|d| d["metadata"]["name"] == "remora-dashboard"));
    let proxies = find_doc(&docs, "PodMonitor", "remora-proxies");
    assert_eq!(
        proxies["spec"]["podMetricsEndpoints"][0]["port"],
        "remora-admin"
    );
    assert_eq!(
        proxies["spec"]["podMetricsEndpoints"][0]["path"],
        "/metrics"
    );
    assert_eq!(
        strings(&proxies["spec"]["namespaceSelector"]["matchNames"]),
        ["shop", "payments"]
    );
    assert_eq!(proxies["metadata"]["labels"]["release"], "prometheus");
    let control = find_doc(&docs, "PodMonitor", NAME);
    assert_eq!(control["spec"]["podMetricsEndpoints"][0]["port"], "admin");
    assert_eq!(
        strings(&control["spec"]["namespaceSelector"]["matchNames"]),
        ["mesh-system"]
    );
    let deployment = find_doc(&docs, "Deployment", NAME);
    selects(
        &control["spec"]["selector"]["matchLabels"],
        &deployment["spec"]["template"]["metadata"]["labels"],
    );
    // Every namespace by default.
    let all = documents(
        &tools
            .template(KUBE_VERSIONS[0], &["--set", "podMonitor.enabled=true"])
            .expect("PodMonitors on"),
    );
    assert_eq!(
        find_doc(&all, "PodMonitor", "remora-proxies")["spec"]["namespaceSelector"]["any"],
        true
    );

    // cert-manager's key names; tokens; the dashboard in Grafana's namespace.
    let docs = documents(&render(&tools, &sets[3]));
    let c = &find_doc(&docs, "Deployment", NAME)["spec"]["template"]["spec"]["containers"][0];
    let flags = flags(&strings(&c["args"]));
    assert!(flags["issuer-cert"].ends_with("/tls.crt"), "{flags:?}");
    assert!(flags["issuer-key"].ends_with("/tls.key"), "{flags:?}");
    assert!(flags["trust-anchors"].ends_with("/ca.crt"), "{flags:?}");
    assert!(flags["tokens"].ends_with("/tokens.yaml"), "{flags:?}");
    assert_eq!(flags["cert-ttl"], "12h");
    let dashboard = find_doc(&docs, "ConfigMap", "remora-dashboard");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(
        dashboard["metadata"]["annotations"]["grafana_folder"],
        "remora"
    );
}

/// Standard base64, as Kubernetes writes a Secret's data (coreutils'
/// `base64 --decode`).
fn base64_decode(encoded: &str) -> String {
    let mut command = Command::new("base64");
    command.arg("--decode");
    let out = remora_e2e::process::run_with_input(command, encoded);
    assert!(out.status.success(), "not base64: {encoded}");
    String::from_utf8(out.stdout).expect("PEM text")
}

/// The files one volume of the pod would hold, laid out in `dir` from the
/// rendered ConfigMaps and Secrets, and from `existing` Secrets (name →
/// key → file) that the chart expects the operator to have made.
fn materialize(
    volume: &Value,
    docs: &[Value],
    existing: &BTreeMap<&str, BTreeMap<&str, PathBuf>>,
    dir: &Path,
) {
    std::fs::create_dir_all(dir).unwrap();
    if volume["emptyDir"].is_mapping() {
        return;
    }
    if let Some(name) = volume["configMap"]["name"].as_str() {
        let cm = find_doc(docs, "ConfigMap", name);
        for (key, value) in cm["data"].as_mapping().expect("data") {
            std::fs::write(dir.join(str_of(key)), str_of(value)).unwrap();
        }
        return;
    }
    let name = volume["secret"]["secretName"]
        .as_str()
        .unwrap_or_else(|| panic!("a volume of an unexpected kind: {volume:?}"));
    for item in volume["secret"]["items"].as_sequence().expect("items") {
        let (key, path) = (str_of(&item["key"]), str_of(&item["path"]));
        let content = match docs
            .iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == name)
        {
            Some(secret) => base64_decode(&str_of(&secret["data"][key.as_str()])),
            None => {
                let file = existing
                    .get(name)
                    .and_then(|keys| keys.get(key.as_str()))
                    .unwrap_or_else(|| panic!("no Secret {name} with key {key}"));
                std::fs::read_to_string(file).unwrap()
            }
        };
        std::fs::write(dir.join(path), content).unwrap();
    }
}

/// Starts `remora-control` as the rendered Deployment would: its args,
/// each volume's files at a temporary stand-in for its mount path, the
/// listeners on loopback.
async fn start_as_rendered(
    docs: &[Value],
    existing: &BTreeMap<&str, BTreeMap<&str, PathBuf>>,
    root: &Path,
    api_server: &FakeKube,
) -> Running {
    let pod = &find_doc(docs, "Deployment", NAME)["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let mut args = strings(&c["args"]);
    for mount in c["volumeMounts"].as_sequence().expect("volumeMounts") {
        let path = str_of(&mount["mountPath"]);
        let volume = pod["volumes"]
            .as_sequence()
            .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
            .expect("the mount's volume");
        let local = root.join(path.trim_start_matches('/'));
        materialize(volume, docs, existing, &local);
        let local = local.display().to_string();
        for arg in &mut args {
            if arg.starts_with(&path) {
                *arg = arg.replacen(&path, &local, 1);
            }
        }
    }
    let mut command = tokio::process::Command::new(binary("remora-control"));
    command
        .args(&args)
        .args(["--api", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        // In a pod, the API server of its service account; here the
        // stand-in, found as kubectl (and the control plane) finds one.
        .env("KUBECONFIG", api_server.kubeconfig());
    Running::spawn(command, "remora-control as rendered").await
}

/// Whether the rendered RBAC lets the control plane's ServiceAccount make
/// `asked`: a ClusterRole for cluster-wide requests, a Role of the
/// request's namespace otherwise, each bound to it.
fn rbac_allows(docs: &[Value], asked: &Asked) -> bool {
    let (kind, namespace) = match &asked.namespace {
        None => ("ClusterRole", None),
        Some(ns) => ("Role", Some(ns.as_str())),
    };
    let in_namespace = |d: &Value| match namespace {
        None => d["metadata"]["namespace"].is_null(),
        Some(ns) => d["metadata"]["namespace"] == ns,
    };
    let bound: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] == format!("{kind}Binding").as_str() && in_namespace(d))
        .filter(|d| {
            d["subjects"].as_sequence().is_some_and(|s| {
                s.iter()
                    .any(|s| s["kind"] == "ServiceAccount" && s["name"] == NAME)
            })
        })
        .map(|d| str_of(&d["roleRef"]["name"]))
        .collect();
    docs.iter()
        .filter(|d| d["kind"] == kind && in_namespace(d))
        .filter(|d| bound.contains(&str_of(&d["metadata"]["name"])))
        .flat_map(|d| d["rules"].as_sequence().cloned().unwrap_or_default())
        .any(|rule| {
            strings(&rule["apiGroups"]).iter().any(|g| g == asked.group)
                && strings(&rule["resources"])
                    .iter()
                    .any(|r| r == asked.resource)
                && strings(&rule["verbs"]).iter().any(|v| v == asked.verb)
        })
}

#[tokio::test]
async fn the_rendered_deployment_starts_a_ready_control_plane() {
    let Some(tools) = kubernetes::tools() else {
        return;
    };
    let pems = pems();
    // The operator's Secrets: `kubectl create secret generic remora-issuer
    // --from-file=...` of remora-certs' files (docs/kubernetes.md), or
    // cert-manager's; tokens.yaml.
    let remora = |f: &str| pems.remora.join(f);
    let cm = |f: &str| pems.cert_manager.join(f);
    let existing: BTreeMap<&str, BTreeMap<&str, PathBuf>> = BTreeMap::from([
        (
            "remora-issuer",
            BTreeMap::from([
                ("issuer.crt", remora("issuer.crt")),
                ("issuer.key", remora("issuer.key")),
                ("ca.crt", remora("ca.crt")),
            ]),
        ),
        (
            "remora-issuer-cm",
            BTreeMap::from([
                ("tls.crt", cm("tls.crt")),
                ("tls.key", cm("tls.key")),
                ("ca.crt", cm("ca.crt")),
            ]),
        ),
        (
            "remora-tokens",
            BTreeMap::from([("tokens.yaml", pems.tokens.clone())]),
        ),
    ]);
    for set in value_sets(&pems) {
        let docs = documents(&render(&tools, &set));
        let root = tempfile::tempdir().unwrap();
        let api_server = FakeKube::start().await;
        let running = start_as_rendered(&docs, &existing, root.path(), &api_server).await;
        let admin = running.address("admin");
        let client = Client::http1();
        let what = format!("the control plane of the {} values to be ready", set.name);
        eventually(Duration::from_secs(10), &what, || {
            let client = client.clone();
            async move {
                client
                    .get(&format!("http://{admin}/ready"))
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
        let live = client.get(&format!("http://{admin}/live")).await.unwrap();
        assert_eq!(live.status, 200, "{}", set.name);
        let logs = running.logs().join("\n");
        assert!(
            !logs.contains("\"level\":\"ERROR\""),
            "{}: {logs}",
            set.name
        );
        assert!(
            logs.contains("\"message\":\"mesh loaded\""),
            "{}: the mesh was not read: {logs}",
            set.name
        );
        if set.name == "insecure" {
            assert!(logs.contains("insecure"), "{logs}");
        } else {
            // The issuer from the Secret, not a development CA.
            assert!(!logs.contains("development"), "{}: {logs}", set.name);
        }
        // Ready means every kind of every mesh namespace was listed and is
        // watched; each request the rendered RBAC grants.
        let asked = api_server.asked();
        for resource in ["services", "endpointslices", "pods"] {
            assert!(
                asked
                    .iter()
                    .any(|a| a.verb == "list" && a.resource == resource),
                "{}: {resource} were not listed: {asked:?}",
                set.name
            );
        }
        for a in &asked {
            assert!(
                rbac_allows(&docs, a),
                "{}: the rendered RBAC does not grant {a:?}",
                set.name
            );
        }
    }
}

/// `remora-control check` of `mesh` (the text of a mesh.yaml).
fn check_mesh(mesh: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, mesh).unwrap();
    let out = Command::new(binary("remora-control"))
        .arg("check")
        .arg(&file)
        .output()
        .expect("running remora-control check");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}

/// The mesh.yaml of the rendered mesh ConfigMap.
fn rendered_mesh(rendered: &str) -> String {
    let docs = documents(rendered);
    let cm = find_doc(&docs, "ConfigMap", &format!("{NAME}-mesh"));
    str_of(&cm["data"]["mesh.yaml"])
}

#[test]
fn the_mesh_in_the_configmap_passes_remora_control_check() {
    let Some(tools) = kubernetes::tools() else {
        return;
    };
    // The default: an empty mesh, said so.
    let default = rendered_mesh(&tools.template(KUBE_VERSIONS[0], &[]).unwrap());
    let said = check_mesh(&default).unwrap_or_else(|e| panic!("{default}\n{e}"));
    assert!(said.contains("ok: 0 services"), "{said}");

    // A mesh given in a values file arrives as written.
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(ci_values("insecure-values.yaml")).unwrap())
            .unwrap();
    let given = str_of(&values["mesh"]);
    let args = ["-f".to_string(), ci_values("insecure-values.yaml")];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mesh = rendered_mesh(&tools.template(KUBE_VERSIONS[0], &args).unwrap());
    assert_eq!(mesh, given);
    let said = check_mesh(&mesh).unwrap_or_else(|e| panic!("{mesh}\n{e}"));
    assert!(said.contains("ok: 2 services"), "{said}");

    // So does one given with --set-file, and a bad one is caught by the
    // check before it is applied (helm cannot know).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("mesh.yaml");
    std::fs::write(&bad, "services:\n  orders:\n    load_balancer: ring-hash\n").unwrap();
    let set_file = format!("mesh={}", bad.display());
    let mesh = rendered_mesh(
        &tools
            .template(KUBE_VERSIONS[0], &["--set-file", &set_file])
            .unwrap(),
    );
    assert_eq!(mesh, std::fs::read_to_string(&bad).unwrap());
    let complaint = check_mesh(&mesh).expect_err("ring-hash without hash_on");
    assert!(
        complaint.contains("services.orders.load_balancer"),
        "{complaint}"
    );
}

// The dashboard.

/// Every PromQL expression of the dashboard (panels, rows' panels), and
/// the label_values() queries of its variables as (selector, label).
struct Dashboard {
    exprs: Vec<(String, String, String)>,
    variables: Vec<(String, String)>,
    /// What each variable stands for when an expression is checked.
    substitutions: Vec<(String, String)>,
}

fn read_dashboard() -> Dashboard {
    let text = std::fs::read_to_string(chart_dir().join("dashboards/remora.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        json["panels"].as_array().expect("panels").iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a Prometheus target's expr");
            exprs.push((
                panel["title"].as_str().unwrap_or_default().to_string(),
                expr.to_string(),
                target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
    }
    let mut variables = Vec::new();
    // Grafana's own interval variables: a valid range for a check.
    let mut substitutions = vec![
        ("$__rate_interval".to_string(), "5m".to_string()),
        ("$__interval".to_string(), "1m".to_string()),
        ("$__range".to_string(), "1h".to_string()),
    ];
    for var in json["templating"]["list"].as_array().expect("templating") {
        let name = var["name"].as_str().expect("a variable's name");
        match var["type"].as_str() {
            Some("datasource") => continue,
            Some("custom") => {
                let first = var["query"].as_str().unwrap().split(',').next().unwrap();
                substitutions.push((format!("${name}"), first.trim().to_string()));
            }
            Some("query") => {
                let q = var["definition"].as_str().expect("a query");
                let inner = q
                    .strip_prefix("label_values(")
                    .and_then(|q| q.strip_suffix(')'))
                    .unwrap_or_else(|| panic!("{name}: not label_values(): {q}"));
                let (selector, label) = inner.rsplit_once(',').expect("selector, label");
                variables.push((selector.trim().to_string(), label.trim().to_string()));
                substitutions.push((format!("${name}"), ".*".to_string()));
            }
            other => panic!("variable {name} of an unexpected type {other:?}"),
        }
    }
    // Longest first, so that $service never eats into $services.
    substitutions.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    Dashboard {
        exprs,
        variables,
        substitutions,
    }
}

impl Dashboard {
    fn substitute(&self, expr: &str) -> String {
        let mut out = expr.to_string();
        for (from, to) in &self.substitutions {
            out = out
                .replace(&format!("${{{}}}", &from[1..]), to)
                .replace(from, to);
        }
        assert!(!out.contains('$'), "an unknown variable in {expr}");
        out
    }

    /// Every expression to check, variables substituted: the panels' and
    /// the variables' selectors.
    fn all(&self) -> Vec<(String, String)> {
        self.exprs
            .iter()
            .map(|(title, expr, _)| (title.clone(), self.substitute(expr)))
            .chain(
                self.variables
                    .iter()
                    .map(|(sel, _)| ("a variable".to_string(), self.substitute(sel))),
            )
            .collect()
    }
}

/// What an expression uses: each metric with the labels its selector
/// matches on, and the labels it groups by.
#[derive(Debug, Default)]
struct Uses {
    metrics: Vec<(String, Vec<String>)>,
    grouping: BTreeSet<String>,
    /// Identifiers that are neither functions, keywords nor remora metrics.
    unknown: Vec<String>,
}

/// PromQL's aggregation operators, which may take `by (...)` before their
/// parentheses.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];
/// PromQL's words that are neither functions nor metrics.
const KEYWORDS: [&str; 8] = [
    "by",
    "without",
    "on",
    "ignoring",
    "bool",
    "offset",
    "group_left",
    "group_right",
];

/// A small PromQL scanner: enough for the dashboard's expressions
/// (selectors, functions, aggregations with by/without, arithmetic).
fn uses(expr: &str) -> Uses {
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    let ident = |i: &mut usize| {
        let start = *i;
        while *i < chars.len()
            && (chars[*i].is_ascii_alphanumeric() || chars[*i] == '_' || chars[*i] == ':')
        {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let skip_string = |i: &mut usize| {
        let quote = chars[*i];
        *i += 1;
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            skip_string(&mut i);
        } else if c == '[' {
            // A range: [5m].
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let name = ident(&mut i);
            skip_space(&mut i);
            let next = chars.get(i).copied();
            if name == "by" || name == "without" {
                assert_eq!(next, Some('('), "{expr}");
                i += 1;
                loop {
                    skip_space(&mut i);
                    match chars.get(i) {
                        Some(')') => break,
                        Some(',') => i += 1,
                        _ => {
                            uses.grouping.insert(ident(&mut i));
                        }
                    }
                }
                i += 1;
            } else if next == Some('{') {
                // A selector: metric{label op "value", ...}.
                i += 1;
                let mut labels = Vec::new();
                loop {
                    skip_space(&mut i);
                    match chars.get(i) {
                        Some('}') | None => break,
                        Some(',') => i += 1,
                        Some('"') | Some('\'') => skip_string(&mut i),
                        Some('=') | Some('!') | Some('~') => i += 1,
                        _ => labels.push(ident(&mut i)),
                    }
                }
                i += 1;
                uses.metrics.push((name, labels));
            } else if next == Some('(') || AGGREGATIONS.contains(&name.as_str()) {
                // A function, or an aggregation (`sum by (...) (...)`).
            } else if name.starts_with("remora_") {
                uses.metrics.push((name, Vec::new()));
            } else if !KEYWORDS.contains(&name.as_str()) {
                uses.unknown.push(name);
            }
        } else {
            i += 1;
        }
    }
    uses
}

/// Each series name of a Prometheus text exposition with the label names
/// its series carry.
fn exposed(exposition: &str, into: &mut BTreeMap<String, BTreeSet<String>>) {
    for line in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = into.entry(line[..end].to_string()).or_default();
        let Some(rest) = line[end..].strip_prefix('{') else {
            continue;
        };
        let mut chars = rest.chars().peekable();
        loop {
            let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if name.is_empty() {
                break;
            }
            labels.insert(name.trim_start_matches(',').to_string());
            // The quoted value, escapes and all.
            assert_eq!(chars.next(), Some('"'), "{line}");
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
            if chars.peek() == Some(&'}') {
                break;
            }
        }
    }
}

#[test]
fn the_dashboards_queries_pass_promtool() {
    if !remora_e2e::promtool::have_promtool() {
        return;
    }
    let dashboard = read_dashboard();
    let all = dashboard.all();
    assert!(all.len() >= 20, "{} expressions", all.len());
    let mut rules = String::from("groups:\n  - name: remora-dashboard\n    rules:\n");
    for (i, (_, expr)) in all.iter().enumerate() {
        let quoted = serde_json::to_string(expr).unwrap();
        rules.push_str(&format!(
            "      - record: remora_dashboard:expr_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("running promtool");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool check rules:\n{said}\n{rules}"
    );
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", all.len())),
        "{said}"
    );

    // Each legend names only labels the expression keeps.
    for (title, expr, legend) in &dashboard.exprs {
        let kept = uses(expr).grouping;
        for part in legend.split("{{").skip(1) {
            let label = part.split("}}").next().unwrap().trim();
            assert!(
                kept.contains(label),
                "{title}: the legend names {label}, which {expr} does not keep"
            );
        }
    }
}

/// The metrics a small real mesh exposes once it has served traffic of
/// every kind the dashboard shows: two sidecars with identities and a
/// control plane; calls over mTLS, retries, a timeout, an ejection, a spent
/// retry budget, a rate limit, an authorization refusal, a connection
/// closed by a limit, a change pushed to a held long-poll.
async fn a_busy_mesh_exposes() -> BTreeMap<String, BTreeSet<String>> {
    let dir = tempfile::tempdir().unwrap();
    let tokens = grant_tokens(
        dir.path(),
        &[("orders", "orders-token"), ("frontend", "frontend-token")],
    );
    let orders_app = Upstream::named("orders").await;
    let frontend_app = Upstream::named("frontend").await;
    let flaky = Upstream::named("flaky").await;
    let dead = dead_address().await;
    let slow = Upstream::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        text("late")
    })
    .await;
    let failing = Upstream::start(|_req| async { status(500, "failing") }).await;
    let mesh = |slow_timeout: &str| {
        format!(
            "services:
  orders:
    identity: orders
    inbound: {{ rate_limit: {{ requests_per_second: 1, burst: 2 }} }}
  frontend:
    identity: frontend
    inbound: {{ mtls: permissive, allow: [orders] }}
  flaky:
    load_balancer: round-robin
    endpoints: [ {{ address: {} }}, {{ address: {dead} }} ]
  slow:
    timeout: {slow_timeout}
    endpoints: [ {{ address: {} }} ]
  failing:
    endpoints: [ {{ address: {} }} ]
    retry: {{ on: [5xx], budget_percent: 0, min_retries_per_second: 0 }}
",
            flaky.addr, slow.addr, failing.addr
        )
    };
    let cp = ControlPlane::start_with(&mesh("100ms"), &["--tokens", &tokens]).await;
    let anchors = cp.development_anchors();
    let orders = Proxy::identified(
        &cp,
        "orders",
        orders_app.addr,
        &token_file(dir.path(), "orders"),
        &anchors,
    )
    .await;
    let (frontend_token, anchors) = (
        token_file(dir.path(), "frontend"),
        anchors.display().to_string(),
    );
    let frontend = Proxy::controlled(
        &cp.url(),
        "frontend",
        frontend_app.addr,
        &[
            "--token-file",
            &frontend_token,
            "--trust-anchors",
            &anchors,
            "--header-read-timeout",
            "300ms",
        ],
    )
    .await;

    let client = Client::via(frontend.outbound, false);
    let mut statuses = BTreeMap::new();
    for url in ["http://orders/"; 5]
        .into_iter()
        .chain(["http://flaky/"; 4])
        .chain(["http://slow/", "http://failing/"])
    {
        let r = client.get(url).await.unwrap();
        *statuses.entry((url, r.status.as_u16())).or_insert(0) += 1;
    }
    assert_eq!(statuses[&("http://slow/", 504)], 1, "{statuses:?}");
    assert_eq!(statuses[&("http://flaky/", 200)], 4, "{statuses:?}");
    assert!(
        statuses.contains_key(&("http://orders/", 429)),
        "{statuses:?}"
    );
    // A plaintext caller the allow list does not name.
    let denied = Client::http1()
        .get_via(frontend.inbound, "frontend", "/")
        .await
        .unwrap();
    assert_eq!(denied.status, 403, "{}", denied.text());
    // A connection that never sends its request head.
    let idle = tokio::net::TcpStream::connect(frontend.inbound)
        .await
        .unwrap();
    // A change the frontend's held watch of `slow` is pushed.
    std::fs::write(&cp.config_path, mesh("150ms")).unwrap();

    let cp_metrics = cp.admin_url("/metrics");
    let scrape = |url: String| async move {
        Client::http1()
            .get(&url)
            .await
            .map(|r| r.text())
            .unwrap_or_default()
    };
    eventually(
        Duration::from_secs(10),
        "the push and the closed connection to be counted",
        || {
            let (cp_metrics, frontend_metrics) =
                (cp_metrics.clone(), frontend.admin_url("/metrics"));
            async move {
                scrape(cp_metrics)
                    .await
                    .contains("remora_control_push_seconds_count")
                    && scrape(frontend_metrics)
                        .await
                        .contains("reason=\"header-timeout\"")
            }
        },
    )
    .await;
    drop(idle);

    let mut exposed_by = BTreeMap::new();
    for exposition in [
        frontend.metrics().await,
        orders.metrics().await,
        scrape(cp_metrics).await,
    ] {
        exposed(&exposition, &mut exposed_by);
    }
    exposed_by
}

#[tokio::test]
async fn the_dashboard_uses_only_metrics_and_labels_remora_exposes() {
    let dashboard = read_dashboard();
    let exposes = a_busy_mesh_exposes().await;
    let mut problems = Vec::new();
    for (title, expr) in dashboard.all() {
        let used = uses(&expr);
        if !used.unknown.is_empty() {
            problems.push(format!(
                "{title}: not a remora metric: {:?} in {expr}",
                used.unknown
            ));
        }
        for (metric, labels) in &used.metrics {
            let Some(has) = exposes.get(metric) else {
                problems.push(format!("{title}: no series {metric} is exposed ({expr})"));
                continue;
            };
            for label in labels.iter().chain(&used.grouping) {
                if !has.contains(label) {
                    problems.push(format!(
                        "{title}: {metric} has no label {label} (it has {has:?})"
                    ));
                }
            }
        }
    }
    for (selector, label) in &dashboard.variables {
        let used = uses(selector);
        for (metric, _) in &used.metrics {
            if !exposes.get(metric).is_some_and(|has| has.contains(label)) {
                problems.push(format!("a variable: {metric} has no label {label}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard asks for what remora does not expose:\n{}",
        problems.join("\n")
    );
}
