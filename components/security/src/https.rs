//! TLS for HTTP servers and clients (the status server, test tools), on the
//! same OpenSSL that gRPC links. Upstream's status server
//! (tikv/tikv `src/server/status_server/mod.rs`, `tls_acceptor`,
//! `check_cert`) serves HTTPS whenever `[security]` has certificates; it
//! asks for a client certificate only when `cert-allowed-cn` is set, and
//! then refuses a connection without one at the handshake.

use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslConnector, SslContextBuilder, SslMethod, SslVerifyMode};
use openssl::x509::{X509Ref, X509};

use super::{Certs, SecurityManager};

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("[security] {}: {}", what, e)
}

/// Puts `c` into an OpenSSL context: the CA as the trust store, this
/// process's certificate and key.
fn load(b: &mut SslContextBuilder, c: &Certs) -> Result<(), String> {
    for ca in X509::stack_from_pem(&c.ca).map_err(|e| err("ca-path", e))? {
        b.cert_store_mut()
            .add_cert(ca)
            .map_err(|e| err("ca-path", e))?;
    }
    let cert = X509::from_pem(&c.cert).map_err(|e| err("cert-path", e))?;
    let key = PKey::private_key_from_pem(&c.key).map_err(|e| err("key-path", e))?;
    b.set_certificate(&cert).map_err(|e| err("cert-path", e))?;
    b.set_private_key(&key).map_err(|e| err("key-path", e))?;
    b.check_private_key().map_err(|e| err("key-path", e))
}

impl SecurityManager {
    /// An HTTPS acceptor from the certificate files as they are now (the
    /// last good set during a half-written rotation); `None` when
    /// plaintext. Asked for per connection: the files are read each time
    /// (a rotation is taken by the next connection, as for gRPC), the
    /// acceptor is rebuilt only when they changed. With `cert-allowed-cn`,
    /// a client certificate signed by the CA is required.
    pub fn https_acceptor(&self) -> Result<Option<SslAcceptor>, String> {
        let Some(c) = self.current() else {
            return Ok(None);
        };
        let mut built = self.https.lock().unwrap();
        if let Some((certs, a)) = built.as_ref() {
            if *certs == c {
                return Ok(Some(a.clone()));
            }
        }
        // Upstream uses mozilla_modern (TLS 1.2 and newer).
        let mut b =
            SslAcceptor::mozilla_modern(SslMethod::tls()).map_err(|e| err("https acceptor", e))?;
        load(&mut b, &c)?;
        if !self.cfg.cert_allowed_cn.is_empty() {
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        let a = b.build();
        *built = Some((c, a.clone()));
        Ok(Some(a))
    }

    /// An HTTPS connector presenting this process's certificate and
    /// trusting the CA; `None` when plaintext.
    pub fn https_connector(&self) -> Result<Option<SslConnector>, String> {
        let Some(c) = self.current() else {
            return Ok(None);
        };
        let mut b =
            SslConnector::builder(SslMethod::tls()).map_err(|e| err("https connector", e))?;
        load(&mut b, &c)?;
        Ok(Some(b.build()))
    }

    /// Whether an HTTPS peer with certificate `cert` may use the paths
    /// upstream guards (everything but `GET /metrics` and `GET /status`):
    /// true without `cert-allowed-cn`, else its common name must match as
    /// for gRPC ([`cn_allowed`](super::cn_allowed)).
    pub fn https_peer_allowed(&self, cert: Option<&X509Ref>) -> bool {
        if self.cfg.cert_allowed_cn.is_empty() {
            return true;
        }
        cert.and_then(common_name)
            .is_some_and(|cn| super::cn_allowed(&self.cfg.cert_allowed_cn, &cn))
    }
}

/// The first common name in `cert`'s subject.
pub fn common_name(cert: &X509Ref) -> Option<String> {
    let e = cert
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()?;
    // Not UTF-8: no name, so the check fails rather than guesses.
    std::str::from_utf8(e.data().as_slice())
        .ok()
        .map(str::to_owned)
}
