//! Active health checks through the real proxy: an endpoint whose health
//! path fails stops getting traffic, and gets it again once it recovers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use remora_e2e::upstream::{dead_address, status, text};
use remora_e2e::{eventually, metric_value, Client, Proxy, Upstream};

/// An upstream answering `name`, whose `/healthz` passes while `up` holds.
async fn checked(name: &'static str, up: Arc<AtomicBool>) -> Upstream {
    Upstream::start(move |req: http::Request<hyper::body::Incoming>| {
        let up = up.clone();
        async move {
            if req.uri().path() == "/healthz" {
                if up.load(Ordering::SeqCst) {
                    text("ok")
                } else {
                    status(500, "sick")
                }
            } else {
                text(name)
            }
        }
    })
    .await
}

#[tokio::test]
async fn an_endpoint_failing_its_checks_gets_no_traffic_until_it_recovers() {
    let a_up = Arc::new(AtomicBool::new(true));
    let a = checked("a", a_up.clone()).await;
    let b = checked("b", Arc::new(AtomicBool::new(true))).await;
    let mesh = format!(
        "services:
  web:
    load_balancer: round-robin
    endpoints: [ {{ address: {} }}, {{ address: {} }} ]
    health_check: {{ path: /healthz, interval: 100ms, timeout: 1s, unhealthy_after: 2, healthy_after: 2 }}
",
        a.addr, b.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let client = Client::http1();
    let answers = |n: usize| {
        let client = client.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let r = client.get_via(proxy.outbound, "web", "/").await.unwrap();
                assert_eq!(r.status, 200);
                out.push(r.text());
            }
            out
        }
    };
    assert!(
        answers(10).await.contains(&"a".to_string()),
        "a healthy endpoint is used"
    );

    // Probes reach the endpoint with the service's name and a recognisable agent.
    eventually(
        Duration::from_secs(5),
        "a probe to reach the endpoint",
        || async { a.seen().iter().any(|s| s.path == "/healthz") },
    )
    .await;
    let probe = a.seen().into_iter().find(|s| s.path == "/healthz").unwrap();
    assert_eq!(probe.headers["host"], "web");
    assert_eq!(probe.headers["user-agent"], "remora-health-check");

    a_up.store(false, Ordering::SeqCst);
    eventually(
        Duration::from_secs(10),
        "the endpoint to be marked unhealthy",
        || async {
            let m = proxy.metrics().await;
            metric_value(
                &m,
                "remora_endpoints{direction=\"outbound\",service=\"web\",state=\"unhealthy\"}",
            ) == 1.0
        },
    )
    .await;
    assert!(
        answers(20).await.iter().all(|t| t == "b"),
        "an unhealthy endpoint gets no requests"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "remora_endpoints{direction=\"outbound\",service=\"web\",state=\"healthy\"}"
        ),
        1.0
    );

    a_up.store(true, Ordering::SeqCst);
    eventually(
        Duration::from_secs(10),
        "the endpoint to be healthy again",
        || async {
            let m = proxy.metrics().await;
            metric_value(
                &m,
                "remora_endpoints{direction=\"outbound\",service=\"web\",state=\"healthy\"}",
            ) == 2.0
        },
    )
    .await;
    assert!(
        answers(10).await.contains(&"a".to_string()),
        "a recovered endpoint is used again"
    );
}

#[tokio::test]
async fn when_every_endpoint_is_unhealthy_requests_are_still_tried() {
    let up = Arc::new(AtomicBool::new(false));
    let a = checked("a", up.clone()).await;
    let mesh = format!(
        "services:
  web:
    endpoints: [ {{ address: {} }} ]
    health_check: {{ path: /healthz, interval: 100ms, unhealthy_after: 1 }}
",
        a.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    eventually(
        Duration::from_secs(10),
        "the endpoint to be marked unhealthy",
        || async {
            let m = proxy.metrics().await;
            metric_value(
                &m,
                "remora_endpoints{direction=\"outbound\",service=\"web\",state=\"unhealthy\"}",
            ) == 1.0
        },
    )
    .await;
    // Refusing everything would turn a broken health path into an outage.
    let r = Client::http1()
        .get_via(proxy.outbound, "web", "/")
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "a"));
}

#[tokio::test]
async fn removing_the_check_from_the_config_stops_the_probes() {
    let a = checked("a", Arc::new(AtomicBool::new(true))).await;
    let with_check = format!(
        "services:\n  web:\n    endpoints: [ {{ address: {} }} ]\n    health_check: {{ path: /healthz, interval: 100ms }}\n",
        a.addr
    );
    let proxy = Proxy::start(&with_check, dead_address().await).await;
    eventually(Duration::from_secs(5), "probes to start", || async {
        a.hits() >= 2
    })
    .await;
    proxy.write_config(&format!(
        "services:\n  web:\n    endpoints: [ {{ address: {} }} ]\n",
        a.addr
    ));
    eventually(Duration::from_secs(5), "the reload", || async {
        let m = proxy.metrics().await;
        metric_value(&m, "remora_config_reloads_total{result=\"ok\"}") == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = a.hits();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.hits(), before, "no probe after the check was removed");
}
