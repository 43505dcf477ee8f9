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
    let sidecar = &pod["spec"]["initContainers"][0];
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
    assert_eq!(names, ["data", "remora-token", "remora-trust-anchors"]);
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
    assert_eq!(init[0]["name"], "remora-proxy");
    assert_eq!(init[1]["name"], "migrate");
    assert_eq!(init[0]["resources"]["limits"]["memory"], "64Mi");
    let env = init[0]["env"].as_sequence().unwrap();
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
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "remora-proxy");
    let env = pod["spec"]["initContainers"][0]["env"]
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
    assert!(spec.get("initContainers").is_none());
    assert!(spec["containers"][0].get("restartPolicy").is_none());
    assert_eq!(
        spec["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][1],
        "wait-ready"
    );
    // Back to native: the sidecar leaves `containers`, and the result is
    // what injecting native at once gives.
    let native = run(&classic).output;
    assert_eq!(documents(&native), documents(&run(DEPLOYMENT).output));
}

#[test]
fn a_changed_setting_replaces_the_sidecar_in_place() {
    let once = run(DEPLOYMENT).output;
    let other = inject(
        &once,
        &settings(&["--proxy-image", "registry.local/proxy:2"]),
    )
    .unwrap();
    assert_eq!(
        documents(&other.output)[0]["spec"]["template"]["spec"]["initContainers"][0]["image"],
        "registry.local/proxy:2"
    );
    assert_eq!(
        documents(&other.output)[0]["spec"]["template"]["spec"]["initContainers"]
            .as_sequence()
            .unwrap()
            .len(),
        1
    );
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
    assert_eq!(spec["volumes"].as_sequence().unwrap().len(), 1);
    assert!(spec["initContainers"][0].get("volumeMounts").is_none());
}

#[test]
fn json_and_flow_style_are_written_out_in_full_saying_so() {
    let json = "{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {\"name\": \"p\"}, \"spec\": {\"containers\": [{\"name\": \"a\", \"image\": \"a\"}]}}\n";
    let injected = run(json);
    let out: serde_json::Value = serde_json::from_str(&injected.output).unwrap();
    assert_eq!(out["spec"]["initContainers"][0]["name"], "remora-proxy");
    assert_eq!(injected.notes.len(), 1, "{:?}", injected.notes);
    assert!(injected.notes[0].contains("written out in full"));
    // A block document whose lists are empty flow ones is still right.
    let flow_lists = "kind: Pod\nmetadata:\n  name: p\n  annotations: {}\nspec:\n  initContainers: []\n  containers:\n  - name: a\n";
    let out = run(flow_lists).output;
    let d: Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(d["spec"]["initContainers"][0]["name"], "remora-proxy");
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
