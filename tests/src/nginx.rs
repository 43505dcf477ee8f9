//! Real nginx (the Debian package) as an endpoint: one server speaking
//! HTTP/1.1 and one speaking HTTP/2 with prior knowledge (h2c), each
//! answering with what it understood of the request.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Every answer's body: `PROTOCOL HOST METHOD URI`, e.g.
/// `HTTP/2.0 orders GET /a?b`.
const ANSWER: &str = r#"return 200 "$server_protocol $host $request_method $request_uri\n";"#;

pub struct Nginx {
    /// Speaks HTTP/1.1.
    pub http1: SocketAddr,
    /// Speaks h2c (HTTP/2 with prior knowledge) only.
    pub h2c: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with idle client connections closed after
    /// `keepalive_timeout`; waits until both servers accept. `None` when
    /// nginx is not installed (see [`crate::tools::find`]).
    pub async fn start(keepalive_timeout: Duration) -> Option<Nginx> {
        let binary = crate::tools::find("nginx", "nginx")?;
        let dir = tempfile::tempdir().unwrap();
        let (http1, h2c) = (free_port().await, free_port().await);
        let conf = config(dir.path(), http1, h2c, keepalive_timeout);
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting nginx");
        for addr in [http1, h2c] {
            crate::eventually(Duration::from_secs(10), "nginx to listen", || async move {
                TcpStream::connect(addr).await.is_ok()
            })
            .await;
        }
        Some(Nginx {
            http1,
            h2c,
            _child: child,
            _dir: dir,
        })
    }
}

fn config(dir: &Path, http1: SocketAddr, h2c: SocketAddr, keepalive: Duration) -> String {
    let dir = dir.display();
    let keepalive = keepalive.as_millis();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout {keepalive}ms;
    server {{
        listen {http1};
        location / {{ {ANSWER} }}
    }}
    server {{
        listen {h2c} http2;
        location / {{ {ANSWER} }}
    }}
}}
"
    )
}

/// A loopback port free a moment ago, for a server that binds by itself.
async fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
