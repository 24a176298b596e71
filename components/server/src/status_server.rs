//! The status server (upstream: `src/server/status_server/mod.rs`, also on
//! hyper): `/metrics`, `/status`, a JSON view of the raft client for
//! operators and tests, and, with the `failpoints` feature, TiKV's
//! failpoint endpoints (`PUT`/`DELETE /fail/<name>`, `GET /fail`).

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Method, Request, Response, StatusCode};
use prometheus::{Encoder, TextEncoder};
use tokio::sync::oneshot;

/// What the status server shows; implemented by the running store.
pub trait StatusSource: Send + Sync + 'static {
    /// `GET /status`.
    fn status(&self) -> serde_json::Value;
    /// `GET /debug/raft_client`.
    fn raft_client(&self) -> serde_json::Value;
    /// `PUT /debug/synthetic/peer_store/<id>`: adds a peer on that store to
    /// every region this store is in; returns the regions changed.
    fn add_peer_store(&self, store_id: u64) -> usize;
}

/// A running status server; dropping it stops it.
pub struct StatusServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn text(code: StatusCode, body: impl Into<Body>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(body.into())
        .unwrap_or_default()
}

fn json(v: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec_pretty(v).unwrap_or_default()))
        .unwrap_or_default()
}

fn metrics() -> Response<Body> {
    let encoder = TextEncoder::new();
    let mut buf = Vec::new();
    if let Err(e) = encoder.encode(&prometheus::gather(), &mut buf) {
        return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    Response::builder()
        .header("content-type", encoder.format_type())
        .body(Body::from(buf))
        .unwrap_or_default()
}

async fn route(src: Arc<dyn StatusSource>, req: Request<Body>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/fail" || path.starts_with("/fail/") {
        return fail_points(req).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => metrics(),
        (&Method::GET, "/status") => json(&src.status()),
        (&Method::GET, "/debug/raft_client") => json(&src.raft_client()),
        (&Method::PUT, p) if p.starts_with("/debug/synthetic/peer_store/") => {
            let id = &p["/debug/synthetic/peer_store/".len()..];
            match id.parse::<u64>() {
                Ok(id) if id > 0 => {
                    let n = src.add_peer_store(id);
                    json(&serde_json::json!({ "store_id": id, "regions_changed": n }))
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid store id {:?}: want a positive integer", id),
                ),
            }
        }
        (_, "/metrics" | "/status" | "/debug/raft_client") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, format!("no such path {}", path)),
    }
}

#[cfg(feature = "failpoints")]
async fn fail_points(req: Request<Body>) -> Response<Body> {
    // Upstream's contract: PUT /fail/<name> with the actions as body,
    // DELETE /fail/<name>, GET /fail lists "name=actions" lines.
    let path = req.uri().path().to_owned();
    let name = path.strip_prefix("/fail/").unwrap_or("").to_owned();
    match *req.method() {
        Method::PUT => {
            if name.is_empty() {
                return text(StatusCode::UNPROCESSABLE_ENTITY, "Missing param name");
            }
            let body = match hyper::body::to_bytes(req.into_body()).await {
                Ok(b) => b,
                Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
            };
            let actions = String::from_utf8_lossy(&body).trim().to_owned();
            if actions.is_empty() {
                return text(StatusCode::UNPROCESSABLE_ENTITY, "Missing param actions");
            }
            match fail::cfg(name.clone(), &actions) {
                Ok(()) => text(
                    StatusCode::OK,
                    format!("Added fail point with name: {}, actions: {}", name, actions),
                ),
                Err(e) => text(StatusCode::BAD_REQUEST, e),
            }
        }
        Method::DELETE => {
            if name.is_empty() {
                return text(StatusCode::UNPROCESSABLE_ENTITY, "Missing param name");
            }
            fail::remove(&name);
            text(
                StatusCode::OK,
                format!("Deleted fail point with name: {}", name),
            )
        }
        Method::GET if path == "/fail" || path == "/fail/" => {
            let list: Vec<String> = fail::list()
                .into_iter()
                .map(|(n, a)| format!("{}={}", n, a))
                .collect();
            text(StatusCode::OK, list.join("\n"))
        }
        Method::GET => text(StatusCode::NOT_FOUND, ""),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, ""),
    }
}

#[cfg(not(feature = "failpoints"))]
async fn fail_points(_req: Request<Body>) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        "failpoints are not compiled in: build tikv-server with --features failpoints",
    )
}

impl StatusServer {
    /// Binds `addr` (port 0 picks a free one) and serves `src`.
    pub fn start(addr: &str, src: Arc<dyn StatusSource>) -> Result<StatusServer, String> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| format!("cannot bind status address {}: {}", addr, e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("status address {}: {}", addr, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("status address {}: {}", addr, e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("status-server")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the status server runtime: {}", e))?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = {
            let _guard = runtime.enter();
            hyper::Server::from_tcp(listener)
                .map_err(|e| format!("status address {}: {}", addr, e))?
                .serve(make_service_fn(move |_| {
                    let src = src.clone();
                    async move {
                        Ok::<_, Infallible>(service_fn(move |req| {
                            let src = src.clone();
                            async move { Ok::<_, Infallible>(route(src, req).await) }
                        }))
                    }
                }))
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
        };
        runtime.spawn(server);
        Ok(StatusServer {
            addr: bound,
            shutdown: Some(tx),
            runtime: Some(runtime),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop();
    }
}
