//! The local demo: two versions of a `hello` service on loopback, and the
//! real proxy in front of them serving `examples/mesh.yaml`. Run it with
//! `cargo run -p remora-proxy --example demo`, then try
//! `curl -H 'Host: hello' http://127.0.0.1:4140/` or
//! `curl -x http://127.0.0.1:4140 http://hello/`, and look at
//! `http://127.0.0.1:4191/metrics`. Ctrl-C stops it.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use remora_proxy::config::Config;
use tokio::net::TcpListener;

const MESH: &str = include_str!("../../examples/mesh.yaml");

/// A version of the demo service: answers with its name.
async fn hello(addr: &str, version: &'static str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = service_fn(move |_req| async move {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                    "hello from {version}\n"
                )))))
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(())
}

/// A few calls through the proxy, so the metrics have something to show.
async fn show_traffic(config_path: std::path::PathBuf) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..100 {
        let mut req = hyper::Request::get("http://127.0.0.1:4140/").header("host", "hello");
        if i % 10 == 0 {
            req = req.header("x-canary", "1");
        }
        if let Ok(resp) = client
            .request(req.body(Full::new(Bytes::new())).expect("a valid request"))
            .await
        {
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            *counts
                .entry(String::from_utf8_lossy(&body).trim().to_string())
                .or_insert(0) += 1;
        }
    }
    println!("\n100 requests through the proxy (10 with x-canary: 1):");
    for (answer, n) in counts {
        println!("  {n:>3}  {answer}");
    }
    println!("\ntry:  curl -H 'Host: hello' http://127.0.0.1:4140/");
    println!("      curl -x http://127.0.0.1:4140 http://hello/");
    println!("      curl http://127.0.0.1:4191/metrics");
    println!(
        "      edit {} and watch the proxy reload it",
        config_path.display()
    );
    println!("Ctrl-C stops the demo.\n");
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("remora-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("mesh.yaml");
    std::fs::write(&config_path, MESH)?;
    let config = Config::parse_from([
        "remora-proxy",
        "--config",
        &config_path.display().to_string(),
        "--admin",
        "127.0.0.1:4191",
        "--inbound",
        "127.0.0.1:4143",
        "--app",
        "127.0.0.1:9001",
        "--log-format",
        "text",
        "--log-level",
        "info,remora::access=off,notify=warn",
    ]);
    let log_level = remora_server::logs::init(config.log_format, &config.log_level)
        .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        hello("127.0.0.1:9001", "v1").await?;
        hello("127.0.0.1:9002", "v2").await?;
        tokio::spawn(show_traffic(config_path.clone()));
        remora_proxy::app::run(config, log_level).await
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
