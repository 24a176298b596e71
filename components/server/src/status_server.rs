//! The status server (upstream: `src/server/status_server/mod.rs`, also on
//! hyper): `/metrics`, `/status`, a JSON view of the raft client for
//! operators and tests, `/debug/resolve/<id>` (what this store resolves a
//! store to, and how long that took), and, with the `failpoints` feature, TiKV's
//! failpoint endpoints (`PUT`/`DELETE /fail/<name>`, `GET /fail`).
//!
//! With certificates in `[security]` it serves HTTPS only, as upstream's
//! does: the certificates are read again for each connection (a rotation
//! needs no restart); with `cert-allowed-cn`, a client certificate is
//! required at the handshake, and every path but `GET /metrics` and
//! `GET /status` also wants an allowed common name (else 403 "certificate
//! role error", upstream's text). Like upstream, the failpoint endpoints
//! are routed before that check.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::Http;
use hyper::service::service_fn;
use hyper::{Body, Method, Request, Response, StatusCode};
use prometheus::{Encoder, TextEncoder};
use security::SecurityManager;
use slog::{warn, Logger};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the status server shows; implemented by the running store.
pub trait StatusSource: Send + Sync + 'static {
    /// `GET /status`.
    fn status(&self) -> serde_json::Value;
    /// `GET /debug/raft_client`.
    fn raft_client(&self) -> serde_json::Value;
    /// `PUT /debug/synthetic/peer_store/<id>`: adds a peer on that store to
    /// every region this store is in; returns the regions changed.
    fn add_peer_store(&self, store_id: u64) -> usize;
    /// `GET /debug/resolve/<id>`: resolves the store as the raft client
    /// would; `cb` gets the answer (address or verdict) and how long it took.
    /// An error means the resolver did not take the request (`cb` is never
    /// called).
    fn resolve(
        &self,
        store_id: u64,
        cb: Box<dyn FnOnce(serde_json::Value) + Send>,
    ) -> Result<(), String>;
}

/// Longest a `GET /debug/resolve/<id>` waits for the resolver's answer.
const RESOLVE_WAIT: Duration = Duration::from_secs(30);

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

async fn route(
    src: Arc<dyn StatusSource>,
    peer_allowed: bool,
    req: Request<Body>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/fail" || path.starts_with("/fail/") {
        return fail_points(req).await;
    }
    let open = matches!(
        (req.method(), path.as_str()),
        (&Method::GET, "/metrics") | (&Method::GET, "/status")
    );
    if !open && !peer_allowed {
        return text(StatusCode::FORBIDDEN, "certificate role error");
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
        (&Method::GET, p) if p.starts_with("/debug/resolve/") => {
            let id = &p["/debug/resolve/".len()..];
            match id.parse::<u64>() {
                Ok(id) if id > 0 => {
                    let (tx, rx) = oneshot::channel();
                    let taken = src.resolve(
                        id,
                        Box::new(move |v| {
                            let _ = tx.send(v);
                        }),
                    );
                    if let Err(e) = taken {
                        return json(
                            &serde_json::json!({ "store_id": id, "error": e, "elapsed_ms": 0 }),
                        );
                    }
                    match tokio::time::timeout(RESOLVE_WAIT, rx).await {
                        Ok(Ok(v)) => json(&v),
                        Ok(Err(_)) => text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the resolver dropped the request",
                        ),
                        Err(_) => text(
                            StatusCode::GATEWAY_TIMEOUT,
                            format!("no answer for store {} within {:?}", id, RESOLVE_WAIT),
                        ),
                    }
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
    /// Binds `addr` (port 0 picks a free one) and serves `src`, over HTTPS
    /// when `security` has certificates.
    pub fn start(
        addr: &str,
        src: Arc<dyn StatusSource>,
        security: Arc<SecurityManager>,
        logger: Logger,
    ) -> Result<StatusServer, String> {
        // Fail at start, not at the first connection, on certificates
        // OpenSSL will not take.
        security.https_acceptor()?;
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
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(|e| format!("status address {}: {}", addr, e))?
        };
        let (tx, mut rx) = oneshot::channel::<()>();
        runtime.spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = &mut rx => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(e) => {
                            warn!(logger, "status server accept failed"; "err" => %e);
                            continue;
                        }
                    },
                };
                let (src, security, logger) = (src.clone(), security.clone(), logger.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(tcp, src, &security).await {
                        warn!(logger, "status server connection failed"; "err" => %e);
                    }
                });
            }
        });
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

/// Serves one accepted connection: plain HTTP, or HTTPS with the
/// certificates as they are on disk now.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    src: Arc<dyn StatusSource>,
    security: &SecurityManager,
) -> Result<(), String> {
    let Some(acceptor) = security.https_acceptor()? else {
        return serve_http(tcp, src, true).await;
    };
    let ssl = openssl::ssl::Ssl::new(acceptor.context()).map_err(|e| e.to_string())?;
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut tls).accept()).await {
        Err(_) => return Err("TLS handshake timed out".to_owned()),
        Ok(Err(e)) => return Err(format!("TLS handshake error: {}", e)),
        Ok(Ok(())) => {}
    }
    let allowed = security.https_peer_allowed(tls.ssl().peer_certificate().as_deref());
    serve_http(tls, src, allowed).await
}

async fn serve_http<IO>(
    io: IO,
    src: Arc<dyn StatusSource>,
    peer_allowed: bool,
) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let src = src.clone();
        async move { Ok::<_, Infallible>(route(src, peer_allowed, req).await) }
    });
    Http::new()
        .http1_only(true)
        .serve_connection(io, service)
        .await
        .map_err(|e| e.to_string())
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop();
    }
}
