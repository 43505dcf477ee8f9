use clap::Parser;
use serde_yaml::Value;

use super::*;

fn settings(args: &[&str]) -> Settings {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }
    let mut argv = vec!["inject"];
    argv.extend(args);
    Cli::parse_from(argv).settings
}

fn run(input: &str) -> Injected {
    inject(input, &settings(&[])).unwrap()
}

fn names(list: &[Value]) -> Vec<&str> {
    list.iter().map(|i| i["name"].as_str().unwrap()).collect()
}

/// The value of the env var `name` of `container`.
fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

fn documents(output: &str) -> Vec<Value> {
    output
        .split("\n---")
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect()
}

/// Every line of `input`, in order, is a line of `output`: inject only
/// added lines.
fn only_added(input: &str, output: &str) {
    let mut out = output.lines();
    for line in input.lines() {
        assert!(
            out.any(|o| o == line),
            "line {line:?} of the input is not in the output, in order:\n{output}"
        );
    }
}

const DEPLOYMENT: &str = "\
# The web tier.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web   # keep this comment
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
    spec:
      # the app
      containers:
        - name: web
          image: nginx:1.25   # pinned
          ports:
            - containerPort: 8000
      volumes:
      - name: data
        emptyDir: {}
---
apiVersion: v1
kind: Service   # not a workload: untouched
metadata: {name: web}
spec:
  ports: [{port: 80, targetPort: 8000}]
";

#[test]
fn a_deployment_gets_a_native_sidecar_and_keeps_every_byte_it_had() {
    let injected = run(DEPLOYMENT);
    assert!(injected.notes.is_empty(), "{:?}", injected.notes);
    let out = &injected.output;
    only_added(DEPLOYMENT, out);
    let (deployment, service) = out.split_once("---\n").unwrap();
    assert_eq!(service, DEPLOYMENT.split_once("---\n").unwrap().1);
    let d: Value = serde_yaml::from_str(deployment).unwrap();
    let pod = &d["spec"]["template"];
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "remora-init");
    assert_eq!(
        pod["spec"]["initContainers"][0]["image"],
        DEFAULT_INIT_IMAGE
    );
    let sidecar = &pod["spec"]["initContainers"][1];
    assert_eq!(sidecar["name"], "remora-proxy");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["image"], DEFAULT_PROXY_IMAGE);
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    let env: Vec<(String, String)> = sidecar["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect();
    let value = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(value("REMORA_SERVICE"), Some("web"));
    assert_eq!(value("REMORA_APP"), Some("127.0.0.1:8000"));
    assert_eq!(value("REMORA_LABEL"), Some("version=v2"));
    assert_eq!(value("REMORA_CONTROL_URL"), Some(DEFAULT_CONTROL_URL));
    assert_eq!(
        value("REMORA_TOKEN_FILE"),
        Some("/var/run/secrets/remora.io/token")
    );
    // The app's container is still the only container, and first.
    assert_eq!(pod["spec"]["containers"].as_sequence().unwrap().len(), 1);
    let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
    let names: Vec<_> = volumes
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "data",
            "remora-token",
            "remora-trust-anchors",
            "remora-xtables-lock"
        ]
    );
    assert_eq!(
        volumes[1]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        DEFAULT_TOKEN_AUDIENCE
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "4191");
}

#[test]
fn injecting_twice_changes_nothing() {
    let inputs = [
        DEPLOYMENT.to_string(),
        format!("{DEPLOYMENT}---\n{JOB}"),
        JOB.to_string(),
        "{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {\"name\": \"p\"}, \"spec\": {\"containers\": [{\"name\": \"a\", \"image\": \"a\"}]}}\n".to_string(),
        LIST.to_string(),
        PROBED.to_string(),
        format!("{PROBED}---\n{JOB}"),
    ];
    for input in inputs {
        let once = run(&input).output;
        let twice = run(&once);
        assert_eq!(twice.output, once, "input:\n{input}");
        assert!(
            twice.notes.iter().all(|n| !n.contains("written out")),
            "{:?}",
            twice.notes
        );
    }
}

const JOB: &str = "\
apiVersion: batch/v1
kind: CronJob
metadata:
  name: report
spec:
  schedule: '0 * * * *'
  jobTemplate:
    spec:
      template:
        metadata:
          annotations:
            remora.io/proxy-memory-limit: 64Mi
            remora.io/proxy-log-level: debug
        spec:
          restartPolicy: OnFailure
          initContainers:
          - name: migrate
            image: tool
          containers:
          - name: report
            image: tool
";

#[test]
fn a_cron_job_gets_its_sidecar_first_among_its_init_containers_with_its_overrides() {
    let out = run(JOB).output;
    only_added(JOB, &out);
    let d: Value = serde_yaml::from_str(&out).unwrap();
    let pod = &d["spec"]["jobTemplate"]["spec"]["template"];
    let init = pod["spec"]["initContainers"].as_sequence().unwrap();
    assert_eq!(names(init), ["remora-init", "remora-proxy", "migrate"]);
    assert_eq!(init[1]["resources"]["limits"]["memory"], "64Mi");
    let env = init[1]["env"].as_sequence().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "REMORA_LOG_LEVEL" && e["value"] == "debug"));
    // No port declared: the proxy's default app port.
    assert!(env
        .iter()
        .any(|e| e["name"] == "REMORA_APP" && e["value"] == "127.0.0.1:8080"));
    // The service is the workload's name when no label names it.
    assert!(env
        .iter()
        .any(|e| e["name"] == "REMORA_SERVICE" && e["value"] == "report"));
    // Existing annotations are kept; the scrape ones join them.
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["remora.io/proxy-log-level"], "debug");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
}

const LIST: &str = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: a
    labels: {app.kubernetes.io/name: alpha}
  spec:
    containers:
    - name: a
      image: a
- apiVersion: apps/v1
  kind: StatefulSet
  metadata:
    name: b
  spec:
    serviceName: b
    selector: {matchLabels: {app: b}}
    template:
      metadata:
        labels: {app: b}
        annotations:
          remora.io/inject: disabled
      spec:
        containers:
        - name: b
          image: b
";

#[test]
fn a_list_s_items_are_meshed_one_by_one_and_opting_out_is_heard() {
    let injected = run(LIST);
    let d: Value = serde_yaml::from_str(&injected.output).unwrap();
    let pod = &d["items"][0];
    assert_eq!(pod["spec"]["initContainers"][1]["name"], "remora-proxy");
    let env = pod["spec"]["initContainers"][1]["env"]
        .as_sequence()
        .unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "REMORA_SERVICE" && e["value"] == "alpha"));
    assert!(d["items"][1]["spec"]["template"]["spec"]
        .get("initContainers")
        .is_none());
    assert_eq!(
        injected.notes,
        ["document 1: StatefulSet/b left as it is: remora.io/inject: disabled"]
    );
}

#[test]
fn classic_mode_puts_the_sidecar_first_among_containers_and_switching_moves_it() {
    let classic = inject(DEPLOYMENT, &settings(&["--sidecar", "classic"]))
        .unwrap()
        .output;
    only_added(DEPLOYMENT, &classic);
    let d = &documents(&classic)[0];
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(spec["containers"][0]["name"], "remora-proxy");
    assert_eq!(spec["containers"][1]["name"], "web");
    assert_eq!(
        names(spec["initContainers"].as_sequence().unwrap()),
        ["remora-init"]
    );
    assert!(spec["containers"][0].get("restartPolicy").is_none());
    assert_eq!(
        spec["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][1],
        "wait-ready"
    );
    // Back to native: the sidecar leaves `containers`, and the result is
    // what injecting native at once gives, byte for byte.
    let native = run(&classic).output;
    assert_eq!(native, run(DEPLOYMENT).output);
}

#[test]
fn switching_modes_moves_only_the_sidecar_and_keeps_the_init_container_first() {
    let classic_settings = settings(&["--sidecar", "classic"]);
    let native = run(JOB).output;
    let classic = inject(&native, &classic_settings).unwrap();
    assert!(classic.notes.is_empty(), "{:?}", classic.notes);
    assert_eq!(
        classic.output,
        inject(JOB, &classic_settings).unwrap().output
    );
    let d = &documents(&classic.output)[0];
    let spec = &d["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(
        names(spec["initContainers"].as_sequence().unwrap()),
        ["remora-init", "migrate"]
    );
    assert_eq!(
        names(spec["containers"].as_sequence().unwrap()),
        ["remora-proxy", "report"]
    );
    assert_eq!(run(&classic.output).output, native);
}

#[test]
fn a_changed_setting_replaces_the_sidecar_in_place() {
    let once = run(DEPLOYMENT).output;
    let other = inject(
        &once,
        &settings(&[
            "--proxy-image",
            "registry.local/proxy:2",
            "--init-image",
            "registry.local/init:2",
        ]),
    )
    .unwrap();
    let d = &documents(&other.output)[0];
    let init = d["spec"]["template"]["spec"]["initContainers"]
        .as_sequence()
        .unwrap();
    assert_eq!(names(init), ["remora-init", "remora-proxy"]);
    assert_eq!(init[0]["image"], "registry.local/init:2");
    assert_eq!(init[1]["image"], "registry.local/proxy:2");
    only_added(DEPLOYMENT, &other.output);
}

#[test]
fn without_identity_no_token_or_trust_anchors_are_mounted() {
    let out = inject(
        DEPLOYMENT,
        &settings(&["--control-url", "http://remora-control.remora:8086"]),
    )
    .unwrap()
    .output;
    let d = &documents(&out)[0];
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(
        names(spec["volumes"].as_sequence().unwrap()),
        ["data", "remora-xtables-lock"]
    );
    assert_eq!(spec["initContainers"][1]["name"], "remora-proxy");
    assert!(spec["initContainers"][1].get("volumeMounts").is_none());
}

#[test]
fn json_and_flow_style_are_written_out_in_full_saying_so() {
    let json = "{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {\"name\": \"p\"}, \"spec\": {\"containers\": [{\"name\": \"a\", \"image\": \"a\"}]}}\n";
    let injected = run(json);
    let out: serde_json::Value = serde_json::from_str(&injected.output).unwrap();
    assert_eq!(out["spec"]["initContainers"][1]["name"], "remora-proxy");
    assert_eq!(injected.notes.len(), 1, "{:?}", injected.notes);
    assert!(injected.notes[0].contains("written out in full"));
    // A block document whose lists are empty flow ones is still right.
    let flow_lists = "kind: Pod\nmetadata:\n  name: p\n  annotations: {}\nspec:\n  initContainers: []\n  containers:\n  - name: a\n";
    let out = run(flow_lists).output;
    let d: Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(d["spec"]["initContainers"][1]["name"], "remora-proxy");
    assert_eq!(d["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    assert_eq!(run(&out).output, out);
}

#[test]
fn a_stream_without_a_last_newline_is_still_edited_in_place() {
    let input = DEPLOYMENT.split("---\n").next().unwrap().trim_end();
    let injected = run(input);
    assert!(injected.notes.is_empty(), "{:?}", injected.notes);
    only_added(input, &injected.output);
}

#[test]
fn host_network_pods_and_other_kinds_are_left_alone() {
    let input = "kind: DaemonSet\nmetadata:\n  name: agent\nspec:\n  template:\n    spec:\n      hostNetwork: true\n      containers:\n      - name: a\n---\nkind: ConfigMap\nmetadata:\n  name: c\n# trailing comment\n";
    let injected = run(input);
    assert_eq!(injected.output, input);
    assert_eq!(injected.notes.len(), 1);
    assert!(
        injected.notes[0].contains("hostNetwork"),
        "{:?}",
        injected.notes
    );
}

#[test]
fn bad_annotations_and_bad_yaml_say_what_and_where() {
    let bad = |annotation: &str| {
        let input = format!(
            "kind: ConfigMap\n---\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    {annotation}\nspec:\n  containers:\n  - name: a\n"
        );
        inject(&input, &settings(&[])).unwrap_err().to_string()
    };
    assert_eq!(
        bad("remora.io/sidecar: sometimes"),
        "line 2: document 2: Pod/p: annotation remora.io/sidecar: \"sometimes\" is not native or classic"
    );
    assert!(bad("remora.io/app-port: http")
        .contains("remora.io/app-port: \"http\" is not a port number"));
    assert!(bad("remora.io/app-port: '4191'").contains("one of the proxy's own"));
    assert!(bad("remora.io/proxy-cpu-limit: lots").contains("Kubernetes quantity"));
    assert!(bad("remora.io/proxy-log-level: 'remora=loud'").contains("invalid log level"));
    assert!(bad("remora.io/service: Not_A_Name").contains("not a valid service name"));
    assert_eq!(
        bad("remora.io/transparent: maybe"),
        "line 2: document 2: Pod/p: annotation remora.io/transparent: \"maybe\" is not enabled or disabled"
    );
    for ports in [
        "'22,ssh'",
        "'0'",
        "''",
        "'22,,80'",
        "'70000'",
        "'8000-8100'",
    ] {
        let e = bad(&format!("remora.io/skip-inbound-ports: {ports}"));
        assert!(
            e.contains("annotation remora.io/skip-inbound-ports: ")
                && e.contains("is not comma-separated port numbers (22,9100)"),
            "{e}"
        );
    }
    assert!(bad("remora.io/skip-outbound-ports: 'db'")
        .contains("annotation remora.io/skip-outbound-ports: \"db\" is not comma-separated"));
    let e = inject(
        "kind: ConfigMap\n---\nkind: Pod\nmetadata:\n  name: [unclosed\n",
        &settings(&[]),
    )
    .unwrap_err();
    assert_eq!((e.document, e.line), (2, 6), "{e}");
    assert!(
        e.message.contains("flow sequence at line 5 column 9"),
        "{e}"
    );
}

#[test]
fn a_token_secret_annotation_mounts_that_secret_instead_of_the_projected_token() {
    let input = DEPLOYMENT.replace(
        "    metadata:\n      labels:\n",
        "    metadata:\n      annotations:\n        remora.io/token-secret: web-remora-token\n      labels:\n",
    );
    let out = run(&input).output;
    let d = &documents(&out)[0];
    let token = &d["spec"]["template"]["spec"]["volumes"][1];
    assert_eq!(token["name"], "remora-token");
    assert_eq!(token["secret"]["secretName"], "web-remora-token");
    assert_eq!(token["secret"]["items"][0]["path"], "token");
    assert!(token.get("projected").is_none());
    let bad = input.replace("web-remora-token", "Web_Token");
    let e = inject(&bad, &settings(&[])).unwrap_err();
    assert!(
        e.message
            .contains("remora.io/token-secret: \"Web_Token\" is not a Secret's name"),
        "{e}"
    );
}

/// A pod whose probes are of every kind: of the app's port (8080), by
/// number and by name, with and without a path, with a query, in flow
/// style, over HTTPS, tcpSocket and grpc; and those inject leaves alone
/// (of another port, which is not redirected; another host; exec).
const PROBED: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: api
  labels: {app: api}
spec:
  containers:
  - name: api
    image: api:1
    ports:
    - name: http
      containerPort: 8080
    - name: status
      containerPort: 9000
    # by the port's name
    livenessProbe:
      httpGet:
        port: http   # the app's
        path: /healthz
        httpHeaders:
        - name: X-Probe
          value: live
      periodSeconds: 5
    readinessProbe:
      httpGet: {port: 8080, path: '/ready?deep=1'}
    startupProbe:
      httpGet:
        port: status
  - name: worker
    image: worker:1
    livenessProbe:
      httpGet:
        scheme: HTTPS
        port: 8080
        path: /healthz
    readinessProbe:
      tcpSocket:
        port: 8080
      periodSeconds: 2
    startupProbe:
      grpc:
        port: 8080
        service: shop.Api
  - name: side
    image: side:1
    livenessProbe:
      exec:
        command: ['true']
    readinessProbe:
      httpGet:
        host: 10.1.2.3
        port: 80
    startupProbe:
      httpGet:
        scheme: HTTP
        port: 8080
        path: healthz
";

fn probe_get<'a>(pod: &'a Value, container: usize, probe: &str) -> &'a Value {
    &pod["spec"]["containers"][container][probe]["httpGet"]
}

#[test]
fn http_probes_are_pointed_at_the_proxy_which_is_told_their_targets() {
    let injected = run(PROBED);
    // All edited in place, the flow-style probe included.
    assert!(injected.notes.is_empty(), "{:?}", injected.notes);
    let out = &injected.output;
    let pod: Value = serde_yaml::from_str(out).unwrap();
    let asked = |get: &Value| (get["path"].clone(), get["port"].clone());
    let rewritten = |target: &str| {
        (
            Value::from(format!("/app-probe/{target}")),
            Value::from(4191),
        )
    };
    assert_eq!(
        asked(probe_get(&pod, 0, "livenessProbe")),
        rewritten("8080/healthz")
    );
    assert_eq!(
        probe_get(&pod, 0, "livenessProbe")["httpHeaders"][0]["value"],
        "live"
    );
    assert_eq!(
        asked(probe_get(&pod, 0, "readinessProbe")),
        rewritten("8080/ready?deep=1")
    );
    // A path without its `/`, as the kubelet reads it.
    assert_eq!(
        asked(probe_get(&pod, 2, "startupProbe")),
        rewritten("8080/healthz")
    );
    // HTTPS, asked in plain HTTP of the proxy, which asks the app in TLS.
    let https = probe_get(&pod, 1, "livenessProbe");
    assert_eq!(asked(https), rewritten("https:8080/healthz"));
    assert_eq!(https["scheme"], "HTTP");
    // tcpSocket and grpc become HTTP probes of the proxy; the rest of the
    // probe stays.
    let worker = &pod["spec"]["containers"][1];
    assert_eq!(
        asked(probe_get(&pod, 1, "readinessProbe")),
        rewritten("tcp:8080")
    );
    assert!(worker["readinessProbe"].get("tcpSocket").is_none());
    assert_eq!(worker["readinessProbe"]["periodSeconds"], 2);
    assert_eq!(
        asked(probe_get(&pod, 1, "startupProbe")),
        rewritten("grpc:8080/shop.Api")
    );
    assert!(worker["startupProbe"].get("grpc").is_none());
    // Left as they were: of another port (no path: the kubelet's `/`),
    // exec, another host.
    let was: Value = serde_yaml::from_str(PROBED).unwrap();
    for (container, probe) in [
        (0, "startupProbe"),
        (2, "livenessProbe"),
        (2, "readinessProbe"),
    ] {
        assert_eq!(
            pod["spec"]["containers"][container][probe],
            was["spec"]["containers"][container][probe],
            "{container} {probe}"
        );
    }
    // Each target once, in the order met.
    let sidecar = &pod["spec"]["initContainers"][1];
    assert_eq!(
        env(sidecar, "REMORA_APP_PROBES"),
        Some("8080/healthz,8080/ready?deep=1,https:8080/healthz,tcp:8080,grpc:8080/shop.Api")
    );
    // Only the probes' own lines are new: a block probe keeps its keys'
    // order and the lines around them, comments included.
    assert!(
        out.contains(
            "    # by the port's name\n    livenessProbe:\n      httpGet:\n        port: 4191\n        path: /app-probe/8080/healthz\n        httpHeaders:\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("    readinessProbe:\n      httpGet:\n        port: 4191\n        path: /app-probe/8080/ready?deep=1\n    startupProbe:\n"),
        "{out}"
    );
    assert!(
        out.contains("    readinessProbe:\n      periodSeconds: 2\n      httpGet:\n        port: 4191\n        path: /app-probe/tcp:8080\n"),
        "{out}"
    );
    // Rewritten twice is rewritten once.
    let again = run(out);
    assert_eq!(again.output, *out);
    assert!(again.notes.is_empty(), "{:?}", again.notes);
}

#[test]
fn probes_are_rewritten_in_classic_mode_too_and_kept_when_transparent_mode_goes() {
    let classic = inject(PROBED, &settings(&["--sidecar", "classic"]))
        .unwrap()
        .output;
    let pod: Value = serde_yaml::from_str(&classic).unwrap();
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    assert_eq!(names(containers), ["remora-proxy", "api", "worker", "side"]);
    assert_eq!(
        probe_get(&pod, 1, "livenessProbe")["path"],
        "/app-probe/8080/healthz"
    );
    let targets =
        Some("8080/healthz,8080/ready?deep=1,https:8080/healthz,tcp:8080,grpc:8080/shop.Api");
    assert_eq!(env(&containers[0], "REMORA_APP_PROBES"), targets);
    // A probe already pointed at the proxy still needs it: without
    // transparent mode it stays, and so does its target.
    let opaque = inject(
        &classic,
        &settings(&["--sidecar", "classic", "--transparent", "false"]),
    )
    .unwrap()
    .output;
    let pod: Value = serde_yaml::from_str(&opaque).unwrap();
    assert!(pod["spec"].get("initContainers").is_none(), "{opaque}");
    assert_eq!(
        env(&pod["spec"]["containers"][0], "REMORA_APP_PROBES"),
        targets
    );
}

#[test]
fn a_probe_of_a_port_the_container_does_not_name_is_an_error_naming_both() {
    let input = PROBED.replace("port: status", "port: metrics");
    let e = inject(&input, &settings(&[])).unwrap_err();
    assert_eq!(
        e.message,
        "Pod/api: container api: startupProbe: port \"metrics\" is the name of none of the container's ports"
    );
    let input = PROBED.replace(
        "path: /healthz\n        httpHeaders",
        "path: /healthz,deep\n        httpHeaders",
    );
    let e = inject(&input, &settings(&[])).unwrap_err();
    assert!(
        e.message
            .contains("container api: livenessProbe: \"8080/healthz,deep\" has a comma"),
        "{e}"
    );
    // Without transparent mode, probes are not read.
    let out = inject(&input, &settings(&["--transparent", "false"]))
        .unwrap()
        .output;
    only_added(&input, &out);
}

#[test]
fn the_init_container_runs_remora_proxy_init_as_root_with_only_the_network_capabilities() {
    let input = DEPLOYMENT.replace(
        "    metadata:\n      labels:\n",
        "    metadata:\n      annotations:\n        remora.io/skip-inbound-ports: '22, 9100'\n        remora.io/skip-outbound-ports: '5432'\n      labels:\n",
    );
    let out = run(&input).output;
    only_added(&input, &out);
    let d = &documents(&out)[0];
    let spec = &d["spec"]["template"]["spec"];
    let init = &spec["initContainers"][0];
    let expected: Value = serde_yaml::from_str(&format!(
        "\
name: remora-init
image: {DEFAULT_INIT_IMAGE}
imagePullPolicy: IfNotPresent
args: [init]
env:
# Only the app's port goes to the sidecar: its other ports stay the app's.
- name: REMORA_INBOUND_PORTS
  value: '8000'
- name: REMORA_SKIP_INBOUND_PORTS
  value: 22,9100
- name: REMORA_SKIP_OUTBOUND_PORTS
  value: '5432'
resources:
  requests: {{cpu: 10m, memory: 10Mi}}
  limits: {{memory: 32Mi}}
securityContext:
  runAsUser: 0
  runAsNonRoot: false
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    add: [NET_ADMIN, NET_RAW]
    drop: [ALL]
  seccompProfile: {{type: RuntimeDefault}}
volumeMounts:
- name: remora-xtables-lock
  mountPath: /run
"
    ))
    .unwrap();
    assert_eq!(*init, expected);
    let volumes = spec["volumes"].as_sequence().unwrap();
    assert_eq!(volumes[3]["name"], "remora-xtables-lock");
    assert_eq!(volumes[3]["emptyDir"], Value::Mapping(Default::default()));
    // Without the annotations, only the app's port.
    let plain = &documents(&run(DEPLOYMENT).output)[0];
    let plain_env = &plain["spec"]["template"]["spec"]["initContainers"][0]["env"];
    assert_eq!(
        *plain_env,
        serde_yaml::from_str::<Value>("[{name: REMORA_INBOUND_PORTS, value: '8000'}]").unwrap()
    );
    // Another port list replaces it where it stands.
    let other = inject(&out.replace("'22, 9100'", "'2222'"), &settings(&[]))
        .unwrap()
        .output;
    let d = &documents(&other)[0];
    let init = &d["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(env(init, "REMORA_SKIP_INBOUND_PORTS"), Some("2222"));
}

#[test]
fn transparent_mode_is_opted_out_of_by_flag_or_annotation_the_pod_s_winning() {
    let opt = |flag: &str, annotation: Option<&str>| {
        let mut input = PROBED.to_string();
        if let Some(value) = annotation {
            input = input.replace(
                "  labels: {app: api}\n",
                &format!(
                    "  labels: {{app: api}}\n  annotations:\n    remora.io/transparent: {value}\n"
                ),
            );
        }
        let out = inject(&input, &settings(&["--transparent", flag]))
            .unwrap()
            .output;
        let pod: Value = serde_yaml::from_str(&out).unwrap();
        let init = names(pod["spec"]["initContainers"].as_sequence().unwrap())
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        let rewritten = probe_get(&pod, 0, "livenessProbe")["port"] == 4191;
        (init, rewritten, out, input)
    };
    let (init, rewritten, ..) = opt("true", None);
    assert_eq!(init, ["remora-init", "remora-proxy"]);
    assert!(rewritten);
    let (init, rewritten, out, input) = opt("false", None);
    assert_eq!(init, ["remora-proxy"]);
    assert!(!rewritten);
    only_added(&input, &out);
    assert!(!out.contains("remora-xtables-lock"), "{out}");
    assert!(!out.contains("REMORA_APP_PROBES"), "{out}");
    let (init, rewritten, ..) = opt("true", Some("disabled"));
    assert_eq!(init, ["remora-proxy"]);
    assert!(!rewritten);
    let (init, rewritten, ..) = opt("false", Some("enabled"));
    assert_eq!(init, ["remora-init", "remora-proxy"]);
    assert!(rewritten);
}

#[test]
fn turning_transparent_mode_off_takes_the_init_container_and_its_volume_away() {
    let on = run(DEPLOYMENT).output;
    let off = settings(&["--transparent", "false"]);
    let removed = inject(&on, &off).unwrap();
    assert!(removed.notes.is_empty(), "{:?}", removed.notes);
    assert_eq!(removed.output, inject(DEPLOYMENT, &off).unwrap().output);
    let d = &documents(&removed.output)[0];
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(
        names(spec["initContainers"].as_sequence().unwrap()),
        ["remora-proxy"]
    );
    // In classic mode the init container was the only one: the list goes.
    let classic = settings(&["--sidecar", "classic"]);
    let on = inject(DEPLOYMENT, &classic).unwrap().output;
    let off = inject(
        &on,
        &settings(&["--sidecar", "classic", "--transparent", "false"]),
    )
    .unwrap()
    .output;
    let d = &documents(&off)[0];
    assert!(d["spec"]["template"]["spec"]
        .get("initContainers")
        .is_none());
    only_added(DEPLOYMENT, &off);
    // And on again: as if it had never been off.
    assert_eq!(inject(&off, &classic).unwrap().output, on);
}
