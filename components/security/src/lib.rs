//! `[security]`: mutual TLS for PD and peer connections (upstream has the
//! same crate, `components/security`). An empty config means plaintext.
//! With TLS, every new client connection and every new accepted connection
//! reads the certificate files again when they changed, so a rotation on
//! disk needs no restart; connections already open keep their handshake.
//! `cert-allowed-cn` makes servers refuse clients whose certificate common
//! name is not listed.

#![deny(missing_docs)]

pub mod https;
pub mod test_certs;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use grpcio::{
    CertificateRequestType, Channel, ChannelBuilder, ChannelCredentialsBuilder, CheckResult,
    RpcContext, RpcStatus, RpcStatusCode, ServerChecker, ServerCredentials,
    ServerCredentialsBuilder, ServerCredentialsFetcher,
};
use serde::{Deserialize, Serialize};

/// The `[security]` section, with TiKV's keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct SecurityConfig {
    /// PEM file of the CA that signs every peer's certificate.
    pub ca_path: String,
    /// PEM file of this process's certificate.
    pub cert_path: String,
    /// PEM file of this process's private key.
    pub key_path: String,
    /// Common names a client certificate must carry; empty allows any
    /// certificate the CA signed.
    pub cert_allowed_cn: HashSet<String>,
}

/// PEM contents of the three files, read together.
#[derive(Clone, PartialEq, Eq)]
struct Certs {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("[security] {} {}: cannot read: {}", key, path, e))
}

impl SecurityConfig {
    /// True when no TLS file is set: plaintext.
    pub fn is_plaintext(&self) -> bool {
        self.ca_path.is_empty() && self.cert_path.is_empty() && self.key_path.is_empty()
    }

    /// Checks the config and the files: all three paths or none; each file
    /// readable PEM; the key belongs to the certificate; the certificate is
    /// signed by the CA. Errors name the key and the file.
    pub fn validate(&self) -> Result<(), String> {
        if self.is_plaintext() {
            if !self.cert_allowed_cn.is_empty() {
                return Err(
                    "[security] cert-allowed-cn needs TLS: set ca-path, cert-path and key-path"
                        .to_owned(),
                );
            }
            return Ok(());
        }
        for (k, v) in [
            ("ca-path", &self.ca_path),
            ("cert-path", &self.cert_path),
            ("key-path", &self.key_path),
        ] {
            if v.is_empty() {
                return Err(format!(
                    "[security] {} is empty: set ca-path, cert-path and key-path together, or none for plaintext",
                    k
                ));
            }
        }
        self.load().map(|_| ())
    }

    /// Reads and checks the three files.
    fn load(&self) -> Result<Certs, String> {
        let certs = Certs {
            ca: read("ca-path", &self.ca_path)?,
            cert: read("cert-path", &self.cert_path)?,
            key: read("key-path", &self.key_path)?,
        };
        check_pem(&certs, self)?;
        Ok(certs)
    }
}

fn check_pem(c: &Certs, cfg: &SecurityConfig) -> Result<(), String> {
    use openssl::pkey::PKey;
    use openssl::x509::X509;
    let cas = X509::stack_from_pem(&c.ca).map_err(|e| {
        format!(
            "[security] ca-path {} is not a PEM certificate: {}",
            cfg.ca_path, e
        )
    })?;
    if cas.is_empty() {
        return Err(format!(
            "[security] ca-path {} is not a PEM certificate: no certificate found",
            cfg.ca_path
        ));
    }
    let cert = X509::from_pem(&c.cert).map_err(|e| {
        format!(
            "[security] cert-path {} is not a PEM certificate: {}",
            cfg.cert_path, e
        )
    })?;
    let key = PKey::private_key_from_pem(&c.key).map_err(|e| {
        format!(
            "[security] key-path {} is not a PEM private key: {}",
            cfg.key_path, e
        )
    })?;
    let public = cert
        .public_key()
        .map_err(|e| format!("[security] cert-path {}: {}", cfg.cert_path, e))?;
    if !public.public_eq(&key) {
        return Err(format!(
            "[security] key-path {} does not match the certificate in cert-path {}",
            cfg.key_path, cfg.cert_path
        ));
    }
    let signed = cas.iter().any(|ca| {
        ca.public_key()
            .map(|k| cert.verify(&k).unwrap_or(false))
            .unwrap_or(false)
    });
    if !signed {
        return Err(format!(
            "[security] the certificate in cert-path {} is not signed by the CA in ca-path {}",
            cfg.cert_path, cfg.ca_path
        ));
    }
    Ok(())
}

/// The last good certificates.
struct Cache {
    certs: Certs,
}

/// Builds client channels and server credentials from a [`SecurityConfig`].
pub struct SecurityManager {
    cfg: SecurityConfig,
    cache: Mutex<Option<Cache>>,
    /// The HTTPS acceptor and the set it was built from: rebuilt only when
    /// the files change, as the gRPC fetcher's credentials are.
    https: Mutex<Option<(Certs, openssl::ssl::SslAcceptor)>>,
}

impl std::fmt::Debug for SecurityManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityManager")
            .field("tls", &!self.cfg.is_plaintext())
            .field("cert_allowed_cn", &self.cfg.cert_allowed_cn)
            .finish()
    }
}

impl Default for SecurityManager {
    fn default() -> SecurityManager {
        SecurityManager {
            cfg: SecurityConfig::default(),
            cache: Mutex::new(None),
            https: Mutex::new(None),
        }
    }
}

impl SecurityManager {
    /// Checks `cfg` (see [`SecurityConfig::validate`]) and keeps it.
    pub fn new(cfg: &SecurityConfig) -> Result<SecurityManager, String> {
        cfg.validate()?;
        let cache = if cfg.is_plaintext() {
            None
        } else {
            Some(Cache { certs: cfg.load()? })
        };
        Ok(SecurityManager {
            cfg: cfg.clone(),
            cache: Mutex::new(cache),
            https: Mutex::new(None),
        })
    }

    /// A plaintext manager, shared.
    pub fn plaintext() -> Arc<SecurityManager> {
        Arc::new(SecurityManager::default())
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        !self.cfg.is_plaintext()
    }

    /// The config.
    pub fn config(&self) -> &SecurityConfig {
        &self.cfg
    }

    /// The current certificates: the files as they are now when they form
    /// a valid set, else the last good set (a half-written rotation is not
    /// taken). Read for each new connection, which is rare; comparing
    /// contents rather than file times catches a rewrite within the file
    /// system's time granularity.
    fn current(&self) -> Option<Certs> {
        let mut cache = self.cache.lock().unwrap();
        let c = cache.as_mut()?;
        if let Ok(certs) = self.cfg.load() {
            c.certs = certs;
        }
        Some(c.certs.clone())
    }

    /// Connects `cb` to `addr`, with TLS when configured (the certificate
    /// files as they are on disk now).
    pub fn connect(&self, cb: ChannelBuilder, addr: &str) -> Channel {
        match self.current() {
            None => cb.connect(addr),
            Some(c) => {
                let creds = ChannelCredentialsBuilder::new()
                    .root_cert(c.ca)
                    .cert(c.cert, c.key)
                    .build();
                cb.set_credentials(creds).connect(addr)
            }
        }
    }

    /// Credentials for a server's listening port: insecure, or TLS that
    /// requires and verifies a client certificate and re-reads the files
    /// for every new connection when they changed.
    pub fn server_credentials(self: &Arc<Self>) -> ServerCredentials {
        if !self.is_tls() {
            return ServerCredentials::insecure();
        }
        ServerCredentials::with_fetcher(
            Box::new(Fetcher {
                mgr: self.clone(),
                served: Mutex::new(None),
            }),
            CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
        )
    }

    /// The `cert-allowed-cn` checker for a server, if the list is set.
    pub fn cn_checker(&self) -> Option<CnChecker> {
        if self.cfg.cert_allowed_cn.is_empty() {
            None
        } else {
            Some(CnChecker {
                allowed: Arc::new(self.cfg.cert_allowed_cn.clone()),
            })
        }
    }

    /// Adds the `cert-allowed-cn` checker to `sb` when configured.
    pub fn bind(&self, sb: grpcio::ServerBuilder) -> grpcio::ServerBuilder {
        match self.cn_checker() {
            Some(c) => sb.add_checker(c),
            None => sb,
        }
    }
}

struct Fetcher {
    mgr: Arc<SecurityManager>,
    served: Mutex<Option<Certs>>,
}

impl ServerCredentialsFetcher for Fetcher {
    fn fetch(&self) -> Result<Option<ServerCredentialsBuilder>, Box<dyn std::error::Error>> {
        let c = self
            .mgr
            .current()
            .ok_or("TLS credentials asked of a plaintext manager")?;
        let mut served = self.served.lock().unwrap();
        if served.as_ref() == Some(&c) {
            return Ok(None);
        }
        let b = ServerCredentialsBuilder::new()
            .root_cert(
                c.ca.clone(),
                CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
            )
            .add_cert(c.cert.clone(), c.key.clone());
        *served = Some(c);
        Ok(Some(b))
    }
}

/// The common name of the peer's certificate, if the call came over TLS.
pub fn peer_common_name(ctx: &RpcContext<'_>) -> Option<String> {
    let auth = ctx.auth_context()?;
    let cn = auth
        .into_iter()
        .find(|p| p.name() == "x509_common_name")?
        .value_str()
        .ok()?
        .to_owned();
    Some(cn)
}

/// Whether `cn` is allowed: as upstream's `match_peer_names` (tikv/tikv
/// components/security), an allowed name matches any CN containing it.
pub fn cn_allowed(allowed: &HashSet<String>, cn: &str) -> bool {
    allowed.iter().any(|a| cn.contains(a.as_str()))
}

/// Refuses calls whose client certificate common name is not allowed, as
/// upstream's `CnChecker` does: UNAUTHENTICATED, "Common name check fail,
/// reason: ..., cert_allowed_cn: ...".
#[derive(Clone)]
pub struct CnChecker {
    allowed: Arc<HashSet<String>>,
}

impl ServerChecker for CnChecker {
    fn check(&mut self, ctx: &RpcContext) -> CheckResult {
        let reason = match peer_common_name(ctx) {
            Some(cn) if cn_allowed(&self.allowed, &cn) => return CheckResult::Continue,
            Some(cn) => format!("x509_common_name from peer is {}", cn),
            None => "x509_common_name doesn't exist".to_owned(),
        };
        CheckResult::Abort(RpcStatus::with_message(
            RpcStatusCode::UNAUTHENTICATED,
            format!(
                "Common name check fail, reason: {}, cert_allowed_cn: {:?}",
                reason, self.allowed
            ),
        ))
    }

    fn box_clone(&self) -> Box<dyn ServerChecker> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::test_certs::Ca;
    use super::*;

    #[test]
    fn toml_section_as_tikv() {
        #[derive(Deserialize)]
        struct F {
            security: SecurityConfig,
        }
        let f: F = toml::from_str(
            "[security]\nca-path = \"/c/ca.pem\"\ncert-path = \"/c/s.pem\"\nkey-path = \"/c/s-key.pem\"\ncert-allowed-cn = [\"tikv\", \"pd\"]\n",
        )
        .unwrap();
        assert_eq!(f.security.ca_path, "/c/ca.pem");
        assert!(f.security.cert_allowed_cn.contains("pd"));
        assert!(SecurityConfig::default().is_plaintext());
        SecurityManager::new(&SecurityConfig::default()).unwrap();
        assert!(!SecurityManager::plaintext().is_tls());
    }

    fn err(cfg: &SecurityConfig) -> String {
        SecurityManager::new(cfg).unwrap_err()
    }

    #[test]
    fn half_filled_missing_or_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test-ca");
        let good = ca.write(dir.path(), "tikv", "tikv");
        assert!(SecurityManager::new(&good).unwrap().is_tls());

        let mut c = good.clone();
        c.key_path.clear();
        assert!(err(&c).contains("key-path is empty"), "{}", err(&c));
        let mut c = good.clone();
        c.ca_path.clear();
        assert!(err(&c).contains("ca-path is empty"));

        let mut c = good.clone();
        c.cert_path = dir.path().join("nope.pem").display().to_string();
        assert!(
            err(&c).contains("cert-path") && err(&c).contains("nope.pem"),
            "{}",
            err(&c)
        );

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let mut c = good.clone();
        c.ca_path = junk.display().to_string();
        assert!(
            err(&c).contains("ca-path") && err(&c).contains("not a PEM"),
            "{}",
            err(&c)
        );
        let mut c = good.clone();
        c.key_path = junk.display().to_string();
        assert!(
            err(&c).contains("key-path") && err(&c).contains("not a PEM private key"),
            "{}",
            err(&c)
        );

        // A key of another certificate.
        let other = ca.write(dir.path(), "other", "other");
        let mut c = good.clone();
        c.key_path = other.key_path.clone();
        assert!(err(&c).contains("does not match"), "{}", err(&c));

        // A certificate another CA signed.
        let foreign = Ca::new("foreign-ca").write(dir.path(), "foreign", "tikv");
        let mut c = good.clone();
        c.cert_path = foreign.cert_path.clone();
        c.key_path = foreign.key_path.clone();
        assert!(err(&c).contains("not signed by the CA"), "{}", err(&c));

        // An unreadable file (a directory).
        let mut c = good.clone();
        c.ca_path = dir.path().display().to_string();
        assert!(err(&c).contains("cannot read"), "{}", err(&c));

        // cert-allowed-cn without TLS.
        let mut c = SecurityConfig::default();
        c.cert_allowed_cn.insert("tikv".into());
        assert!(err(&c).contains("cert-allowed-cn needs TLS"), "{}", err(&c));
    }

    #[test]
    fn a_half_written_rotation_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test-ca");
        let cfg = ca.write(dir.path(), "tikv", "tikv");
        let m = SecurityManager::new(&cfg).unwrap();
        let before = m.current().unwrap();
        // New certificate written, key not yet: not taken.
        let next = ca.issue("tikv-2");
        std::fs::write(&cfg.cert_path, &next.cert).unwrap();
        assert!(m.current().unwrap() == before);
        // Key written too: taken.
        std::fs::write(&cfg.key_path, &next.key).unwrap();
        let now = m.current().unwrap();
        assert_eq!(now.cert, next.cert);
    }
}
