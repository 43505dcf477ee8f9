//! `mesh.yaml` parsing under generated input: any text, YAML of the right
//! shape with values of the wrong kind, and valid meshes, which must come
//! back with every field they were written with.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;
use serde_yaml::Value;

use crate::*;

const FILE: &str = "mesh.yaml";

/// Cases per property: enough to vary every generated part, few enough
/// that each property takes well under a second in a debug build.
/// `PROPTEST_CASES` set in the environment runs as many as it says.
fn config() -> ProptestConfig {
    match std::env::var_os("PROPTEST_CASES") {
        Some(_) => ProptestConfig::default(),
        None => ProptestConfig::with_cases(64),
    }
}

/// Parses `text`, checking what a refusal must say: at least one problem,
/// each naming the file and a place in it (a line and column within the
/// text, or a key). The problems of neither are about the whole file:
/// it holds no mesh at all, or more than one YAML document.
fn parse_checked(text: &str) -> Result<Checked, ConfigError> {
    let parsed = parse_mesh_with_notes(FILE, text);
    if let Err(e) = &parsed {
        assert!(!e.problems.is_empty(), "a refusal with no problem");
        // YAML breaks lines at \r too.
        let lines = text
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .lines()
            .count()
            .max(1);
        for p in &e.problems {
            assert_eq!(p.file, FILE);
            assert!(!p.message.is_empty(), "{p}");
            if let Some(at) = p.position {
                assert!(at.line >= 1 && at.column >= 1, "{p}");
                // serde_yaml may point just past the last line.
                assert!(at.line <= lines + 1, "{p}: line past the end of {text:?}");
            } else if p.key.is_empty() {
                let whole_file = ["holds no mesh", "more than one document"];
                let about_the_file = whole_file.iter().any(|m| p.message.contains(m));
                assert!(about_the_file, "{p} names no place");
            }
        }
    }
    parsed
}

#[test]
fn any_text_is_parsed_or_refused_at_a_place() {
    // The random inputs are short and bounded in time; `cargo bolero test`
    // runs the same target under a coverage-guided fuzzer for as long as
    // it is given (docs/reliability.md).
    bolero::check!()
        .with_test_time(Duration::from_millis(500))
        .for_each(|bytes: &[u8]| {
            if let Ok(text) = std::str::from_utf8(bytes) {
                let _ = parse_checked(text);
            }
        });
}

/// The keys a mesh file uses, so that generated maps reach past the top
/// level into services, routes and matches.
const KEYS: &[&str] = &[
    "services",
    "trust_domain",
    "orders",
    "protocol",
    "identity",
    "endpoints",
    "address",
    "labels",
    "load_balancer",
    "hash_on",
    "header",
    "timeout",
    "retry",
    "attempts",
    "on",
    "per_try_timeout",
    "backoff",
    "circuit_breaker",
    "health_check",
    "path",
    "routes",
    "name",
    "match",
    "path_prefix",
    "path_regex",
    "headers",
    "methods",
    "split",
    "service",
    "weight",
    "fault",
    "abort",
    "percent",
    "status",
    "inbound",
    "mtls",
    "allow",
    "rate_limit",
    "requests_per_second",
];

/// Scalars of every kind YAML has, some of them right for some key.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|n| Value::Number(n.into())),
        prop::sample::select(KEYS).prop_map(|k| Value::String(k.to_string())),
        prop::sample::select(vec![
            "127.0.0.1:9001",
            "[::1]:80",
            "1s",
            "250ms",
            "-1s",
            "/api/",
            "[",
            "GET",
            "get",
            "ring-hash",
            "5xx",
            "strict",
            "a:b",
            "",
            "~",
            "*x",
            "&x",
            "'",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        ".{0,12}".prop_map(Value::String),
    ]
}

/// YAML of a mesh's shape (maps keyed by its own keys, lists, scalars)
/// with values that are mostly of the wrong kind.
fn shaped() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Sequence),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..4)
                .prop_map(|pairs| { map(pairs) }),
        ]
    })
}

/// One change to a good mesh's tree, at the node `path` leads to: each
/// step picks a child of a map or list by its index, modulo their count.
#[derive(Clone, Debug)]
enum Edit {
    Replace(Value),
    /// Under a map: a key of the mesh's (maybe not one of this map's).
    Insert(&'static str, Value),
    Remove,
}

fn edit() -> impl Strategy<Value = (Vec<usize>, Edit)> {
    let edit = prop_oneof![
        shaped().prop_map(Edit::Replace),
        (prop::sample::select(KEYS), shaped()).prop_map(|(k, v)| Edit::Insert(k, v)),
        Just(Edit::Remove),
    ];
    (prop::collection::vec(any::<usize>(), 1..8), edit)
}

fn apply(node: &mut Value, path: &[usize], edit: Edit) {
    let remove_here = path.len() == 1 && matches!(edit, Edit::Remove);
    match (path.split_first(), node) {
        (Some((step, rest)), Value::Mapping(m)) if !m.is_empty() => {
            let key = m.keys().nth(step % m.len()).cloned().unwrap();
            if remove_here {
                m.remove(&key);
            } else {
                apply(m.get_mut(&key).unwrap(), rest, edit);
            }
        }
        (Some((step, rest)), Value::Sequence(s)) if !s.is_empty() => {
            let i = step % s.len();
            if remove_here {
                s.remove(i);
            } else {
                apply(&mut s[i], rest, edit);
            }
        }
        (_, Value::Mapping(m)) if matches!(edit, Edit::Insert(..)) => {
            if let Edit::Insert(k, v) = edit {
                m.insert(string(k), v);
            }
        }
        (_, node) => {
            if let Edit::Replace(v) = edit {
                *node = v;
            }
        }
    }
}

/// A good mesh's tree: a generated one, or the documented example that
/// sets every key.
fn good_tree() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => mesh().prop_map(|m| m.to_yaml()),
        3 => Just(serde_yaml::from_str(crate::tests::FULL).unwrap()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_good_mesh_edited_anywhere_is_parsed_or_refused_at_a_place(
        mut tree in good_tree(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        for (path, edit) in edits {
            apply(&mut tree, &path, edit);
        }
        let text = serde_yaml::to_string(&tree).unwrap();
        let _ = parse_checked(&text);
    }

    #[test]
    fn a_valid_mesh_parses_with_every_field_it_was_written_with(spec in mesh()) {
        let text = serde_yaml::to_string(&spec.to_yaml()).unwrap();
        let parsed = match parse_checked(&text) {
            Ok(checked) => checked.mesh,
            Err(e) => panic!("{e}\nin\n{text}"),
        };
        spec.assert_matches(&parsed);
        // What the model writes back is read as the same mesh.
        let again = serde_yaml::to_string(&parsed).unwrap();
        prop_assert_eq!(parse_mesh(FILE, &again).unwrap(), parsed);
    }
}

/// A mesh as the generator writes it: only what a valid file may hold.
#[derive(Clone, Debug)]
struct MeshSpec {
    services: BTreeMap<String, ServiceSpec>,
}

#[derive(Clone, Debug)]
struct ServiceSpec {
    /// Ports, unique, on 127.0.0.1, each with its labels.
    endpoints: Vec<(u16, BTreeMap<String, String>)>,
    timeout_ms: Option<u64>,
    routes: Vec<RouteSpec>,
}

#[derive(Clone, Debug)]
struct RouteSpec {
    name: Option<String>,
    path: PathSpec,
    headers: BTreeMap<String, String>,
    methods: Vec<String>,
    /// Weights of splits over the service's own endpoints; none is zero.
    weights: Vec<u32>,
}

#[derive(Clone, Debug)]
enum PathSpec {
    Any,
    Exact(String),
    Prefix(String),
    Regex(String),
}

fn service_name() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[a-z][a-z0-9]{0,6}", "[a-z0-9]{0,6}", 0..3)
}

fn path() -> impl Strategy<Value = String> {
    "/[a-zA-Z0-9/_.-]{0,16}"
}

fn route() -> impl Strategy<Value = RouteSpec> {
    let path_spec = prop_oneof![
        Just(PathSpec::Any),
        path().prop_map(PathSpec::Exact),
        path().prop_map(PathSpec::Prefix),
        Just(PathSpec::Regex("/users/[0-9]+".to_string())),
    ];
    (
        prop::option::of("[a-z][a-z0-9-]{0,8}"),
        path_spec,
        prop::collection::btree_map("x-[a-z]{1,6}", "[ -~]{0,8}", 0..3),
        prop::collection::vec(
            prop::sample::select(vec!["GET", "HEAD", "POST", "PUT"]),
            0..3,
        ),
        prop::collection::vec(1..=100u32, 0..3),
    )
        .prop_map(|(name, path, headers, methods, weights)| RouteSpec {
            name,
            path,
            headers,
            methods: methods.into_iter().map(str::to_string).collect(),
            weights,
        })
}

fn service() -> impl Strategy<Value = ServiceSpec> {
    (
        prop::collection::btree_map(1..=u16::MAX, labels(), 0..4),
        prop::option::of(1..100_000u64),
        prop::collection::vec(route(), 0..4),
    )
        .prop_map(|(endpoints, timeout_ms, mut routes)| {
            // Route names are unique within a service.
            let mut seen = std::collections::BTreeSet::new();
            for r in &mut routes {
                if r.name.as_ref().is_some_and(|n| !seen.insert(n.clone())) {
                    r.name = None;
                }
            }
            ServiceSpec {
                endpoints: endpoints.into_iter().collect(),
                timeout_ms,
                routes,
            }
        })
}

fn mesh() -> impl Strategy<Value = MeshSpec> {
    prop::collection::btree_map(service_name(), service(), 0..4)
        .prop_map(|services| MeshSpec { services })
}

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (string(k), v)).collect())
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Mapping(m.iter().map(|(k, v)| (string(k), string(v))).collect())
}

impl MeshSpec {
    /// The file's tree, written the way a person would, defaults left out.
    fn to_yaml(&self) -> Value {
        let services = self
            .services
            .iter()
            .map(|(name, svc)| (string(name), svc.to_yaml()))
            .collect();
        map([("services", Value::Mapping(services))])
    }

    fn assert_matches(&self, mesh: &Mesh) {
        assert_eq!(mesh.trust_domain, DEFAULT_TRUST_DOMAIN);
        assert!(mesh.services.keys().eq(self.services.keys()));
        for (name, spec) in &self.services {
            spec.assert_matches(&mesh.services[name]);
        }
    }
}

impl ServiceSpec {
    fn to_yaml(&self) -> Value {
        let mut svc = Vec::new();
        if !self.endpoints.is_empty() {
            let endpoints = self
                .endpoints
                .iter()
                .map(|(port, labels)| {
                    let mut ep = vec![("address", string(&format!("127.0.0.1:{port}")))];
                    if !labels.is_empty() {
                        ep.push(("labels", string_map(labels)));
                    }
                    map(ep)
                })
                .collect();
            svc.push(("endpoints", Value::Sequence(endpoints)));
        }
        if let Some(ms) = self.timeout_ms {
            svc.push(("timeout", string(&format!("{ms}ms"))));
        }
        if !self.routes.is_empty() {
            let routes = self.routes.iter().map(RouteSpec::to_yaml).collect();
            svc.push(("routes", Value::Sequence(routes)));
        }
        map(svc)
    }

    fn assert_matches(&self, svc: &Service) {
        assert_eq!(svc.protocol, Protocol::Http);
        assert_eq!(svc.endpoints.len(), self.endpoints.len());
        for (ep, (port, labels)) in svc.endpoints.iter().zip(&self.endpoints) {
            assert_eq!(ep.address, SocketAddr::from((Ipv4Addr::LOCALHOST, *port)));
            assert_eq!(&ep.labels, labels);
            assert_eq!(ep.identity, None);
        }
        assert_eq!(
            svc.timeout.map(Duration::from),
            self.timeout_ms.map(Duration::from_millis)
        );
        assert_eq!(svc.routes.len(), self.routes.len());
        for (route, spec) in svc.routes.iter().zip(&self.routes) {
            spec.assert_matches(route);
        }
    }
}

impl RouteSpec {
    fn to_yaml(&self) -> Value {
        let mut m = Vec::new();
        match &self.path {
            PathSpec::Any => {}
            PathSpec::Exact(p) => m.push(("path", string(p))),
            PathSpec::Prefix(p) => m.push(("path_prefix", string(p))),
            PathSpec::Regex(r) => m.push(("path_regex", string(r))),
        }
        if !self.headers.is_empty() {
            m.push(("headers", string_map(&self.headers)));
        }
        if !self.methods.is_empty() {
            let methods = self.methods.iter().map(|x| string(x)).collect();
            m.push(("methods", Value::Sequence(methods)));
        }
        let mut route = vec![("match", map(m))];
        if let Some(name) = &self.name {
            route.push(("name", string(name)));
        }
        if !self.weights.is_empty() {
            let split = self
                .weights
                .iter()
                .map(|w| map([("weight", Value::Number((*w).into()))]))
                .collect();
            route.push(("split", Value::Sequence(split)));
        }
        map(route)
    }

    fn assert_matches(&self, route: &Route) {
        assert_eq!(route.name, self.name);
        let m = &route.matches;
        let (path, prefix, regex) = match &self.path {
            PathSpec::Any => (None, None, None),
            PathSpec::Exact(p) => (Some(p), None, None),
            PathSpec::Prefix(p) => (None, Some(p), None),
            PathSpec::Regex(r) => (None, None, Some(r)),
        };
        assert_eq!(m.path.as_ref(), path);
        assert_eq!(m.path_prefix.as_ref(), prefix);
        assert_eq!(
            m.path_regex
                .as_ref()
                .map(|r| r.as_str().to_string())
                .as_ref(),
            regex
        );
        let headers: BTreeMap<String, String> = m
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect();
        assert_eq!(headers, self.headers);
        let methods: Vec<&str> = m.methods.iter().map(Method::as_str).collect();
        assert_eq!(methods, self.methods);
        let weights: Vec<u32> = route.split.iter().map(|s| s.weight).collect();
        assert_eq!(weights, self.weights);
        assert!(route
            .split
            .iter()
            .all(|s| s.service.is_none() && s.labels.is_empty()));
        assert_eq!(route.timeout, None);
        assert!(route.retry.is_none() && route.fault.is_none());
    }
}
