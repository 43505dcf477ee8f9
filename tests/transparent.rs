//! Transparent mode in network namespaces this test makes (it needs root,
//! as CI has): three "pods" on a bridge, each a namespace with its app,
//! its sidecar running as the proxy's own uid, and the iptables rules of
//! `remora-proxy init`; the control plane in the bridge's namespace, run
//! `--kubernetes` against a stand-in for the API server (no cluster here:
//! `tests/src/fake_kube.rs` speaks its TokenReview and list-and-watch
//! JSON). The client pod's curl calls `http://<web pod's IP>:8080/` and
//! `http://web:8080/`, and its redis-cli reaches `<cache pod's IP>:6379`
//! and the cache Service's ClusterIP, with no proxy settings at all: each
//! call is intercepted on both sides, carried over mutual TLS, authorized,
//! and counted. The cache pod's identity comes from its projected token
//! through TokenReview, its endpoint from its EndpointSlice. The apps
//! listen on loopback only, so nothing but the callee's sidecar can have
//! reached them.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use remora_e2e::fake_kube::{self, FakeKube};
use remora_e2e::identity::{grant_tokens, spiffe, token_file};
use remora_e2e::process::{binary, Running};
use remora_e2e::{metric_value, requests, tools};
use tokio::process::Command;

const HUB_IP: &str = "10.77.0.254";
const API_PORT: u16 = 8086;
/// The ClusterIP of `fake_kube::service`'s Services.
const CLUSTER_IP: &str = "10.96.0.10";
/// The cache pod's projected service-account token, which only the API
/// server (the stand-in) judges.
const CACHE_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.Y2FjaGU.c2lnbmVk";

/// Relays `127.0.0.1:PORT`, in the namespace it runs in, to a Unix socket:
/// how the control plane in the hub reaches the stand-in API server, which
/// listens in the test's own namespace (a Unix socket is a file, seen from
/// every namespace).
const RELAY: &str = r#"
import socket, sys, threading
port, path = int(sys.argv[1]), sys.argv[2]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen(64)
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass
while True:
    client, _ = server.accept()
    unix = socket.socket(socket.AF_UNIX)
    unix.connect(path)
    threading.Thread(target=pipe, args=(client, unix), daemon=True).start()
    threading.Thread(target=pipe, args=(unix, client), daemon=True).start()
"#;

/// An app that answers `GET` with the caller's identity, as its sidecar
/// named it (`none` when no sidecar did): `PORT [ADDRESS]`, on loopback
/// unless told.
const WHO_CALLED: &str = r#"
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.headers.get("remora-peer-identity", "none").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
address = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
http.server.ThreadingHTTPServer((address, int(sys.argv[1])), Handler).serve_forever()
"#;

/// The namespaces of one run, named after its process, deleted on drop.
struct Namespaces {
    hub: String,
    pods: Vec<String>,
}

impl Namespaces {
    /// The hub with a bridge at [`HUB_IP`], and a pod for each of `ips`
    /// (`10.77.0.N`) wired to it.
    fn create(ips: &[&str]) -> Namespaces {
        let run = std::process::id();
        let hub = format!("remora-{run}-hub");
        let pods: Vec<String> = (0..ips.len())
            .map(|i| format!("remora-{run}-pod{i}"))
            .collect();
        let namespaces = Namespaces { hub, pods };
        let hub = &namespaces.hub;
        ip(&["netns", "add", hub]);
        ip(&["-n", hub, "link", "set", "lo", "up"]);
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            hub,
            "addr",
            "add",
            &format!("{HUB_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", hub, "link", "set", "br0", "up"]);
        for (i, (pod, address)) in namespaces.pods.iter().zip(ips).enumerate() {
            let port = format!("port{i}");
            ip(&["netns", "add", pod]);
            ip(&["-n", pod, "link", "set", "lo", "up"]);
            ip(&[
                "-n", hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                pod,
            ]);
            ip(&["-n", hub, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                pod,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", pod, "link", "set", "eth0", "up"]);
        }
        namespaces
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.pods.iter().chain([&self.hub]) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `program args` inside `ns`.
fn inside(ns: &str, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .kill_on_drop(true);
    command
}

/// As [`inside`], as the proxy's uid and gid.
fn inside_as_proxy(ns: &str, program: &Path, args: &[&str]) -> Command {
    let id = remora_api::PROXY_UID.to_string();
    let mut command = Command::new("ip");
    command
        .args([
            "netns", "exec", ns, "setpriv", "--reuid", &id, "--regid", &id,
        ])
        .args(["--clear-groups", "--"])
        .arg(program)
        .args(args)
        .kill_on_drop(true);
    command
}

async fn output(mut command: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .expect("a command to finish within 20s")
        .expect("running a command")
}

/// What `curl` in `ns` got from `url`: status and body.
async fn curl(ns: &str, url: &str) -> (String, String) {
    let curl = tools::find("curl", "curl").expect("curl");
    let args = ["-sS", "--max-time", "10", "-w", "\n%{http_code}", url];
    let out = output(inside(ns, &curl, &args)).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut body = body.to_string();
    if !out.stderr.is_empty() {
        body.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (status.to_string(), body)
}

/// A pod's sidecar's `/metrics`.
async fn metrics(ns: &str) -> String {
    curl(ns, "http://127.0.0.1:4191/metrics").await.1
}

/// Whether everything transparent mode needs is here; `false` (skipped,
/// saying why) elsewhere than CI, which must have it.
fn can_run() -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "transparent mode's test needs root, as CI runs"
        );
        eprintln!("not root: skipping transparent mode's test");
        return false;
    }
    ["ip", "iptables", "ip6tables", "setpriv", "curl", "python3"]
        .iter()
        .all(|c| tools::find(c, if *c == "ip" { "iproute2" } else { c }).is_some())
}

#[tokio::test]
async fn calls_by_pod_ip_are_intercepted_carried_over_mutual_tls_and_counted() {
    if !can_run() {
        return;
    }
    let (Some(redis_server), Some(redis_cli)) = (
        tools::find("redis-server", "redis-server"),
        remora_e2e::redis::cli(),
    ) else {
        return;
    };
    let python = tools::find("python3", "python3").unwrap();
    let (client_ip, web_ip, cache_ip) = ("10.77.0.1", "10.77.0.2", "10.77.0.3");
    let ns = Namespaces::create(&[client_ip, web_ip, cache_ip]);
    let (client, web, cache) = (&ns.pods[0], &ns.pods[1], &ns.pods[2]);
    // A ClusterIP is routed nowhere: the client's rules redirect its
    // connections before they would leave.
    ip(&["-n", client, "route", "add", "default", "via", HUB_IP]);

    // Files the proxies read as their own uid.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // client and web prove themselves with tokens of tokens.yaml; cache
    // with its projected token, through TokenReview.
    let tokens = grant_tokens(dir.path(), &[("client", "c-token"), ("web", "w-token")]);
    std::fs::write(token_file(dir.path(), "cache"), CACHE_TOKEN).unwrap();

    // The API server's stand-in: the cache pod's token, and its Service
    // (ClusterIP 10.96.0.10), Pod and EndpointSlice.
    let fake = FakeKube::start().await;
    fake.service_account_token(CACHE_TOKEN, "default", "cache", &["remora-control"]);
    fake.apply(fake_kube::service("default", "cache", 6379, 6379));
    fake.apply(fake_kube::pod(
        "default",
        "cache-1",
        "cache",
        cache_ip,
        Some(4143),
    ));
    fake.apply(fake_kube::endpoint_slice(
        "default",
        "cache-1a2b3",
        "cache",
        6379,
        &[(cache_ip, "cache-1", true)],
    ));
    let socket = dir.path().join("kube.sock");
    let unix = tokio::net::UnixListener::bind(&socket).unwrap();
    let api_server = fake.addr;
    tokio::spawn(async move {
        while let Ok((mut relayed, _)) = unix.accept().await {
            tokio::spawn(async move {
                if let Ok(mut api) = tokio::net::TcpStream::connect(api_server).await {
                    let _ = tokio::io::copy_bidirectional(&mut relayed, &mut api).await;
                }
            });
        }
    });
    let relay = dir.path().join("relay.py");
    std::fs::write(&relay, RELAY).unwrap();
    let port = api_server.port().to_string();
    let relay_args = [relay.to_str().unwrap(), &port, socket.to_str().unwrap()];
    let _relay = inside(&ns.hub, &python, &relay_args).spawn().unwrap();
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "services:
  web: { identity: web, inbound: { allow: [client] } }
  cache: { protocol: tcp, identity: cache, inbound: { allow: [client] } }
  client: { identity: client }
",
    )
    .unwrap();
    let data = dir.path().join("control");
    let kubeconfig = fake.kubeconfig().display().to_string();
    let api = format!("{HUB_IP}:{API_PORT}");
    let control_args = [
        "--config",
        mesh.to_str().unwrap(),
        "--tokens",
        &tokens,
        "--data-dir",
        data.to_str().unwrap(),
        "--api",
        &api,
        "--admin",
        &format!("{HUB_IP}:9990"),
        "--kubernetes",
        "--kubeconfig",
        &kubeconfig,
        "--kubernetes-namespace",
        "default",
        "--log-format",
        "json",
    ];
    let control = Running::spawn(
        inside(&ns.hub, &binary("remora-control"), &control_args),
        "remora-control",
    )
    .await;
    // Ready once it has listed what it watches through the relay.
    let mut listed = false;
    for _ in 0..150 {
        if curl(&ns.hub, &format!("http://{HUB_IP}:9990/ready"))
            .await
            .0
            == "200"
        {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        listed,
        "the control plane is not ready:\n{}",
        control.logs().join("\n")
    );
    let anchors = data.join("ca.crt");
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // Each pod: its app on loopback, the rules, then its sidecar.
    let mut apps = Vec::new();
    let script = dir.path().join("who_called.py");
    std::fs::write(&script, WHO_CALLED).unwrap();
    for pod in [client, web] {
        apps.push(
            inside(pod, &python, &[script.to_str().unwrap(), "8080"])
                .spawn()
                .unwrap(),
        );
        // A second port, as a metrics endpoint, on every address.
        apps.push(
            inside(pod, &python, &[script.to_str().unwrap(), "9090", "0.0.0.0"])
                .spawn()
                .unwrap(),
        );
    }
    apps.push(
        inside(
            cache,
            &redis_server,
            &["--bind", "127.0.0.1", "--port", "6379", "--save", ""],
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap(),
    );
    let mut sidecars: Vec<Running> = Vec::new();
    for (pod, service, pod_ip, app_port) in [
        (client, "client", client_ip, "8080"),
        (web, "web", web_ip, "8080"),
        (cache, "cache", cache_ip, "6379"),
    ] {
        // The web pod's rules as inject asks for them: its app's port only.
        let init_args: &[&str] = match service {
            "web" => &["init", "--inbound-ports", "8080"],
            _ => &["init"],
        };
        let init = output(inside(pod, &binary("remora-proxy"), init_args)).await;
        assert!(
            init.status.success(),
            "init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let token = token_file(dir.path(), service);
        let control_url = format!("https://{api}");
        let app = format!("127.0.0.1:{app_port}");
        let args = [
            "--control-url",
            &control_url,
            "--service",
            service,
            "--token-file",
            &token,
            "--trust-anchors",
            anchors.to_str().unwrap(),
            "--pod-ip",
            pod_ip,
            "--app",
            &app,
            "--log-format",
            "json",
        ];
        let sidecar = inside_as_proxy(pod, &binary("remora-proxy"), &args);
        sidecars.push(Running::spawn(sidecar, "remora-proxy").await);
    }
    for pod in [client, web, cache] {
        let mut ready = false;
        for _ in 0..100 {
            if curl(pod, "http://127.0.0.1:4191/ready").await.0 == "200" {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs: Vec<String> = sidecars.iter().flat_map(Running::logs).collect();
        assert!(ready, "{pod}'s sidecar is not ready:\n{}", logs.join("\n"));
    }

    // HTTP, by the web pod's IP and its app's port.
    let (status, body) = curl(client, &format!("http://{web_ip}:8080/")).await;
    let logs = || {
        let mut all: Vec<String> = sidecars.iter().flat_map(Running::logs).collect();
        all.extend(control.logs());
        all.join("\n")
    };
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200", spiffe("client").as_str()),
        "{}",
        logs()
    );
    let caller = metrics(client).await;
    assert_eq!(
        requests(
            &caller,
            &[
                "direction=\"outbound\"",
                "service=\"web\"",
                "route=\"original-dst\"",
                "tls=\"true\"",
                &format!("peer=\"{}\"", spiffe("web")),
            ]
        ),
        1.0,
        "{caller}"
    );
    let callee = metrics(web).await;
    assert_eq!(
        requests(
            &callee,
            &[
                "direction=\"inbound\"",
                "service=\"web\"",
                &format!("peer=\"{}\"", spiffe("client")),
            ]
        ),
        1.0,
        "{callee}"
    );

    // By name, as Kubernetes' DNS would resolve it: the mesh service the
    // authority names.
    let curl_by_name = |ns: &str| {
        let curl = tools::find("curl", "curl").expect("curl");
        let resolve = format!("web:8080:{web_ip}");
        let args = [
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &resolve,
            "http://web:8080/",
        ];
        output(inside(ns, &curl, &args))
    };
    let by_name = curl_by_name(client).await;
    assert_eq!(
        String::from_utf8_lossy(&by_name.stdout),
        spiffe("client"),
        "{}",
        String::from_utf8_lossy(&by_name.stderr)
    );
    // Outside the mesh (the control plane's admin port, in the hub): as it
    // is, in plaintext.
    let (status, _) = curl(client, &format!("http://{HUB_IP}:9990/live")).await;
    assert_eq!(status, "200", "{}", logs());
    let caller = metrics(client).await;
    assert_eq!(
        requests(
            &caller,
            &[
                "service=\"passthrough\"",
                "tls=\"false\"",
                "peer=\"unmeshed\""
            ]
        ),
        1.0,
        "{caller}"
    );
    // Named, but not a service of the mesh: asked of the control plane
    // once, then as it is, at once.
    let curl_path = tools::find("curl", "curl").expect("curl");
    let resolve = format!("outside:9990:{HUB_IP}");
    for _ in 0..2 {
        let args = [
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        let args: Vec<&str> = args
            .into_iter()
            .chain(["--resolve", &resolve, "http://outside:9990/live"])
            .collect();
        let named = output(inside(client, &curl_path, &args)).await;
        assert_eq!(String::from_utf8_lossy(&named.stdout), "200", "{}", logs());
    }
    let caller = metrics(client).await;
    assert_eq!(
        requests(&caller, &["service=\"passthrough\"", "tls=\"false\""]),
        3.0,
        "{caller}"
    );

    // TCP: redis-cli by the cache pod's IP.
    let ping = output(inside(
        client,
        &redis_cli,
        &["-h", cache_ip, "-p", "6379", "PING"],
    ))
    .await;
    assert_eq!(
        String::from_utf8_lossy(&ping.stdout).trim(),
        "PONG",
        "{}\n{}",
        String::from_utf8_lossy(&ping.stderr),
        logs()
    );
    let caller = metrics(client).await;
    let stream = format!(
        "remora_tcp_connections_total{{direction=\"outbound\",service=\"cache\",peer=\"{}\"}}",
        spiffe("cache")
    );
    assert_eq!(metric_value(&caller, &stream), 1.0, "{caller}");

    // TCP by the Service's ClusterIP, as a client that dialled
    // `cache:6379` through Kubernetes' DNS: the service, whose endpoint
    // the API server named and whose identity TokenReview granted.
    let set = output(inside(
        client,
        &redis_cli,
        &["-h", CLUSTER_IP, "-p", "6379", "SET", "k", "v"],
    ))
    .await;
    assert_eq!(
        String::from_utf8_lossy(&set.stdout).trim(),
        "OK",
        "{}\n{}",
        String::from_utf8_lossy(&set.stderr),
        logs()
    );
    let caller = metrics(client).await;
    assert_eq!(metric_value(&caller, &stream), 2.0, "{caller}");
    let callee = metrics(cache).await;
    let stream = format!(
        "remora_tcp_connections_total{{direction=\"inbound\",service=\"cache\",peer=\"{}\"}}",
        spiffe("client")
    );
    assert_eq!(metric_value(&callee, &stream), 2.0, "{callee}");
    assert!(
        fake.reviewed_audiences()
            .contains(&vec!["remora-control".to_string()]),
        "the cache pod's token was reviewed"
    );

    // From outside the mesh (the hub has no sidecar), a call to the app's
    // port meets the web pod's sidecar, which takes no plaintext; its
    // admin port is not redirected.
    let (status, _) = curl(&ns.hub, &format!("http://{web_ip}:8080/")).await;
    assert_eq!(status, "000", "plaintext from outside the mesh is refused");
    let (status, _) = curl(&ns.hub, &format!("http://{web_ip}:4191/ready")).await;
    assert_eq!(status, "200");
    // The web pod's other port is its app's, as without a mesh: only the
    // app's port was redirected. The client pod's rules took every port,
    // so the same call meets its sidecar.
    let (status, body) = curl(&ns.hub, &format!("http://{web_ip}:9090/")).await;
    assert_eq!((status.as_str(), body.as_str()), ("200", "none"));
    let (status, _) = curl(&ns.hub, &format!("http://{client_ip}:9090/")).await;
    assert_eq!(status, "000", "every port redirected to the sidecar");
    // From inside the mesh too: the client's sidecar knows the web pod's
    // app is at 8080 (its registration says), so it goes around the web
    // pod's sidecar to the other port, as it is.
    let (status, body) = curl(client, &format!("http://{web_ip}:9090/")).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200", "none"),
        "{}",
        logs()
    );
    let caller = metrics(client).await;
    assert_eq!(
        requests(&caller, &["service=\"passthrough\"", "tls=\"false\""]),
        4.0,
        "{caller}"
    );
    drop(apps);
}
