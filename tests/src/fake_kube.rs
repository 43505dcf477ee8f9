//! A stand-in for the Kubernetes API server, for the tests of
//! `remora-control --kubernetes` where no cluster can be run: an HTTPS
//! server (rustls, with a CA of its own made by rcgen) that speaks the
//! API's real JSON for what the control plane uses, and nothing else:
//!
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews`: a TokenReview in,
//!   the same TokenReview with its `status` out (`201`), judged as the API
//!   server judges a service-account token: known, and projected for one of
//!   the audiences asked for;
//! - `GET` of `services` and `pods` (`/api/v1`) and `endpointslices`
//!   (`/apis/discovery.k8s.io/v1`), of every namespace or of one
//!   (`/namespaces/NS/...`): a list (`kind: ServiceList`, the items without
//!   their kind, `metadata.resourceVersion`), or with `watch=true` a stream
//!   of `{"type":"ADDED|MODIFIED|DELETED","object":...}` lines after the
//!   `resourceVersion` asked for, with a `BOOKMARK` when asked
//!   (`allowWatchBookmarks`);
//! - like etcd behind a real API server, history is compacted
//!   ([`FakeKube::compact`]): a watch from a version older than the
//!   compaction gets, as the real server answers it, `200` and one `ERROR`
//!   event holding a `Status` with `code: 410`, `reason: Expired`, and the
//!   client must list again.
//!
//! Every request must carry the control plane's bearer token, as the real
//! server requires its service account's; every request is counted by
//! resource and verb, for tests to see lists and watches happen.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// The bearer token the control plane's kubeconfig carries.
pub const CONTROL_PLANE_TOKEN: &str = "remora-control-service-account-token";

type Body = BoxBody<Bytes, Infallible>;

/// The kinds the fake serves: plural, kind, apiVersion, path prefix.
const RESOURCES: &[(&str, &str, &str, &str)] = &[
    ("services", "Service", "v1", "/api/v1"),
    ("pods", "Pod", "v1", "/api/v1"),
    (
        "endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
        "/apis/discovery.k8s.io/v1",
    ),
];

/// One change of an object, as a watch event tells it.
#[derive(Clone, Debug)]
struct Change {
    version: u64,
    resource: &'static str,
    namespace: String,
    kind: &'static str,
    object: Value,
}

/// A service account's token, as the fake's TokenReview knows it.
#[derive(Clone, Debug)]
struct Token {
    username: String,
    audiences: Vec<String>,
}

#[derive(Default)]
struct Store {
    /// The last resourceVersion given out.
    version: u64,
    /// Every object, by resource, namespace and name.
    objects: BTreeMap<(&'static str, String, String), Value>,
    /// Changes since the last compaction, oldest first.
    history: Vec<Change>,
    /// A watch from a version below this one is answered `410 Gone`.
    oldest: u64,
    tokens: HashMap<String, Token>,
    /// Requests by `VERB RESOURCE` (`list pods`, `watch pods`, `create
    /// tokenreviews`).
    requests: BTreeMap<String, usize>,
    /// Every request as RBAC sees it: verb, resource, namespace (`None`:
    /// cluster-wide).
    log: Vec<Asked>,
    /// The audiences of every TokenReview asked for, in order.
    reviewed_audiences: Vec<Vec<String>>,
    /// `VERB RESOURCE`s that RBAC does not grant: `403`.
    forbidden: std::collections::HashSet<String>,
}

/// A request as RBAC judges it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    /// `None`: cluster-wide.
    pub namespace: Option<String>,
}

/// The fake API server; it stops when dropped.
pub struct FakeKube {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    live: broadcast::Sender<Change>,
    /// Bumped by a compaction: every open watch ends.
    epoch: watch::Sender<u64>,
    dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        let dir = tempfile::tempdir().expect("a temp dir");
        let tls = tls_config(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let addr = listener.local_addr().expect("an address");
        let store = Arc::new(Mutex::new(Store {
            version: 1,
            oldest: 1,
            ..Store::default()
        }));
        let (live, _) = broadcast::channel(1024);
        let (epoch, _) = watch::channel(0);
        let server = Server {
            store: store.clone(),
            live: live.clone(),
            epoch: epoch.clone(),
        };
        let task = tokio::spawn(accept(listener, tls, server));
        FakeKube {
            addr,
            store,
            live,
            epoch,
            dir,
            task,
        }
    }

    /// A kubeconfig naming this server, its CA and the control plane's
    /// token, as `kubectl config view --raw` would write it.
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("kubeconfig");
        let ca = self.dir.path().join("ca.crt");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1
kind: Config
clusters:
  - name: fake
    cluster:
      server: https://{}
      certificate-authority: {}
users:
  - name: remora-control
    user:
      token: {CONTROL_PLANE_TOKEN}
contexts:
  - name: fake
    context: {{cluster: fake, user: remora-control}}
current-context: fake
",
                self.addr,
                ca.display()
            ),
        )
        .expect("writing the kubeconfig");
        path
    }

    /// Makes `token` a projected token of `namespace/account`, valid for
    /// `audiences`.
    pub fn service_account_token(
        &self,
        token: &str,
        namespace: &str,
        account: &str,
        audiences: &[&str],
    ) {
        self.user_token(
            token,
            &format!("system:serviceaccount:{namespace}:{account}"),
            audiences,
        );
    }

    /// Makes `token` one of the user `username` (not a service account).
    pub fn user_token(&self, token: &str, username: &str, audiences: &[&str]) {
        self.lock().tokens.insert(
            token.to_string(),
            Token {
                username: username.to_string(),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
            },
        );
    }

    /// Creates or replaces an object (its `kind` says which resource), as
    /// a watcher sees it: `ADDED` or `MODIFIED`.
    pub fn apply(&self, object: Value) {
        let change = self.lock().apply(object);
        let _ = self.live.send(change);
    }

    /// Deletes an object: `DELETED`, with its last state.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let change = self.lock().delete(kind, namespace, name);
        if let Some(change) = change {
            let _ = self.live.send(change);
        }
    }

    /// Makes the changes `change` makes unseen by watchers, then compacts
    /// the history past them, as etcd does, and ends every open watch: a
    /// watcher must list again to learn of them, and is told so by a
    /// `410 Gone` when it resumes its watch.
    pub fn compact(&self, change: impl FnOnce(&mut Unseen<'_>)) {
        {
            let mut store = self.lock();
            change(&mut Unseen { store: &mut store });
            store.version += 1;
            store.oldest = store.version;
            store.history.clear();
        }
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Answers `what` (`create tokenreviews`) `403`, as the API server
    /// does when RBAC grants it to nobody.
    pub fn forbid(&self, what: &str) {
        self.lock().forbidden.insert(what.to_string());
    }

    /// How many requests of `VERB RESOURCE` (`list pods`, `watch
    /// endpointslices`, `create tokenreviews`) were answered.
    pub fn requests(&self, what: &str) -> usize {
        self.lock().requests.get(what).copied().unwrap_or(0)
    }

    /// Every request answered, as RBAC would judge it.
    pub fn asked(&self) -> Vec<Asked> {
        self.lock().log.clone()
    }

    /// The audiences of every TokenReview asked for, in order.
    pub fn reviewed_audiences(&self) -> Vec<Vec<String>> {
        self.lock().reviewed_audiences.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("the fake's store")
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Changes no watcher sees (see [`FakeKube::compact`]).
pub struct Unseen<'a> {
    store: &'a mut Store,
}

impl Unseen<'_> {
    pub fn apply(&mut self, object: Value) {
        self.store.apply(object);
    }

    pub fn delete(&mut self, kind: &str, namespace: &str, name: &str) {
        self.store.delete(kind, namespace, name);
    }
}

impl Store {
    fn apply(&mut self, mut object: Value) -> Change {
        let kind = object["kind"].as_str().expect("an object with a kind");
        let &(resource, _, api_version, _) = RESOURCES
            .iter()
            .find(|r| r.1 == kind)
            .unwrap_or_else(|| panic!("the fake serves no {kind}"));
        object["apiVersion"] = json!(api_version);
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .expect("a namespaced object")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("a named object")
            .to_string();
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        object["metadata"]["uid"] = json!(format!("uid-{resource}-{namespace}-{name}"));
        let key = (resource, namespace.clone(), name);
        let kind_of_event = match self.objects.insert(key, object.clone()) {
            None => "ADDED",
            Some(_) => "MODIFIED",
        };
        let change = Change {
            version: self.version,
            resource,
            namespace,
            kind: kind_of_event,
            object,
        };
        self.history.push(change.clone());
        change
    }

    fn delete(&mut self, kind: &str, namespace: &str, name: &str) -> Option<Change> {
        let &(resource, ..) = RESOURCES.iter().find(|r| r.1 == kind)?;
        let mut object =
            self.objects
                .remove(&(resource, namespace.to_string(), name.to_string()))?;
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let change = Change {
            version: self.version,
            resource,
            namespace: namespace.to_string(),
            kind: "DELETED",
            object,
        };
        self.history.push(change.clone());
        Some(change)
    }

    fn count(&mut self, verb: &'static str, resource: &'static str, namespace: Option<&str>) {
        *self
            .requests
            .entry(format!("{verb} {resource}"))
            .or_default() += 1;
        let group = match resource {
            "tokenreviews" => "authentication.k8s.io",
            "endpointslices" => "discovery.k8s.io",
            _ => "",
        };
        self.log.push(Asked {
            verb,
            group,
            resource,
            namespace: namespace.map(str::to_string),
        });
    }
}

#[derive(Clone)]
struct Server {
    store: Arc<Mutex<Store>>,
    live: broadcast::Sender<Change>,
    epoch: watch::Sender<u64>,
}

async fn accept(listener: TcpListener, tls: Arc<rustls::ServerConfig>, server: Server) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // Dropped with this task: every connection ends with the server.
    let mut connections = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, server) = (acceptor.clone(), server.clone());
        connections.spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let authorized = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {CONTROL_PLANE_TOKEN}"));
        if !authorized {
            return status(401, "Unauthorized", "Unauthorized");
        }
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let query = query(req.uri().query().unwrap_or(""));
        if method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            return match body.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(review) => self.review(review),
                None => status(400, "BadRequest", "the body is not a TokenReview"),
            };
        }
        let Some((resource, namespace)) = resource_of(&path) else {
            return status(
                404,
                "NotFound",
                &format!("the server could not find the requested resource ({path})"),
            );
        };
        if method != Method::GET {
            return status(405, "MethodNotAllowed", "only GET of these resources");
        }
        let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        if watching {
            let from = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1800);
            let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
            self.watch(
                resource,
                namespace,
                from,
                Duration::from_secs(timeout),
                bookmarks,
            )
        } else {
            self.list(resource, namespace)
        }
    }

    fn review(&self, review: Value) -> Response<Body> {
        if review["apiVersion"] != "authentication.k8s.io/v1" || review["kind"] != "TokenReview" {
            return status(
                400,
                "BadRequest",
                "not an authentication.k8s.io/v1 TokenReview",
            );
        }
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let asked: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut store = self.store.lock().expect("the fake's store");
        if store.forbidden.contains("create tokenreviews") {
            return forbidden("create", "tokenreviews", "authentication.k8s.io");
        }
        store.count("create", "tokenreviews", None);
        store.reviewed_audiences.push(asked.clone());
        let status = match store.tokens.get(token) {
            None => json!({
                "user": {},
                "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive, token lookup failed]",
            }),
            Some(known) => {
                let granted: Vec<&String> = asked
                    .iter()
                    .filter(|a| known.audiences.contains(a))
                    .collect();
                if granted.is_empty() {
                    json!({
                        "user": {},
                        "error": format!(
                            "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                            known.audiences, asked
                        ),
                    })
                } else {
                    json!({
                        "authenticated": true,
                        "user": {
                            "username": known.username,
                            "uid": format!("uid-{}", known.username),
                            "groups": ["system:serviceaccounts", "system:authenticated"],
                        },
                        "audiences": granted,
                    })
                }
            }
        };
        let answer = json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"],
            "status": status,
        });
        json_response(StatusCode::CREATED, &answer)
    }

    fn list(&self, resource: &'static str, namespace: Option<String>) -> Response<Body> {
        let &(_, kind, api_version, _) = RESOURCES.iter().find(|r| r.0 == resource).unwrap();
        let mut store = self.store.lock().expect("the fake's store");
        store.count("list", resource, namespace.as_deref());
        // As the real server lists them: the items without kind and apiVersion.
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.as_ref().is_none_or(|n| n == ns))
            .map(|(_, object)| {
                let mut item = object.clone();
                if let Some(map) = item.as_object_mut() {
                    map.remove("kind");
                    map.remove("apiVersion");
                }
                item
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{kind}List"),
                "apiVersion": api_version,
                "metadata": {"resourceVersion": store.version.to_string()},
                "items": items,
            }),
        )
    }

    fn watch(
        &self,
        resource: &'static str,
        namespace: Option<String>,
        from: u64,
        timeout: Duration,
        bookmarks: bool,
    ) -> Response<Body> {
        let &(_, kind, api_version, _) = RESOURCES.iter().find(|r| r.0 == resource).unwrap();
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let mut store = self.store.lock().expect("the fake's store");
        store.count("watch", resource, namespace.as_deref());
        let ours = move |c: &Change| {
            c.resource == resource && namespace.as_ref().is_none_or(|n| *n == c.namespace)
        };
        let mut first: Vec<Bytes> = Vec::new();
        let mut live = None;
        if from < store.oldest {
            first.push(line(&json!({
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", store.oldest),
                    "reason": "Expired",
                    "code": 410,
                },
            })));
        } else {
            for change in store.history.iter().filter(|c| c.version > from && ours(c)) {
                first.push(event(change));
            }
            if bookmarks {
                first.push(line(&json!({
                    "type": "BOOKMARK",
                    "object": {
                        "kind": kind,
                        "apiVersion": api_version,
                        "metadata": {"resourceVersion": store.version.to_string()},
                    },
                })));
            }
            // Subscribed under the lock: no change falls between the
            // history and the live events.
            live = Some(self.live.subscribe());
        }
        let mut epoch = self.epoch.subscribe();
        drop(store);
        tokio::spawn(async move {
            for bytes in first {
                if tx.send(bytes).await.is_err() {
                    return;
                }
            }
            let Some(mut live) = live else {
                return;
            };
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    change = live.recv() => match change {
                        Ok(change) if ours(&change) => {
                            if tx.send(event(&change)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        // Too slow a reader: the real server ends its watch too.
                        Err(_) => return,
                    },
                    _ = epoch.changed() => return,
                    _ = &mut deadline => return,
                }
            }
        });
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let bytes = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(bytes)), rx))
        });
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// The resource and namespace a path names: `/api/v1/pods`,
/// `/api/v1/namespaces/NS/pods`, `/apis/discovery.k8s.io/v1/...`.
fn resource_of(path: &str) -> Option<(&'static str, Option<String>)> {
    RESOURCES.iter().find_map(|&(resource, _, _, prefix)| {
        let rest = path.strip_prefix(prefix)?;
        if rest == format!("/{resource}") {
            return Some((resource, None));
        }
        let (namespace, tail) = rest.strip_prefix("/namespaces/")?.split_once('/')?;
        (tail == resource).then(|| (resource, Some(namespace.to_string())))
    })
}

fn query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn event(change: &Change) -> Bytes {
    line(&json!({"type": change.kind, "object": change.object}))
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).expect("JSON");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(serde_json::to_vec(value).expect("JSON")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// RBAC's refusal, worded as the API server words it.
fn forbidden(verb: &str, resource: &str, group: &str) -> Response<Body> {
    status(
        403,
        "Forbidden",
        &format!(
            "{resource}.{group} is forbidden: User \"system:serviceaccount:remora:remora-control\" cannot {verb} resource \"{resource}\" in API group \"{group}\" at the cluster scope"
        ),
    )
}

/// A `Status` failure, as the API server answers errors.
fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).expect("a status code"),
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }),
    )
}

/// A CA (written to `dir/ca.crt`, for the kubeconfig) and the server's
/// certificate for 127.0.0.1, signed by it.
fn tls_config(dir: &Path) -> Arc<rustls::ServerConfig> {
    let ca_key = rcgen::KeyPair::generate().expect("a CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "fake-kubernetes-ca");
    let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).expect("writing ca.crt");

    let key = rcgen::KeyPair::generate().expect("a server key");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    let cert = params
        .signed_by(&key, &issuer)
        .expect("the server certificate");
    let chain = vec![cert.der().clone(), ca_cert.der().clone()];
    let key =
        rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("a private key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("the server's certificate");
    Arc::new(config)
}

/// A Service with one TCP port `http` (`port` → `target_port`).
pub fn service(namespace: &str, name: &str, port: u16, target_port: u16) -> Value {
    json!({
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "targetPort": target_port, "protocol": "TCP"}],
        },
    })
}

/// A pod of `account`, at `ip`; `inbound`: the port of its sidecar's
/// `remora-inbound` container port, as `inject` writes it (a native
/// sidecar, an init container).
pub fn pod(namespace: &str, name: &str, account: &str, ip: &str, inbound: Option<u16>) -> Value {
    let mut spec = json!({
        "serviceAccountName": account,
        "containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}],
    });
    if let Some(port) = inbound {
        spec["initContainers"] = json!([{
            "name": "remora-proxy",
            "image": "ghcr.io/remora-mesh/remora-proxy:0.1.0",
            "restartPolicy": "Always",
            "ports": [
                {"name": "remora-inbound", "containerPort": port, "protocol": "TCP"},
                {"name": "remora-admin", "containerPort": 4191, "protocol": "TCP"},
            ],
        }]);
    }
    json!({
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": account, "version": "v1"}},
        "spec": spec,
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

/// An EndpointSlice of `service` with port `http` = `port` and one
/// endpoint per `(ip, pod, ready)`.
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    port: u16,
    endpoints: &[(&str, &str, bool)],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, pod, ready)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": "node-1",
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod, "uid": format!("uid-pods-{namespace}-{pod}")},
            })
        })
        .collect();
    json!({
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}
