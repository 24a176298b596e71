//! A small blocking HTTP client (hyper) for the status server and
//! test-pd's API: plain HTTP, or HTTPS presenting a `[security]`
//! certificate, as Prometheus or an operator's curl would against a TLS
//! store.

use std::pin::Pin;
use std::time::Duration;

use hyper::{Body, Method, Request, Uri};
use openssl::ssl::SslConnector;
use security::SecurityManager;

/// How long one request may take, handshakes included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A client: plain, or HTTPS with a certificate.
#[derive(Clone, Default)]
pub struct HttpClient {
    tls: Option<SslConnector>,
}

impl HttpClient {
    /// Plain HTTP.
    pub fn plain() -> HttpClient {
        HttpClient::default()
    }

    /// HTTPS with `mgr`'s certificate and CA, or plain when `mgr` is.
    pub fn with_security(mgr: &SecurityManager) -> Result<HttpClient, String> {
        Ok(HttpClient {
            tls: mgr.https_connector()?,
        })
    }

    /// HTTPS through `connector` (a test builds one without a certificate,
    /// or trusting another CA).
    pub fn with_connector(connector: SslConnector) -> HttpClient {
        HttpClient {
            tls: Some(connector),
        }
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Sends `method url` with `body`; returns the status code and the body.
    pub fn request(&self, method: &str, url: &str, body: &str) -> Result<(u16, String), String> {
        let m = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let ctx = |e: &dyn std::fmt::Display| format!("{} {}: {}", m, url, e);
        let uri: Uri = url.parse().map_err(|e| ctx(&e))?;
        let host = uri.host().ok_or_else(|| ctx(&"no host"))?.to_owned();
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(ctx(&"want an http:// or https:// URL")),
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let req = Request::builder()
            .method(m.clone())
            .uri(path)
            .header("host", format!("{}:{}", host, port))
            .body(Body::from(body.to_owned()))
            .map_err(|e| ctx(&e))?;
        let tls = match (https, &self.tls) {
            (false, _) => None,
            (true, Some(c)) => Some(c.clone()),
            (true, None) => return Err(ctx(&"https wants a client with [security]")),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ctx(&e))?;
        let call = async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?;
            match tls {
                None => send(tcp, req).await,
                Some(c) => {
                    let ssl = c
                        .configure()
                        .and_then(|c| c.into_ssl(&host))
                        .map_err(|e| e.to_string())?;
                    let mut s =
                        tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
                    Pin::new(&mut s)
                        .connect()
                        .await
                        .map_err(|e| format!("TLS handshake: {}", e))?;
                    send(s, req).await
                }
            }
        };
        rt.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, call)
                .await
                .map_err(|_| ctx(&"timed out"))?
                .map_err(|e| ctx(&e))
        })
    }

    /// `GET url`, expecting 200 and JSON.
    pub fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let body = self.get_text(url)?;
        serde_json::from_str(&body).map_err(|e| format!("GET {}: not JSON: {}", url, e))
    }

    /// `GET url`, expecting 200; the body.
    pub fn get_text(&self, url: &str) -> Result<String, String> {
        let (code, body) = self.request("GET", url, "")?;
        if code != 200 {
            return Err(format!("GET {}: {} {}", url, code, body));
        }
        Ok(body)
    }
}

/// One request on a fresh connection.
async fn send<IO>(io: IO, req: Request<Body>) -> Result<(u16, String), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let bytes = hyper::body::to_bytes(resp.into_body())
        .await
        .map_err(|e| e.to_string())?;
    Ok((code, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Plain `method url` with `body`; the status code and the body.
pub fn request(method: &str, url: &str, body: &str) -> Result<(u16, String), String> {
    HttpClient::plain().request(method, url, body)
}

/// Plain `GET url`, expecting 200 and JSON.
pub fn get_json(url: &str) -> Result<serde_json::Value, String> {
    HttpClient::plain().get_json(url)
}

/// Plain `GET url`, expecting 200; the body.
pub fn get_text(url: &str) -> Result<String, String> {
    HttpClient::plain().get_text(url)
}
