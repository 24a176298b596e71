//! A small blocking HTTP client (hyper) for the status server and
//! test-pd's API.

use std::time::Duration;

use hyper::{Body, Client, Method, Request};

/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `method url` with `body`; returns the status code and the body.
pub fn request(method: &str, url: &str, body: &str) -> Result<(u16, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {}", e))?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let req = Request::builder()
        .method(method.clone())
        .uri(url)
        .body(Body::from(body.to_owned()))
        .map_err(|e| format!("{} {}: {}", method, url, e))?;
    rt.block_on(async {
        let client = Client::new();
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
            .await
            .map_err(|_| format!("{} {}: timed out", method, url))?
            .map_err(|e| format!("{} {}: {}", method, url, e))?;
        let code = resp.status().as_u16();
        let bytes = hyper::body::to_bytes(resp.into_body())
            .await
            .map_err(|e| format!("{} {}: {}", method, url, e))?;
        Ok((code, String::from_utf8_lossy(&bytes).into_owned()))
    })
}

/// `GET url`, expecting 200 and JSON.
pub fn get_json(url: &str) -> Result<serde_json::Value, String> {
    let (code, body) = request("GET", url, "")?;
    if code != 200 {
        return Err(format!("GET {}: {} {}", url, code, body));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {}: not JSON: {}", url, e))
}

/// `GET url`, expecting 200; the body.
pub fn get_text(url: &str) -> Result<String, String> {
    let (code, body) = request("GET", url, "")?;
    if code != 200 {
        return Err(format!("GET {}: {} {}", url, code, body));
    }
    Ok(body)
}
