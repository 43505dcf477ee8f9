//! The shop: five small HTTP services, one per role, each a JSON API that
//! calls the others through its sidecar's outbound listener.
//!
//! `gateway` GET /shop/{user} → `users` and `products`, then POST `orders`;
//! `orders` POST /orders → `inventory` and `products`. Every role answers
//! `/healthz`. The data is made up and mostly fixed, so any number of
//! instances of a role answer alike.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::client::{self, Client};

/// Users have ids `1..=USERS`.
pub const USERS: u64 = 100;
/// Products have ids `1..=PRODUCTS`.
pub const PRODUCTS: u64 = 20;
/// The mesh's route timeouts (demo/mesh.yaml) are what bound a call; this
/// only keeps a call from hanging should the sidecar itself stall.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Orders kept for `GET /orders/{id}`; older ones are forgotten.
const KEPT_ORDERS: usize = 1024;
/// An order asks for 1 to this many of a product.
const MAX_QUANTITY: u64 = 3;
/// Copied from the incoming request onto every call it makes, so one trace
/// and one request id follow a request through the shop.
const PROPAGATED: [&str; 3] = ["x-request-id", "traceparent", "tracestate"];

const FIRST_NAMES: [&str; 10] = [
    "Ada", "Grace", "Linus", "Barbara", "Ken", "Radia", "Dennis", "Frances", "Edsger", "Margaret",
];
const PRODUCT_NAMES: [&str; 10] = [
    "teapot",
    "lamp",
    "notebook",
    "backpack",
    "kettle",
    "mug",
    "umbrella",
    "scarf",
    "candle",
    "bicycle bell",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Gateway,
    Orders,
    Users,
    Products,
    Inventory,
}

impl Role {
    /// Every role, callers before the services they call.
    pub const ALL: [Role; 5] = [
        Role::Gateway,
        Role::Orders,
        Role::Users,
        Role::Products,
        Role::Inventory,
    ];

    /// The role's service name in the mesh, which is also the `Host` its
    /// callers send.
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Orders => "orders",
            Role::Users => "users",
            Role::Products => "products",
            Role::Inventory => "inventory",
        }
    }
}

#[derive(Debug, clap::Parser)]
#[command(
    name = "remora-shop",
    version,
    about = "One service of remora's demo shop: a small JSON API behind a sidecar"
)]
pub struct ShopArgs {
    /// Which service of the shop to be.
    #[arg(long, env = "REMORA_ROLE", value_enum)]
    pub role: Role,

    /// Where to serve; the sidecar's `--app`.
    #[arg(long, env = "REMORA_LISTEN")]
    pub listen: SocketAddr,

    /// The sidecar's outbound listener: calls to other services go there,
    /// with the service's name as the `Host`.
    #[arg(long, env = "REMORA_OUTBOUND")]
    pub outbound: SocketAddr,
}

/// Serves `args.role` until SIGTERM or SIGINT. Announces its address on
/// stderr as a JSON `listening` line, as the remora binaries do.
pub async fn serve(args: ShopArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let shop = Arc::new(Shop {
        role: args.role,
        outbound: args.outbound,
        client: client::client(),
        orders: Mutex::new(Orders::default()),
    });
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    eprintln!(
        "{}",
        json!({"message": "listening", "role": args.role.name(), "listen": listener.local_addr()?.to_string(), "outbound": args.outbound.to_string()})
    );
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, say: the next accept may work.
                Err(e) => {
                    eprintln!("{}", json!({"message": "accept failed", "error": e.to_string()}));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let shop = shop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shop = shop.clone();
                async move { Ok::<_, Infallible>(shop.handle(req).await) }
            });
            // A client that goes away mid-request is its own business.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    eprintln!(
        "{}",
        json!({"message": "stopping", "role": args.role.name()})
    );
    Ok(())
}

struct Shop {
    role: Role,
    outbound: SocketAddr,
    client: Client,
    orders: Mutex<Orders>,
}

#[derive(Default)]
struct Orders {
    last_id: u64,
    kept: BTreeMap<u64, Value>,
}

/// Why a request could not be answered as asked.
#[derive(Debug)]
enum Failure {
    /// The caller's mistake: answered with this status.
    Client(StatusCode, String),
    /// A service this one called failed: answered `502`.
    Dependency(String),
}

impl Failure {
    fn not_found(what: &str) -> Failure {
        Failure::Client(StatusCode::NOT_FOUND, format!("no such {what}"))
    }
}

type Answer = Result<(StatusCode, Value), Failure>;

impl Shop {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let answer = self.route(req).await;
        let (status, body) = match answer {
            Ok(ok) => ok,
            Err(Failure::Client(status, error)) => (status, json!({ "error": error })),
            Err(Failure::Dependency(error)) => (StatusCode::BAD_GATEWAY, json!({ "error": error })),
        };
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Answer {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        if path == "/healthz" {
            return Ok((StatusCode::OK, json!({ "status": "ok" })));
        }
        let propagated = propagated(&parts.headers);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (self.role, &parts.method, segments.as_slice()) {
            (Role::Users, &Method::GET, ["users", id]) => user(id_in(id, USERS, "user")?),
            (Role::Products, &Method::GET, ["products", id]) => {
                product(id_in(id, PRODUCTS, "product")?)
            }
            (Role::Inventory, &Method::GET, ["inventory", id]) => {
                stock(id_in(id, PRODUCTS, "product")?)
            }
            (Role::Orders, &Method::POST, ["orders"]) => {
                let order = read_json(body).await?;
                self.place_order(&order, &propagated).await
            }
            (Role::Orders, &Method::GET, ["orders", id]) => {
                let id = id_in(id, u64::MAX, "order")?;
                let orders = self.orders.lock().unwrap_or_else(|e| e.into_inner());
                let order = orders.kept.get(&id).ok_or(Failure::not_found("order"))?;
                Ok((StatusCode::OK, order.clone()))
            }
            (Role::Gateway, &Method::GET, ["shop", user]) => {
                let user = id_in(user, USERS, "user")?;
                self.shop(user, &propagated).await
            }
            _ => Err(Failure::Client(
                StatusCode::NOT_FOUND,
                format!("{} has no {} {path}", self.role.name(), parts.method),
            )),
        }
    }

    /// `orders`: checks the stock and the price, then records the order.
    async fn place_order(&self, order: &Value, headers: &HeaderMap) -> Answer {
        let field = |name: &str| {
            order[name].as_u64().ok_or_else(|| {
                Failure::Client(
                    StatusCode::BAD_REQUEST,
                    format!("{name}: a number is needed"),
                )
            })
        };
        let (user, product, quantity) = (field("user")?, field("product")?, field("quantity")?);
        let (stock_path, product_path) = (
            format!("/inventory/{product}"),
            format!("/products/{product}"),
        );
        let (stock, item) = tokio::join!(
            self.call("inventory", Method::GET, &stock_path, headers, None),
            self.call("products", Method::GET, &product_path, headers, None),
        );
        let (stock, item) = (stock?, item?);
        if stock["stock"].as_u64().unwrap_or(0) < quantity {
            return Err(Failure::Client(
                StatusCode::CONFLICT,
                format!("product {product} is out of stock"),
            ));
        }
        let total_cents = item["price_cents"].as_u64().unwrap_or(0) * quantity;
        let mut orders = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        orders.last_id += 1;
        let id = orders.last_id;
        let placed = json!({
            "id": id, "user": user, "product": product, "name": item["name"],
            "quantity": quantity, "total_cents": total_cents,
        });
        orders.kept.insert(id, placed.clone());
        if orders.kept.len() > KEPT_ORDERS {
            orders.kept.pop_first();
        }
        Ok((StatusCode::CREATED, placed))
    }

    /// `gateway`: a visit to the shop that ends in an order of a random
    /// product.
    async fn shop(&self, user: u64, headers: &HeaderMap) -> Answer {
        let product = fastrand::u64(1..=PRODUCTS);
        let (user_path, product_path) = (format!("/users/{user}"), format!("/products/{product}"));
        let (who, item) = tokio::join!(
            self.call("users", Method::GET, &user_path, headers, None),
            self.call("products", Method::GET, &product_path, headers, None),
        );
        let (who, item) = (who?, item?);
        let request = json!({ "user": user, "product": product, "quantity": fastrand::u64(1..=MAX_QUANTITY) });
        let order = self
            .call("orders", Method::POST, "/orders", headers, Some(&request))
            .await?;
        Ok((
            StatusCode::OK,
            json!({ "user": who, "product": item, "order": order }),
        ))
    }

    /// Calls `service` through the sidecar. A `4xx` answer is passed on to
    /// the caller; a `5xx` or no answer is a dependency failure.
    async fn call(
        &self,
        service: &str,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let request = client::request(method, self.outbound, service, path, headers, body)
            .map_err(|e| Failure::Dependency(format!("{e:#}")))?;
        let reply = client::send(&self.client, request, CALL_TIMEOUT)
            .await
            .map_err(|e| Failure::Dependency(format!("{service}: {e:#}")))?;
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        // Ours say what went wrong in JSON; a sidecar says it in a header.
        let error = || match (body["error"].as_str(), reply.headers.get("remora-error")) {
            (Some(error), _) => error.to_string(),
            (None, Some(proxy)) => format!("remora-error: {}", proxy.to_str().unwrap_or("?")),
            (None, None) => "no reason given".to_string(),
        };
        if reply.status.is_client_error() {
            return Err(Failure::Client(
                reply.status,
                format!("{service}: {}", error()),
            ));
        }
        if !reply.status.is_success() {
            return Err(Failure::Dependency(format!(
                "{service} answered {}: {}",
                reply.status,
                error()
            )));
        }
        Ok(body)
    }
}

fn propagated(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in PROPAGATED {
        if let Some(value) = incoming.get(name) {
            headers.insert(name, value.clone());
        }
    }
    headers
}

/// `id` as a number in `1..=max`; else `404` naming `what`.
fn id_in(id: &str, max: u64, what: &str) -> Result<u64, Failure> {
    id.parse::<u64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| Failure::not_found(what))
}

async fn read_json(body: Incoming) -> Result<Value, Failure> {
    let bad = |e: String| Failure::Client(StatusCode::BAD_REQUEST, e);
    let bytes = Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await
        .map_err(|e| bad(format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("the body is not JSON: {e}")))
}

fn user(id: u64) -> Answer {
    let first = FIRST_NAMES[(id as usize - 1) % FIRST_NAMES.len()];
    Ok((
        StatusCode::OK,
        json!({ "id": id, "name": format!("{first} #{id}") }),
    ))
}

fn product(id: u64) -> Answer {
    let name = PRODUCT_NAMES[(id as usize - 1) % PRODUCT_NAMES.len()];
    // 4.99 to 99.99, fixed per product.
    let price_cents = 499 + (id * 1_337) % 9_500;
    Ok((
        StatusCode::OK,
        json!({ "id": id, "name": name, "price_cents": price_cents }),
    ))
}

fn stock(id: u64) -> Answer {
    // Always more than an order asks for: the demo's failures are the mesh's.
    let stock = MAX_QUANTITY + (id * 37) % 200;
    Ok((StatusCode::OK, json!({ "product": id, "stock": stock })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_out_of_range_are_not_found() {
        assert_eq!(id_in("7", USERS, "user").unwrap(), 7);
        for id in ["0", "101", "-1", "x", ""] {
            assert!(
                matches!(
                    id_in(id, USERS, "user"),
                    Err(Failure::Client(StatusCode::NOT_FOUND, _))
                ),
                "{id}"
            );
        }
    }

    #[test]
    fn every_product_has_a_price_and_enough_stock() {
        for id in 1..=PRODUCTS {
            let (_, item) = product(id).unwrap();
            let price = item["price_cents"].as_u64().unwrap();
            assert!((499..=9_999).contains(&price), "{item}");
            let (_, stock) = stock(id).unwrap();
            assert!(stock["stock"].as_u64().unwrap() >= MAX_QUANTITY, "{stock}");
        }
    }

    #[test]
    fn only_trace_headers_are_propagated() {
        let mut incoming = HeaderMap::new();
        incoming.insert("x-request-id", "abc".parse().unwrap());
        incoming.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        incoming.insert("cookie", "secret".parse().unwrap());
        let out = propagated(&incoming);
        assert_eq!(out.len(), 2);
        assert_eq!(out["x-request-id"], "abc");
        assert!(out.get("cookie").is_none());
    }
}
