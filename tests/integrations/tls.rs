//! `[security]` over real gRPC: mutual TLS for the PD client, the raft
//! client and the raft service, `cert-allowed-cn`, refusals that fail fast
//! and clearly, and certificates rotated on disk. Certificates are made at
//! run time by `security::test_certs`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::{ChannelBuilder, Environment, RpcStatusCode};
use kvproto::pdpb::{self, GetMembersRequest};
use pd_client::{Config as PdConfig, Error as PdError, PdClient, RpcClient};
use security::test_certs::Ca;
use security::{SecurityConfig, SecurityManager};
use test_pd::{NotFoundShape, Server as PdServer};
use tikv::server::resolve::{self, resolve_blocking, ResolverConfig};
use tikv_util::config::ReadableDuration;
use tikv_util::logger::LogCapture;
use tikv_util::worker::Worker;

use crate::util::*;

const T: Duration = Duration::from_secs(20);

fn mgr(cfg: &SecurityConfig) -> Arc<SecurityManager> {
    Arc::new(SecurityManager::new(cfg).unwrap())
}

fn allowed(mut cfg: SecurityConfig, cns: &[&str]) -> SecurityConfig {
    cfg.cert_allowed_cn = cns.iter().map(|s| s.to_string()).collect();
    cfg
}

fn pd_tls(shape: NotFoundShape, sec: &Arc<SecurityManager>) -> PdServer {
    PdServer::start_with_security(&["127.0.0.1:0".to_owned()], shape, sec.clone()).unwrap()
}

fn fast_pd_cfg(pd: &PdServer) -> PdConfig {
    let mut c = PdConfig::new(pd.endpoints());
    c.retry_interval = ReadableDuration::millis(10);
    c.retry_max_count = 2;
    c.request_timeout = ReadableDuration::millis(500);
    c
}

fn try_pd_client(pd: &PdServer, sec: &Arc<SecurityManager>) -> Result<RpcClient, PdError> {
    RpcClient::new_with_security(
        &fast_pd_cfg(pd),
        None,
        sec.clone(),
        tikv_util::logger::discard(),
    )
}

/// One GetMembers on a fresh channel made by `sec`: the gRPC status code.
fn raw_get_members(addr: &str, sec: &SecurityManager) -> RpcStatusCode {
    let env = Arc::new(Environment::new(1));
    let c = pdpb::PdClient::new(sec.connect(ChannelBuilder::new(env), addr));
    let opt = grpcio::CallOption::default().timeout(Duration::from_secs(3));
    match c.get_members_opt(&GetMembersRequest::default(), opt) {
        Ok(_) => RpcStatusCode::OK,
        Err(grpcio::Error::RpcFailure(s)) => s.code(),
        Err(e) => panic!("unexpected error {:?}", e),
    }
}

fn copy_set(from: &SecurityConfig, to: &SecurityConfig) {
    for (a, b) in [
        (&from.ca_path, &to.ca_path),
        (&from.cert_path, &to.cert_path),
        (&from.key_path, &to.key_path),
    ] {
        std::fs::copy(a, b).unwrap();
    }
}

fn certs(dir: &Path, ca: &Ca, name: &str, cn: &str) -> SecurityConfig {
    ca.write(dir, name, cn)
}

#[test]
fn pd_client_over_mtls_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("lab-ca");
    let pd_sec = mgr(&allowed(certs(dir.path(), &ca, "pd", "pd"), &["tikv"]));
    let store_sec = mgr(&certs(dir.path(), &ca, "tikv", "tikv"));
    for shape in [NotFoundShape::GrpcStatus, NotFoundShape::Header] {
        let pd = pd_tls(shape, &pd_sec);
        pd.add_store(1, "127.0.0.1:20160");
        pd.add_store(2, "127.0.0.1:20161");
        let c = try_pd_client(&pd, &store_sec).unwrap();
        assert_eq!(c.get_store(1).unwrap().get_address(), "127.0.0.1:20160");
        pd.bury(2);
        assert!(matches!(c.get_store(2), Err(PdError::StoreTombstone(_))));
        assert!(pd.remove_tombstone(2));
        assert!(matches!(c.get_store(2), Err(PdError::StoreNotFound(2))));
        assert_eq!(c.reconnect_stats().attempts(), 0);
    }
}

#[test]
fn raft_client_over_mtls_tombstone_and_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("lab-ca");
    let sec = mgr(&allowed(certs(dir.path(), &ca, "tikv", "tikv"), &["tikv"]));
    for shape in [NotFoundShape::GrpcStatus, NotFoundShape::Header] {
        let pd = pd_tls(shape, &sec);
        let opts = || NodeOptions {
            security: Some(sec.clone()),
            ..Default::default()
        };
        let mut n2 = Node::start_with(Receiver::Ours, 2, "127.0.0.1:0", opts());
        pd.add_store(2, &n2.addr());
        let log = LogCapture::new();
        let (_w, mut c, ext) = raft_client_with(&pd, 1, fast_cfg(), &log, &sec);
        c.send(msg(1, 1, 2)).unwrap();
        c.flush();
        wait_until(T, "delivered over TLS", || n2.ext.fed_count() == 1);

        // Tombstone: the store goes away and PD buries it.
        n2.stop();
        pd.bury(2);
        wait_until(T, "tombstone verdict over TLS", || {
            let _ = c.send(msg(2, 1, 2));
            c.flush();
            c.is_tombstone(2)
        });
        // Not found: a store PD does not know.
        c.send(msg(3, 1, 4)).unwrap();
        c.flush();
        wait_until(T, "not-found episode over TLS", || {
            c.in_not_found_episode(4)
        });
        assert!(!c.is_tombstone(4));
        assert!(ext.maybe_tombstone_count(4) >= 1);
        c.stop();
        assert_balanced(&c);
    }
}

#[test]
fn refusals_are_clear_and_fast() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("lab-ca");
    let pd_sec = mgr(&allowed(certs(dir.path(), &ca, "pd", "pd"), &["tikv"]));
    let pd = pd_tls(NotFoundShape::Header, &pd_sec);
    let addr = pd.endpoints()[0].clone();

    // The allowed CN gets in.
    let ok = mgr(&certs(dir.path(), &ca, "tikv", "tikv"));
    assert_eq!(raw_get_members(&addr, &ok), RpcStatusCode::OK);

    // As upstream (tikv/tikv components/security `match_peer_names`), an
    // allowed name matches a CN that contains it.
    let ok_too = mgr(&certs(dir.path(), &ca, "tikv-1", "tikv-store-1"));
    assert_eq!(raw_get_members(&addr, &ok_too), RpcStatusCode::OK);

    // A CN not in cert-allowed-cn: upstream's UNAUTHENTICATED and text,
    // and the PD client says so instead of retrying.
    let intruder = mgr(&certs(dir.path(), &ca, "intruder", "intruder"));
    assert_eq!(
        raw_get_members(&addr, &intruder),
        RpcStatusCode::UNAUTHENTICATED
    );
    let e = format!("{:?}", try_pd_client(&pd, &intruder).err().unwrap());
    assert!(
        e.contains("Common name check fail, reason: x509_common_name from peer is intruder")
            && e.contains("cert_allowed_cn"),
        "{}",
        e
    );

    // A certificate another CA signed (trusting the right CA): refused at
    // the handshake.
    let other_ca = Ca::new("other-ca");
    let foreign_leaf = certs(dir.path(), &other_ca, "foreign", "tikv");
    let mut foreign = foreign_leaf.clone();
    foreign.ca_path = ok.config().ca_path.clone();
    // The manager refuses this set itself: its certificate is not the CA's.
    assert!(SecurityManager::new(&foreign)
        .unwrap_err()
        .contains("not signed"));
    // Forced past our own check, the server refuses it.
    let forced = mgr(&foreign_leaf);
    std::fs::copy(&ok.config().ca_path, &foreign_leaf.ca_path).unwrap();
    assert_eq!(raw_get_members(&addr, &forced), RpcStatusCode::UNAVAILABLE);

    // Plaintext to a TLS server, and TLS to a plaintext server: errors
    // within the client's retries, no hang.
    let t = Instant::now();
    let plain = SecurityManager::plaintext();
    assert_eq!(raw_get_members(&addr, &plain), RpcStatusCode::UNAVAILABLE);
    assert!(try_pd_client(&pd, &plain).err().unwrap().is_transport());
    let plain_pd = PdServer::single();
    let plain_addr = plain_pd.endpoints()[0].clone();
    assert_eq!(
        raw_get_members(&plain_addr, &ok),
        RpcStatusCode::UNAVAILABLE
    );
    assert!(try_pd_client(&plain_pd, &ok).err().unwrap().is_transport());
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());

    // The raft service refuses a CN not allowed with UNAUTHENTICATED too,
    // and the raft client reports the messages instead of delivering them.
    let store_sec = mgr(&allowed(certs(dir.path(), &ca, "store", "tikv"), &["tikv"]));
    let pd2 = pd_tls(NotFoundShape::Header, &store_sec);
    let node = Node::start_with(
        Receiver::Ours,
        2,
        "127.0.0.1:0",
        NodeOptions {
            security: Some(store_sec.clone()),
            ..Default::default()
        },
    );
    pd2.add_store(2, &node.addr());
    let log = LogCapture::new();
    // The intruder's PD client is refused too, so resolve with ours and
    // connect to the store with the intruder's certificate.
    let ext = tikv::server::RecordingExtension::new();
    let w = Worker::new("addr-resolver");
    let r = resolve::new_resolver_with(
        pd_client_with(&pd2, &store_sec),
        &w,
        ext.clone(),
        ResolverConfig::default(),
        log.logger(),
    );
    let mut c = tikv::server::RaftClient::new(
        1,
        tikv::server::ConnectionBuilder::new(env(), fast_cfg(), r, ext.clone())
            .security(intruder.clone())
            .logger(log.logger()),
    );
    c.send(msg(1, 1, 2)).unwrap();
    c.flush();
    wait_until(T, "the message reported, not delivered", || {
        c.stats().reported_unreachable >= 1
    });
    assert_eq!(node.ext.fed_count(), 0);
    c.stop();
    assert_balanced(&c);
}

/// Both receivers over mutual TLS: ours and the one that ends calls as an
/// unpatched TiKV does; an allowed CN delivers, another is refused with
/// upstream's UNAUTHENTICATED and what was sent is reported, not lost.
#[test]
fn raft_client_over_mtls_to_both_receivers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("lab-ca");
    let server_sec = mgr(&allowed(certs(dir.path(), &ca, "store", "tikv"), &["tikv"]));
    let pd = pd_tls(NotFoundShape::Header, &server_sec);
    let ok = mgr(&certs(dir.path(), &ca, "tikv-1", "tikv-1"));
    let intruder = mgr(&certs(dir.path(), &ca, "intruder", "intruder"));
    for kind in RECEIVERS {
        let node = Node::start_with(
            kind,
            2,
            "127.0.0.1:0",
            NodeOptions {
                security: Some(server_sec.clone()),
                ..Default::default()
            },
        );
        pd.add_store(2, &node.addr());
        for (client_sec, delivers) in [(&ok, true), (&intruder, false)] {
            let before = node.ext.fed_count();
            let ext = tikv::server::RecordingExtension::new();
            let w = Worker::new("addr-resolver");
            let log = LogCapture::new();
            let r = resolve::new_resolver_with(
                pd_client_with(&pd, &server_sec),
                &w,
                ext.clone(),
                ResolverConfig::default(),
                log.logger(),
            );
            let mut c = tikv::server::RaftClient::new(
                1,
                tikv::server::ConnectionBuilder::new(env(), fast_cfg(), r, ext)
                    .security(client_sec.clone())
                    .logger(log.logger()),
            );
            c.send(msg(1, 1, 2)).unwrap();
            c.flush();
            if delivers {
                wait_until(T, "delivered over TLS", || {
                    node.ext.fed_count() == before + 1
                });
            } else {
                wait_until(T, "reported, not delivered", || {
                    c.stats().reported_unreachable >= 1
                });
                assert_eq!(node.ext.fed_count(), before, "{:?}", kind);
            }
            c.stop();
            assert_balanced(&c);
        }
    }
}

#[test]
fn rotated_certificates_are_used_by_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("lab-ca");
    let pd_sec = mgr(&allowed(certs(dir.path(), &ca, "pd", "pd"), &["client-a"]));
    let pd = pd_tls(NotFoundShape::Header, &pd_sec);
    pd.add_store(1, "127.0.0.1:20160");
    let addr = pd.endpoints()[0].clone();

    // Client side: a client on certificate A works; the files are
    // rotated to certificate B (a CN the server does not allow): the next
    // connection carries B and is refused, the open one keeps working.
    let client_cfg = certs(dir.path(), &ca, "client", "client-a");
    let client_sec = mgr(&client_cfg);
    let old = try_pd_client(&pd, &client_sec).unwrap();
    assert!(old.get_store(1).is_ok());
    let b = certs(dir.path(), &ca, "client-b", "client-b");
    copy_set(&b, &client_cfg);
    assert_eq!(
        raw_get_members(&addr, &client_sec),
        RpcStatusCode::UNAUTHENTICATED
    );
    assert!(
        old.get_store(1).is_ok(),
        "the open connection keeps its handshake"
    );

    // Server side: the PD's files are rotated to a new CA's set. Clients
    // trusting only the old CA are refused on new connections; clients of
    // the new CA get in; the old connection keeps working.
    let new_ca = Ca::new("new-ca");
    copy_set(
        &certs(dir.path(), &new_ca, "pd-next", "pd"),
        pd_sec.config(),
    );
    let old_ca_client = mgr(&certs(dir.path(), &ca, "old-a", "client-a"));
    assert_eq!(
        raw_get_members(&addr, &old_ca_client),
        RpcStatusCode::UNAVAILABLE
    );
    let new_ca_client = mgr(&certs(dir.path(), &new_ca, "new-a", "client-a"));
    assert_eq!(raw_get_members(&addr, &new_ca_client), RpcStatusCode::OK);
    assert!(old.get_store(1).is_ok(), "the open connection still works");
}

#[test]
fn resolver_over_tls_reads_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("lab-ca");
    let sec = mgr(&certs(dir.path(), &ca, "tikv", "tikv"));
    let pd = pd_tls(NotFoundShape::GrpcStatus, &sec);
    pd.add_store(3, "127.0.0.1:20163");
    let ext = tikv::server::RecordingExtension::new();
    let w = Worker::new("addr-resolver");
    let r = resolve::new_resolver_with(
        pd_client_with(&pd, &sec),
        &w,
        ext,
        ResolverConfig::default(),
        tikv_util::logger::discard(),
    );
    assert_eq!(resolve_blocking(&r, 3, T).unwrap(), "127.0.0.1:20163");
}

/// What the status server shows in these tests.
struct Shown;

impl server::status_server::StatusSource for Shown {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "store_id": 7 })
    }
    fn raft_client(&self) -> serde_json::Value {
        serde_json::json!({ "connections": {} })
    }
    fn add_peer_store(&self, _: u64) -> usize {
        0
    }
    fn resolve(
        &self,
        store_id: u64,
        cb: Box<dyn FnOnce(serde_json::Value) + Send>,
    ) -> Result<(), String> {
        cb(serde_json::json!({ "store_id": store_id, "address": "127.0.0.1:1" }));
        Ok(())
    }
}

fn status_server(sec: &Arc<SecurityManager>) -> server::status_server::StatusServer {
    server::status_server::StatusServer::start(
        "127.0.0.1:0",
        Arc::new(Shown),
        sec.clone(),
        tikv_util::logger::discard(),
    )
    .unwrap()
}

fn https(cfg: &SecurityConfig) -> test_lab::http::HttpClient {
    test_lab::http::HttpClient::with_security(&SecurityManager::new(cfg).unwrap()).unwrap()
}

/// A client trusting `ca` that presents no certificate.
fn https_without_cert(ca: &Ca) -> test_lab::http::HttpClient {
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    b.cert_store_mut()
        .add_cert(openssl::x509::X509::from_pem(&ca.pem()).unwrap())
        .unwrap();
    test_lab::http::HttpClient::with_connector(b.build())
}

#[test]
fn status_server_serves_https_with_upstreams_checks() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("lab-ca");
    let sec = mgr(&allowed(certs(dir.path(), &ca, "tikv", "tikv"), &["tikv"]));
    let s = status_server(&sec);
    let url = |scheme: &str, path: &str| format!("{}://{}{}", scheme, s.addr(), path);

    // An allowed certificate reads everything.
    let tikv = https(&certs(dir.path(), &ca, "client", "tikv-client"));
    assert_eq!(
        tikv.get_json(&url("https", "/status")).unwrap()["store_id"],
        7
    );
    assert!(tikv
        .get_text(&url("https", "/metrics"))
        .unwrap()
        .contains("# TYPE"));
    assert!(tikv.get_json(&url("https", "/debug/raft_client")).is_ok());

    // Another CN of the same CA: /metrics and /status as upstream, the rest
    // 403 with upstream's text.
    let other = https(&certs(dir.path(), &ca, "other", "intruder"));
    assert!(other.get_text(&url("https", "/metrics")).is_ok());
    assert!(other.get_json(&url("https", "/status")).is_ok());
    let (code, body) = other
        .request("GET", &url("https", "/debug/raft_client"), "")
        .unwrap();
    assert_eq!((code, body.as_str()), (403, "certificate role error"));
    let (code, _) = other
        .request("PUT", &url("https", "/debug/synthetic/peer_store/9"), "")
        .unwrap();
    assert_eq!(code, 403);

    // No certificate, another CA's certificate, plaintext: refused at once
    // (an error, never a hang nor a timeout).
    let refused = |c: &test_lab::http::HttpClient, scheme: &str| {
        // Refused, not left to the client's 5 s timeout.
        let e = c.get_text(&url(scheme, "/metrics")).unwrap_err();
        assert!(!e.contains("timed out"), "{}", e);
    };
    refused(&https_without_cert(&ca), "https");
    let foreign = https(&certs(dir.path(), &Ca::new("foreign-ca"), "f", "tikv"));
    refused(&foreign, "https");
    refused(&test_lab::http::HttpClient::plain(), "http");

    // Rotated on disk to a new CA: the next connection takes it.
    let new_ca = Ca::new("new-ca");
    copy_set(
        &certs(dir.path(), &new_ca, "tikv-next", "tikv"),
        sec.config(),
    );
    refused(&tikv, "https");
    let renewed = https(&certs(dir.path(), &new_ca, "client-next", "tikv-client"));
    assert!(renewed
        .get_json(&url("https", "/debug/raft_client"))
        .is_ok());
}

#[test]
fn status_server_without_cert_allowed_cn_asks_no_client_certificate() {
    // Upstream asks for a client certificate only with cert-allowed-cn.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("lab-ca");
    let sec = mgr(&certs(dir.path(), &ca, "tikv", "tikv"));
    let s = status_server(&sec);
    let anyone = https_without_cert(&ca);
    let v = anyone
        .get_json(&format!("https://{}/debug/raft_client", s.addr()))
        .unwrap();
    assert!(v.get("connections").is_some());
    // The server's certificate is checked by the client: another CA's
    // client does not trust it.
    let stranger = https_without_cert(&Ca::new("foreign-ca"));
    assert!(stranger
        .get_text(&format!("https://{}/metrics", s.addr()))
        .is_err());
    // Plain HTTP status servers stay plain.
    let plain = status_server(&SecurityManager::plaintext());
    assert!(test_lab::http::get_text(&format!("http://{}/metrics", plain.addr())).is_ok());
}
