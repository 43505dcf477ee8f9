//! `remora-control inject` as a user runs it: Kubernetes YAML piped through
//! the real binary. What it writes must be valid Kubernetes (checked with
//! `kubernetes-validate --strict`), leave every other byte alone, change
//! nothing when run again, and describe a sidecar that really runs: the
//! test starts `remora-proxy` with exactly the environment, files and
//! probes the injected container gets, against a real control plane, and
//! runs the app's probes, which inject pointed at the proxy, through it.
//! With no cluster here, the kubelet's part (downward API, projected
//! token, mounts) is played by the test, named where it happens; the init
//! container's iptables rules need a pod's network namespace, so its
//! `remora-proxy init` is run with `--dry-run`.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use serde_yaml::Value;

use remora_e2e::identity::{grant_tokens, token_file};
use remora_e2e::kubernetes;
use remora_e2e::process::{binary, run_with_input, Running};
use remora_e2e::{eventually, Client, ControlPlane, Upstream};

/// Kubernetes' first version with native sidecars enabled by default.
const KUBERNETES: &str = "1.29.0";

/// One of each kind that runs pods, with comments, both styles of
/// sequence indentation, and documents inject must not touch.
const WORKLOADS: &str = "\
# The shop, as its team wrote it.
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web        # the storefront
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels:
        app: web
        version: v2
      annotations:
        remora.io/skip-outbound-ports: '5432'   # the database, unmeshed
    spec:
      containers:
        - name: web
          image: nginx:1.25   # pinned
          ports:
            - name: http
              containerPort: 8000
          livenessProbe:
            httpGet:
              port: http   # by name
              path: /healthz
            periodSeconds: 5
          readinessProbe:
            httpGet: {port: 8000, path: '/ready?deep=1'}
          startupProbe:
            tcpSocket: {port: http}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8000}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: ledger, namespace: shop}
spec:
  serviceName: ledger
  selector:
    matchLabels: {app: ledger}
  template:
    metadata:
      labels: {app: ledger}
    spec:
      containers:
      - name: ledger
        image: ledger:1
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: shop}
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: agent
        image: agent:1
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: cache, namespace: shop}
spec:
  selector:
    matchLabels: {app: cache}
  template:
    metadata:
      labels: {app: cache}
    spec:
      containers:
      - name: cache
        image: cache:1
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate, namespace: shop}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: migrate
        image: migrate:1
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: '0 * * * *'
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: report
            image: report:1
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
  namespace: shop
  annotations:
    remora.io/inject: disabled   # not this one
spec:
  containers:
  - name: debug
    image: busybox
";

/// Runs `remora-control inject ARGS` on `input`: stdout, stderr, success.
fn inject(input: &str, args: &[&str]) -> (String, String, bool) {
    let mut command = Command::new(binary("remora-control"));
    command.arg("inject").args(args);
    let out = run_with_input(command, input);
    (
        String::from_utf8(out.stdout).expect("UTF-8 out"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// The documents of a stream, as written (each with its `---` line).
fn pieces(stream: &str) -> Vec<String> {
    let mut pieces = vec![String::new()];
    for line in stream.split_inclusive('\n') {
        if line.trim_end() == "---" {
            pieces.push(String::new());
        }
        pieces.last_mut().unwrap().push_str(line);
    }
    pieces
}

fn pod_spec(doc: &Value) -> &Value {
    match doc["kind"].as_str() {
        Some("Pod") => &doc["spec"],
        Some("CronJob") => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &doc["spec"]["template"]["spec"],
    }
}

#[test]
fn every_kind_of_workload_gets_a_native_sidecar_and_nothing_else_changes() {
    let (out, notes, ok) = inject(WORKLOADS, &[]);
    assert!(ok, "{notes}");
    let (before, after) = (pieces(WORKLOADS), pieces(&out));
    assert_eq!(before.len(), after.len(), "{out}");
    let mut meshed = Vec::new();
    for (was, now) in before.iter().zip(&after) {
        let doc: Value = serde_yaml::from_str(now).unwrap();
        let kind = doc["kind"].as_str().unwrap().to_string();
        let init = &pod_spec(&doc)["initContainers"];
        if ["Namespace", "Service"].contains(&kind.as_str()) || doc["metadata"]["name"] == "debug" {
            assert_eq!(now, was, "{kind} must be left byte for byte");
            continue;
        }
        // Transparent mode: the init container that redirects the pod's
        // traffic first, then the sidecar.
        assert_eq!(init[0]["name"], "remora-init", "{kind}:\n{now}");
        assert_eq!(init[1]["name"], "remora-proxy", "{kind}:\n{now}");
        assert_eq!(init[1]["restartPolicy"], "Always", "{kind}");
        // Only lines added, but for the app's probes' ports and paths:
        // every other line the document had is still there, in order,
        // comments included.
        let probe_lines = [
            "port: http",
            "path: /healthz",
            "httpGet: {port: 8000",
            "tcpSocket:",
        ];
        let mut lines = now.lines();
        for line in was.lines() {
            if probe_lines.iter().any(|p| line.trim_start().starts_with(p)) {
                continue;
            }
            assert!(lines.any(|l| l == line), "{kind} lost {line:?}:\n{now}");
        }
        meshed.push(kind);
    }
    assert_eq!(
        meshed,
        [
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "ReplicaSet",
            "Job",
            "CronJob"
        ]
    );
    assert!(
        notes.contains("document 9: Pod/debug left as it is: remora.io/inject: disabled"),
        "{notes}"
    );

    // Twice is once, byte for byte, in both modes.
    let (again, _, ok) = inject(&out, &[]);
    assert!(ok);
    assert_eq!(again, out);
    let (classic, _, ok) = inject(WORKLOADS, &["--sidecar", "classic"]);
    assert!(ok);
    assert_eq!(inject(&classic, &["--sidecar", "classic"]).0, classic);
}

#[test]
fn what_inject_writes_is_valid_kubernetes_in_both_modes() {
    let Some(tools) = kubernetes::tools() else {
        return;
    };
    let input = tools.validate(WORKLOADS, KUBERNETES);
    assert!(input.succeeded, "the test's own input:\n{}", input.report);
    for mode in ["native", "classic"] {
        let (out, notes, ok) = inject(WORKLOADS, &["--sidecar", mode]);
        assert!(ok, "{notes}");
        let checked = tools.validate(&out, KUBERNETES);
        assert!(checked.succeeded, "{mode}:\n{}\n{out}", checked.report);
        assert_eq!(checked.passed.len(), 9, "{mode}: {:?}", checked.passed);
    }
}

#[test]
fn a_bad_document_writes_nothing_and_says_where() {
    let input = format!("{WORKLOADS}---\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    remora.io/sidecar: sometimes\nspec:\n  containers: []\n");
    let (out, err, ok) = inject(&input, &[]);
    assert!(!ok);
    assert_eq!(out, "", "nothing goes on to kubectl");
    let line = WORKLOADS.lines().count() + 1;
    assert_eq!(
        err.trim(),
        format!("remora-control inject: stdin: line {line}: document 10: Pod/p: annotation remora.io/sidecar: \"sometimes\" is not native or classic"),
    );
    let (_, err, ok) = inject("kind: Pod\nspec: [\n", &[]);
    assert!(!ok);
    assert!(err.contains("line 3: document 1: not YAML"), "{err}");
}

/// The kubelet's part: the value of each `fieldRef` the sidecar's env
/// asks the downward API for.
fn downward_api(field: &str) -> &'static str {
    match field {
        "status.podIP" => "127.0.0.1",
        "metadata.name" => "web-7d9f6-x2x9z",
        "metadata.namespace" => "shop",
        "spec.serviceAccountName" => "web",
        other => {
            panic!("the sidecar asks the downward API for {other}, which the test does not play")
        }
    }
}

#[tokio::test]
async fn the_injected_sidecar_runs_as_written() {
    let app = Upstream::named("web").await;
    let deployment = WORKLOADS
        .split("---\n")
        .nth(1)
        .unwrap()
        .replace("8000", &app.addr.port().to_string());
    let (out, notes, ok) = inject(&deployment, &[]);
    assert!(ok, "{notes}");
    let doc: Value = serde_yaml::from_str(&out).unwrap();
    let spec = pod_spec(&doc);
    let sidecar = &spec["initContainers"][1];
    assert_eq!(sidecar["name"], "remora-proxy");

    // Volumes, as the kubelet mounts them: the projected token's file and
    // the trust anchors' ConfigMap key under their mount paths.
    let mount = |volume: &str| {
        sidecar["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("no mount of {volume}"))
            .to_string()
    };
    let volume = |name: &str| {
        spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    let token_path = volume("remora-token")["projected"]["sources"][0]["serviceAccountToken"]
        ["path"]
        .as_str()
        .unwrap()
        .to_string();
    let token_in_pod = format!("{}/{token_path}", mount("remora-token"));
    let anchors_in_pod = format!("{}/ca.crt", mount("remora-trust-anchors"));
    assert_eq!(
        volume("remora-trust-anchors")["configMap"]["name"],
        "remora-trust-anchors"
    );

    let dir = tempfile::tempdir().unwrap();
    let tokens = grant_tokens(dir.path(), &[("web", "web-token")]);
    let mesh = "services:\n  web:\n    identity: web\n";
    let cp = ControlPlane::start_with(mesh, &["--tokens", &tokens]).await;

    let mut env: HashMap<String, String> = HashMap::new();
    for var in sidecar["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        let value = match var["value"].as_str() {
            Some(v) => v.to_string(),
            None => {
                downward_api(var["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap()).into()
            }
        };
        env.insert(name, value);
    }
    // Where the pod has files and a cluster DNS name, the test has its own.
    assert_eq!(env["REMORA_TOKEN_FILE"], token_in_pod);
    assert_eq!(env["REMORA_TRUST_ANCHORS"], anchors_in_pod);
    assert_eq!(
        env["REMORA_CONTROL_URL"],
        "https://remora-control.remora.svc:8086"
    );
    env.insert("REMORA_TOKEN_FILE".into(), token_file(dir.path(), "web"));
    env.insert(
        "REMORA_TRUST_ANCHORS".into(),
        cp.development_anchors().display().to_string(),
    );
    env.insert("REMORA_CONTROL_URL".into(), cp.url());
    // Fixed ports in a pod; free ones here, so tests run side by side.
    for listener in ["REMORA_INBOUND", "REMORA_OUTBOUND", "REMORA_ADMIN"] {
        env.insert(listener.into(), "127.0.0.1:0".into());
    }

    let mut command = tokio::process::Command::new(binary("remora-proxy"));
    command.env_clear().envs(&env);
    let proxy = Running::spawn(command, "the injected remora-proxy").await;
    let admin = proxy.address("admin");

    // The probes the kubelet would run, on the paths inject wrote.
    let client = Client::http1();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let path = sidecar[probe]["httpGet"]["path"]
            .as_str()
            .unwrap()
            .to_string();
        let url = format!("http://{admin}{path}");
        eventually(
            Duration::from_secs(10),
            &format!("{probe} {path} to pass"),
            || {
                let (client, url) = (client.clone(), url.clone());
                async move { client.get(&url).await.is_ok_and(|r| r.status == 200) }
            },
        )
        .await;
    }

    // The app's own probes: pointed at the proxy's admin port, which the
    // init container's rules leave alone, and through it to the app.
    let app_container = &spec["containers"][0];
    let port = app.addr.port();
    for (probe, path) in [
        ("livenessProbe", format!("/app-probe/{port}/healthz")),
        ("readinessProbe", format!("/app-probe/{port}/ready?deep=1")),
        // A tcpSocket probe: the proxy connects to the app's port.
        ("startupProbe", format!("/app-probe/tcp:{port}")),
    ] {
        let get = &app_container[probe]["httpGet"];
        assert_eq!(get["port"].as_u64(), Some(4191), "{probe}");
        assert_eq!(get["path"].as_str(), Some(path.as_str()), "{probe}");
        let answer = client.get(&format!("http://{admin}{path}")).await.unwrap();
        assert_eq!(answer.status, 200, "{probe}: {}", answer.text());
    }
    let asked: Vec<String> = app.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(asked, ["/healthz", "/ready"], "what the app was asked");
    // Only those: the admin port opens nothing else of the app's.
    let other = client
        .get(&format!("http://{admin}/app-probe/{port}/admin"))
        .await
        .unwrap();
    assert_eq!(other.status, 404);

    // Prometheus scrapes it where the annotations inject added say.
    let annotations = &doc["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    let port: u16 = annotations["prometheus.io/port"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        sidecar["ports"][1]["containerPort"].as_u64(),
        Some(port.into())
    );
    let path = annotations["prometheus.io/path"].as_str().unwrap();
    let metrics = client.get(&format!("http://{admin}{path}")).await.unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("remora_connections_open"),
        "{}",
        metrics.text()
    );

    // It registered under the pod's name, with its version label, at the
    // app port inject found in the Deployment.
    let services = cp.services().await;
    let endpoints = services["services"]["web"]["endpoints"].to_string();
    assert!(endpoints.contains("web-7d9f6-x2x9z"), "{services}");
    assert!(endpoints.contains("v2"), "{services}");
    assert!(
        proxy.logs().join("\n").contains(&app.addr.to_string()),
        "the proxy forwards to the app port inject found: {}",
        proxy.logs().join("\n")
    );

    // The init container: `remora-proxy init`, from the init image (the
    // proxy's version, with iptables: the sidecar's image has none), as
    // root with only NET_ADMIN and NET_RAW, the app's port (the only one
    // redirected inbound) and the ports the annotation skips in its
    // environment. With no pod's network namespace here, its rules are
    // printed, not installed.
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "remora-init");
    let proxy_image = sidecar["image"].as_str().unwrap();
    let (repository, version) = proxy_image.rsplit_once(':').unwrap();
    assert_eq!(repository, "ghcr.io/remora-mesh/remora-proxy");
    assert_eq!(
        init["image"].as_str(),
        Some(format!("ghcr.io/remora-mesh/remora-init:{version}").as_str())
    );
    let security = &init["securityContext"];
    assert_eq!(security["runAsUser"].as_u64(), Some(0));
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(
        security["capabilities"],
        serde_yaml::from_str::<Value>("{add: [NET_ADMIN, NET_RAW], drop: [ALL]}").unwrap()
    );
    let args: Vec<&str> = init["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["init"]);
    let init_env: Vec<(&str, &str)> = init["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    let app_port = app.addr.port().to_string();
    assert_eq!(
        init_env,
        [
            ("REMORA_INBOUND_PORTS", app_port.as_str()),
            ("REMORA_SKIP_OUTBOUND_PORTS", "5432")
        ]
    );
    let rules = Command::new(binary("remora-proxy"))
        .args(&args)
        .arg("--dry-run")
        .env_clear()
        .envs(init_env.iter().copied())
        .output()
        .unwrap();
    assert!(rules.status.success(), "{rules:?}");
    let rules = String::from_utf8(rules.stdout).unwrap();
    assert!(
        rules.contains("--dports 5432 -j RETURN")
            && rules.contains(&format!("--dports {app_port} -j REDIRECT --to-ports 4143"))
            && rules.contains("--uid-owner 2102"),
        "{rules}"
    );
    assert_eq!(
        sidecar["securityContext"]["runAsUser"].as_u64(),
        Some(2102),
        "the uid init lets through"
    );

    // A classic sidecar's postStart hook, run as the kubelet runs it.
    let (classic, _, ok) = inject(&deployment, &["--sidecar", "classic"]);
    assert!(ok);
    let doc: Value = serde_yaml::from_str(&classic).unwrap();
    let hook = pod_spec(&doc)["containers"][0]["lifecycle"]["postStart"]["exec"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert_eq!(hook[0], "/usr/local/bin/remora-proxy", "the image's path");
    let status = Command::new(binary("remora-proxy"))
        .args(&hook[1..])
        .env("REMORA_ADMIN", admin.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "wait-ready on a ready proxy");
}
