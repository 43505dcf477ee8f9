//! The mapping from Kubernetes objects, written as the API server serves
//! them (JSON), to mesh endpoints.

use serde_json::json;

use super::index::*;
use super::*;

fn service(namespace: &str, name: &str, spec: serde_json::Value) -> (ObjectKey, ServiceSummary) {
    let object: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "spec": spec,
    }))
    .unwrap();
    (ObjectKey::of(&object), ServiceSummary::of(&object).unwrap())
}

fn web(namespace: &str, name: &str) -> (ObjectKey, ServiceSummary) {
    service(
        namespace,
        name,
        json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "metrics", "port": 9090}]}),
    )
}

fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    endpoints: serde_json::Value,
) -> (ObjectKey, SliceSummary) {
    let object: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1",
                     "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        // Not the Service's order: the first port of the Service wins.
        "ports": [{"name": "metrics", "port": 9090, "protocol": "TCP"}, {"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap();
    (ObjectKey::of(&object), SliceSummary::of(&object).unwrap())
}

fn endpoint(ip: &str, pod: &str, ready: bool) -> serde_json::Value {
    json!({"addresses": [ip], "conditions": {"ready": ready},
           "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}})
}

fn pod(name: &str, account: Option<&str>, meshed: bool) -> (ObjectKey, PodSummary) {
    let mut spec = json!({"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]});
    if let Some(account) = account {
        spec["serviceAccountName"] = json!(account);
    }
    if meshed {
        spec["initContainers"] = json!([{"name": "remora-proxy", "restartPolicy": "Always",
            "ports": [{"name": "remora-inbound", "containerPort": 4143}, {"name": "remora-admin", "containerPort": 4191}]}]);
    }
    let object: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1", "labels": {"app": "orders", "version": "v1"}},
        "spec": spec,
    }))
    .unwrap();
    (ObjectKey::of(&object), PodSummary::of(&object).unwrap())
}

fn index(
    services: Vec<(ObjectKey, ServiceSummary)>,
    slices: Vec<(ObjectKey, SliceSummary)>,
    pods: Vec<(ObjectKey, PodSummary)>,
) -> Index {
    let mut index = Index::default();
    index.services.replace(None, services);
    index.slices.replace(None, slices);
    index.pods.replace(None, pods);
    index
}

/// `(address, identity)` of each endpoint of `service`.
fn endpoints(index: &Index, service: &str) -> Vec<(String, Option<String>)> {
    index.map("cluster.local").services[service]
        .iter()
        .map(|d| {
            (
                d.address.to_string(),
                d.identity.as_ref().map(|i| i.to_string()),
            )
        })
        .collect()
}

#[test]
fn meshed_pods_are_dialled_at_their_sidecar_with_their_service_accounts_identity() {
    let index = index(
        vec![web("shop", "orders")],
        vec![slice(
            "shop",
            "orders-abcde",
            "orders",
            json!([
                endpoint("10.0.0.2", "orders-2", true),
                endpoint("10.0.0.1", "orders-1", true)
            ]),
        )],
        vec![
            pod("orders-1", Some("orders"), true),
            pod("orders-2", None, false),
        ],
    );
    assert_eq!(
        endpoints(&index, "orders"),
        [
            (
                "10.0.0.1:4143".to_string(),
                Some("spiffe://cluster.local/ns/shop/sa/orders".to_string())
            ),
            // No sidecar: the Service's first port, as the slice numbers it.
            ("10.0.0.2:8080".to_string(), None),
        ]
    );
    let first = &index.map("cluster.local").services["orders"][0];
    assert_eq!(first.instance.as_deref(), Some("shop/orders-1"));
    assert_eq!(first.labels["version"], "v1");
}

#[test]
fn only_ready_endpoints_of_seen_pods_of_known_services_are_served() {
    let index = index(
        vec![web("shop", "orders"), web("shop", "idle")],
        vec![
            slice(
                "shop",
                "orders-1",
                "orders",
                json!([
                    endpoint("10.0.0.1", "orders-1", false),
                    endpoint("10.0.0.2", "orders-unseen", true),
                    endpoint("10.0.0.3", "orders-3", true),
                    // No targetRef: a hand-made slice; unknown readiness is ready.
                    {"addresses": ["10.0.0.4"]},
                ]),
            ),
            // Its Service is not known (yet): nothing.
            slice(
                "shop",
                "users-1",
                "users",
                json!([endpoint("10.0.0.9", "orders-3", true)]),
            ),
        ],
        vec![
            pod("orders-1", None, true),
            pod("orders-3", Some("orders"), true),
        ],
    );
    let mapped = index.map("cluster.local");
    assert_eq!(
        endpoints(&index, "orders"),
        [
            (
                "10.0.0.3:4143".to_string(),
                Some("spiffe://cluster.local/ns/shop/sa/orders".to_string())
            ),
            ("10.0.0.4:8080".to_string(), None),
        ]
    );
    assert_eq!(
        mapped.services["idle"],
        [],
        "a Service with no endpoint is a service still"
    );
    assert!(!mapped.services.contains_key("users"));
    let identities = |service: &str| -> Vec<String> {
        mapped.pod_identities[service]
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        identities("orders"),
        [
            // Not ready yet, but its sidecar registers before it is.
            "spiffe://cluster.local/ns/shop/sa/default",
            "spiffe://cluster.local/ns/shop/sa/orders",
        ]
    );
    assert_eq!(identities("idle"), [] as [String; 0], "no pods: no one");
    assert!(!mapped.pod_identities.contains_key("users"));
}

#[test]
fn external_names_are_no_mesh_services_and_shared_names_are_told() {
    let external: Service = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com"},
    }))
    .unwrap();
    assert_eq!(ServiceSummary::of(&external), None);
    let index = index(
        vec![web("shop", "orders"), web("staging", "orders")],
        vec![],
        vec![],
    );
    let mapped = index.map("cluster.local");
    assert_eq!(
        mapped.shared_names["orders"].iter().collect::<Vec<_>>(),
        ["shop", "staging"]
    );
}

#[test]
fn a_list_replaces_what_was_known_of_its_namespace_only() {
    let mut table = Table::default();
    let key = |ns: &str, name: &str| ObjectKey {
        namespace: ns.into(),
        name: name.into(),
    };
    table.apply(key("shop", "a"), Some(1));
    table.apply(key("shop", "b"), Some(2));
    table.apply(key("other", "c"), Some(3));
    table.replace(Some("shop"), vec![(key("shop", "b"), 20)]);
    assert_eq!(
        table.get(&key("shop", "a")),
        None,
        "deleted while unwatched"
    );
    assert_eq!(table.get(&key("shop", "b")), Some(&20));
    assert_eq!(table.get(&key("other", "c")), Some(&3));
    table.apply(key("other", "c"), None);
    assert!(table.get(&key("other", "c")).is_none());
    table.replace(None, vec![]);
    assert!(table.is_empty());
}
