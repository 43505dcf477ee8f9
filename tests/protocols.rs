//! Each endpoint spoken to in its service's protocol, whatever the caller
//! speaks: real nginx as an HTTP/1.1 endpoint and as an h2c one, real curl
//! and h2load as HTTP/1.1 and HTTP/2 (prior knowledge) callers.

use std::net::SocketAddr;
use std::time::Duration;

use remora_e2e::nginx::Nginx;
use remora_e2e::tools;
use remora_e2e::upstream::dead_address;
use remora_e2e::Proxy;
use tokio::process::Command;

/// `old` speaks HTTP/1.1 (`protocol: http`, the default); `new` speaks
/// h2c (`protocol: http2`).
async fn proxy_to(nginx: &Nginx) -> Proxy {
    let mesh = format!(
        "services:
  old:
    endpoints: [ {{ address: {} }} ]
  new:
    protocol: http2
    endpoints: [ {{ address: {} }} ]
",
        nginx.http1, nginx.h2c
    );
    Proxy::start(&mesh, dead_address().await).await
}

/// What curl got: the status, the HTTP version of the answer, the body.
struct Curled {
    status: u16,
    version: String,
    body: String,
}

/// curl through `outbound` to `host`, in HTTP/2 with prior knowledge or
/// HTTP/1.1; `data` makes it a POST.
async fn curl(
    outbound: SocketAddr,
    host: &str,
    path: &str,
    http2: bool,
    data: Option<&str>,
) -> Curled {
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(["-H", &format!("Host: {host}")])
        .arg(if http2 {
            "--http2-prior-knowledge"
        } else {
            "--http1.1"
        });
    if let Some(data) = data {
        command.args(["--data-binary", data]);
    }
    let out = command
        .arg(format!("http://{outbound}{path}"))
        .output()
        .await
        .expect("running curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, tail) = stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl: {stdout} {}", String::from_utf8_lossy(&out.stderr)));
    let (status, version) = tail.split_once(' ').unwrap();
    let mut body = body.trim_end().to_string();
    if !out.stderr.is_empty() {
        body.push_str(&format!(
            " (curl: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Curled {
        status: status.parse().unwrap(),
        version: version.to_string(),
        body,
    }
}

#[tokio::test]
async fn http1_and_http2_callers_reach_each_endpoint_in_its_own_protocol() {
    let (Some(_), Some(nginx)) = (
        tools::find("curl", "curl"),
        Nginx::start(Duration::from_secs(60)).await,
    ) else {
        return;
    };
    let proxy = proxy_to(&nginx).await;
    for http2 in [false, true] {
        let answer_version = if http2 { "2" } else { "1.1" };
        let r = curl(proxy.outbound, "old", "/a?b=1", http2, None).await;
        assert_eq!(
            (r.status, r.version.as_str(), r.body.as_str()),
            (200, answer_version, "HTTP/1.1 old GET /a?b=1"),
            "caller in HTTP/2: {http2}"
        );
        let r = curl(proxy.outbound, "new", "/a?b=1", http2, None).await;
        assert_eq!(
            (r.status, r.version.as_str(), r.body.as_str()),
            (200, answer_version, "HTTP/2.0 new GET /a?b=1"),
            "caller in HTTP/2: {http2}"
        );
        // A body crosses from HTTP/2 to HTTP/1.1 too. (Not to nginx's h2c:
        // it resets a stream whose body it did not read, which this curl
        // reports as an error even without a proxy between them.)
        let r = curl(proxy.outbound, "old", "/orders", http2, Some("an order")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "HTTP/1.1 old POST /orders");
    }
}

/// h2load's summary line: `requests: N total, N started, N done, N succeeded, ...`.
fn succeeded(summary: &str) -> Option<(u64, u64)> {
    let line = summary.lines().find_map(|l| l.strip_prefix("requests:"))?;
    let count = |what: &str| {
        line.split(',')
            .find(|part| part.trim().ends_with(what))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Some((count("total")?, count("succeeded")?))
}

#[tokio::test]
async fn h2load_through_the_proxy_reaches_an_http1_and_an_h2c_endpoint_without_an_error() {
    let (Some(h2load), Some(nginx)) = (
        tools::find("h2load", "nghttp2-client"),
        Nginx::start(Duration::from_secs(60)).await,
    ) else {
        return;
    };
    let proxy = proxy_to(&nginx).await;
    for host in ["old", "new"] {
        let out = Command::new(&h2load)
            .args(["-n", "400", "-c", "4", "-m", "10", "-T", "10"])
            .args(["-H", &format!(":authority: {host}")])
            .arg(format!("http://{}/load", proxy.outbound))
            .output()
            .await
            .expect("running h2load");
        let summary = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            succeeded(&summary),
            Some((400, 400)),
            "{host}: {summary}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status_2xx = summary.lines().find(|l| l.starts_with("status codes:"));
        assert!(
            status_2xx.is_some_and(|l| l.starts_with("status codes: 400 2xx")),
            "{host}: {summary}"
        );
    }
}

#[tokio::test]
async fn trailers_cross_between_an_http2_caller_and_an_http1_endpoint() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use remora_e2e::client::body;
    use remora_e2e::{Client, Upstream};

    // An HTTP/1.1 endpoint (protocol: http) that answers in chunks with a
    // trailer, as HTTP/1.1 allows when the request says `te: trailers`.
    let endpoint = Upstream::start(|_req| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let frames = [
            Ok::<_, hyper::Error>(Frame::data(Bytes::from("data"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let mut response = http::Response::new(body);
        response
            .headers_mut()
            .insert("trailer", "x-checksum".parse().unwrap());
        response
    })
    .await;
    let mesh = format!(
        "services:\n  old:\n    endpoints: [ {{ address: {} }} ]\n",
        endpoint.addr
    );
    let proxy = Proxy::start(&mesh, dead_address().await).await;
    let req = http::Request::get("http://old/stream")
        .header("te", "trailers")
        .body(body(Bytes::new()))
        .unwrap();
    let response = Client::via(proxy.outbound, true)
        .send_streaming(req)
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("the trailers came through");
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), "data");
    assert_eq!(endpoint.last().version, http::Version::HTTP_11);
}
