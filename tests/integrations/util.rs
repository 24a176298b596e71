//! Helpers shared by the integration tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pd_client::{Config as PdConfig, RpcClient};
use test_pd::Server as PdServer;
use tikv::server::resolve::{self, PdStoreAddrResolver, ResolverConfig};
use tikv::server::RaftExtension;
use tikv_util::config::ReadableDuration;
use tikv_util::worker::Worker;

/// A PD client for `pd` with fast retries.
pub fn pd_client(pd: &PdServer) -> Arc<RpcClient> {
    let mut c = PdConfig::new(pd.endpoints());
    c.retry_interval = ReadableDuration::millis(10);
    c.retry_max_count = 3;
    c.reconnect_interval = ReadableDuration::millis(0);
    c.request_timeout = ReadableDuration::millis(500);
    Arc::new(RpcClient::new(&c, None, tikv_util::logger::discard()).unwrap())
}

/// A resolver on its own worker; keep the worker alive as long as the resolver.
pub fn resolver<E: RaftExtension>(
    pd: &PdServer,
    router: E,
    cfg: ResolverConfig,
) -> (Worker, PdStoreAddrResolver) {
    let w = Worker::new("addr-resolver");
    let r =
        resolve::new_resolver_with(pd_client(pd), &w, router, cfg, tikv_util::logger::discard());
    (w, r)
}

/// Waits until `f` holds, polling; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {:?} waiting for {}", timeout, what);
        }
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

use grpcio::Environment;
use kvproto::raft_serverpb::RaftMessage;
use tikv::server::raft_client::StatsSnapshot;
use tikv::server::{Config, ConnectionBuilder, RaftClient, RecordingExtension, Server, Service};
use tikv_util::logger::LogCapture;

/// The raft client type the tests use.
pub type Client = RaftClient<PdStoreAddrResolver, RecordingExtension>;

/// Short backoffs so schedules run in well under a second per step.
pub fn fast_cfg() -> Config {
    Config {
        raft_client_initial_reconnect_backoff: ReadableDuration::millis(50),
        raft_client_max_backoff: ReadableDuration::millis(200),
        raft_client_not_found_max_backoff: ReadableDuration::millis(400),
        raft_client_not_found_log_interval: ReadableDuration::secs(3600),
        raft_client_connect_timeout: ReadableDuration::secs(2),
        store_not_found_cache_ttl: ReadableDuration::millis(10),
        ..Config::default()
    }
}

/// A shared gRPC environment.
pub fn env() -> Arc<Environment> {
    Arc::new(Environment::new(2))
}

/// A store's receiving side: a raft service on loopback.
pub struct Node {
    /// The store id.
    pub store_id: u64,
    /// What the service handed to raftstore.
    pub ext: RecordingExtension,
    /// The service (for counters).
    pub svc: Service<RecordingExtension>,
    /// The gRPC server.
    pub server: Server,
}

impl Node {
    /// Starts a raft service for `store_id` on `addr` ("127.0.0.1:0" for any port).
    pub fn start(
        store_id: u64,
        addr: &str,
        configure: impl FnOnce(Service<RecordingExtension>) -> Service<RecordingExtension>,
    ) -> Node {
        let ext = RecordingExtension::new();
        let svc = configure(Service::new(store_id, ext.clone()));
        let server = Server::start(env(), addr, svc.clone()).unwrap();
        Node {
            store_id,
            ext,
            svc,
            server,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> String {
        self.server.addr().to_owned()
    }
}

/// A raft client for store `self_store_id`, resolving through `pd`.
pub fn raft_client(
    pd: &PdServer,
    self_store_id: u64,
    cfg: Config,
    log: &LogCapture,
) -> (Worker, Client, RecordingExtension) {
    cfg.validate().unwrap();
    let ext = RecordingExtension::new();
    let rcfg = ResolverConfig {
        not_found_ttl: cfg.store_not_found_cache_ttl.0,
        ..Default::default()
    };
    let w = Worker::new("addr-resolver");
    let r = resolve::new_resolver_with(pd_client(pd), &w, ext.clone(), rcfg, log.logger());
    let builder = ConnectionBuilder::new(env(), cfg, r, ext.clone()).logger(log.logger());
    (w, RaftClient::new(self_store_id, builder), ext)
}

/// A message of `region_id` from store `from` to store `to`.
pub fn msg(region_id: u64, from: u64, to: u64) -> RaftMessage {
    let mut m = RaftMessage::default();
    m.set_region_id(region_id);
    m.mut_from_peer().set_id(from * 1000 + region_id);
    m.mut_from_peer().set_store_id(from);
    m.mut_to_peer().set_id(to * 1000 + region_id);
    m.mut_to_peer().set_store_id(to);
    m
}

/// Waits until every message the client took is accounted for, then
/// returns the stats.
pub fn assert_balanced(c: &Client) -> StatsSnapshot {
    wait_until(
        Duration::from_secs(20),
        "sent == delivered + refused + reported",
        || c.stats().balanced(),
    );
    c.stats()
}

/// Starts `n` resolutions of `store_id` at once and waits for all of them;
/// returns how many answered `StoreNotFound(store_id)`.
pub fn resolve_concurrently_not_found<T: resolve::StoreAddrResolver>(
    r: &T,
    store_id: u64,
    n: usize,
) -> usize {
    use std::sync::Mutex;
    let results = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..n {
        let res = results.clone();
        r.resolve(
            store_id,
            Box::new(move |x| {
                let nf = matches!(x, Err(resolve::Error::StoreNotFound(id)) if id == store_id);
                res.lock().unwrap().push(nf);
            }),
        )
        .unwrap();
    }
    wait_until(
        Duration::from_secs(10),
        "every resolution to answer",
        || results.lock().unwrap().len() == n,
    );
    let not_found = results.lock().unwrap().iter().filter(|nf| **nf).count();
    not_found
}
