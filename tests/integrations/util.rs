//! Helpers shared by the integration tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pd_client::{Config as PdConfig, RpcClient};
use security::SecurityManager;
use test_pd::Server as PdServer;
use tikv::server::resolve::{self, PdStoreAddrResolver, ResolverConfig};
use tikv::server::RaftExtension;
use tikv_util::config::ReadableDuration;
use tikv_util::worker::Worker;

/// A PD client for `pd` with fast retries.
pub fn pd_client(pd: &PdServer) -> Arc<RpcClient> {
    pd_client_with(pd, &SecurityManager::plaintext())
}

/// As [`pd_client`], connecting with `security`.
pub fn pd_client_with(pd: &PdServer, security: &Arc<SecurityManager>) -> Arc<RpcClient> {
    let mut c = PdConfig::new(pd.endpoints());
    c.retry_interval = ReadableDuration::millis(10);
    c.retry_max_count = 3;
    c.reconnect_interval = ReadableDuration::millis(0);
    c.request_timeout = ReadableDuration::millis(500);
    Arc::new(
        RpcClient::new_with_security(&c, None, security.clone(), tikv_util::logger::discard())
            .unwrap(),
    )
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
use tikv::server::{
    Config, ConnectionBuilder, RaftClient, RecordingExtension, Server, Service, StoreAliveHook,
};
use tikv_util::logger::LogCapture;

pub use super::upstream_peer::{PeerOptions, UpstreamPeer};

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
        raft_client_call_confirm_window: ReadableDuration::millis(300),
        ..Config::default()
    }
}

/// Backoffs and a not-found cache of an hour: only evidence of life can end
/// a not-found wait within a test's deadline.
pub fn hour_backoffs_cfg() -> Config {
    Config {
        raft_client_initial_reconnect_backoff: ReadableDuration::secs(3600),
        raft_client_max_backoff: ReadableDuration::secs(3600),
        raft_client_not_found_max_backoff: ReadableDuration::secs(3600),
        store_not_found_cache_ttl: ReadableDuration::secs(3600),
        ..fast_cfg()
    }
}

/// A shared gRPC environment.
pub fn env() -> Arc<Environment> {
    Arc::new(Environment::new(2))
}

/// Which receiver a test's stores run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    /// Our raft service (`tikv::server::Service`).
    Ours,
    /// The upstream-like peer (`upstream_peer`).
    Upstream,
}

/// Every raft client test that involves a receiver runs against both.
pub const RECEIVERS: [Receiver; 2] = [Receiver::Ours, Receiver::Upstream];

/// How a test store's receiver is set up.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Upstream peer shapes; `no_batch_raft` applies to ours too.
    pub peer: PeerOptions,
    /// Our service only: evidence-of-life hook.
    pub alive: Option<StoreAliveHook>,
    /// `[security]` of the receiver, ours or the upstream-like one
    /// (plaintext when `None`).
    pub security: Option<Arc<SecurityManager>>,
}

enum Receiving {
    Ours {
        svc: Service<RecordingExtension>,
        server: Server,
    },
    Upstream(UpstreamPeer),
}

/// A store's receiving side on loopback.
pub struct Node {
    /// The store id.
    pub store_id: u64,
    /// What the receiver handed to raftstore.
    pub ext: RecordingExtension,
    receiving: Receiving,
}

impl Node {
    /// Starts `kind` for `store_id` on `addr` ("127.0.0.1:0" for any port).
    pub fn start(kind: Receiver, store_id: u64, addr: &str) -> Node {
        Node::start_with(kind, store_id, addr, NodeOptions::default())
    }

    /// Starts `kind` with options.
    pub fn start_with(kind: Receiver, store_id: u64, addr: &str, opts: NodeOptions) -> Node {
        let ext = RecordingExtension::new();
        let receiving = match kind {
            Receiver::Ours => {
                assert!(
                    !opts.peer.require_source_store_id
                        && !opts.peer.fail_every_call
                        && !opts.peer.unimplemented_after_first_batch,
                    "upstream-like peer options"
                );
                let mut svc = Service::new(store_id, ext.clone());
                if opts.peer.no_batch_raft {
                    svc = svc.without_batch_raft();
                }
                if let Some(hook) = opts.alive {
                    svc = svc.with_store_alive_hook(hook);
                }
                let sec = opts.security.unwrap_or_else(SecurityManager::plaintext);
                let server = Server::start_with(env(), addr, svc.clone(), &sec).unwrap();
                Receiving::Ours { svc, server }
            }
            Receiver::Upstream => {
                assert!(opts.alive.is_none(), "upstream has no alive hook");
                let peer = PeerOptions {
                    security: opts.security.or(opts.peer.security),
                    ..opts.peer
                };
                Receiving::Upstream(UpstreamPeer::start(store_id, addr, peer, ext.clone()))
            }
        };
        Node {
            store_id,
            ext,
            receiving,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> String {
        match &self.receiving {
            Receiving::Ours { server, .. } => server.addr().to_owned(),
            Receiving::Upstream(p) => p.addr().to_owned(),
        }
    }

    /// Non-empty `BatchRaft` batches read.
    pub fn batches(&self) -> u64 {
        match &self.receiving {
            Receiving::Ours { svc, .. } => svc.batches(),
            Receiving::Upstream(p) => p.batches(),
        }
    }

    /// The largest batch read, in messages.
    pub fn max_batch(&self) -> u64 {
        match &self.receiving {
            Receiving::Ours { svc, .. } => svc.max_batch(),
            Receiving::Upstream(p) => p.max_batch(),
        }
    }

    /// Calls failed with store-not-match.
    pub fn rejected(&self) -> u64 {
        match &self.receiving {
            Receiving::Ours { svc, .. } => svc.rejected(),
            Receiving::Upstream(p) => p.rejected(),
        }
    }

    /// Calls opened.
    pub fn calls(&self) -> u64 {
        match &self.receiving {
            Receiving::Ours { svc, .. } => svc.calls(),
            Receiving::Upstream(p) => p.calls(),
        }
    }

    /// The upstream-like peer, when that is what runs.
    pub fn upstream(&self) -> Option<&UpstreamPeer> {
        match &self.receiving {
            Receiving::Ours { .. } => None,
            Receiving::Upstream(p) => Some(p),
        }
    }

    /// Stops serving; open calls are cancelled.
    pub fn stop(&mut self) {
        match &mut self.receiving {
            Receiving::Ours { server, .. } => server.stop(),
            Receiving::Upstream(p) => p.stop(),
        }
    }

    /// The target store ids of every message fed, in order.
    pub fn fed_to_stores(&self) -> Vec<u64> {
        self.ext.with(|r| {
            r.fed
                .iter()
                .map(|m| m.get_to_peer().get_store_id())
                .collect()
        })
    }
}

/// A raft client for store `self_store_id`, resolving through `pd`.
pub fn raft_client(
    pd: &PdServer,
    self_store_id: u64,
    cfg: Config,
    log: &LogCapture,
) -> (Worker, Client, RecordingExtension) {
    raft_client_with(pd, self_store_id, cfg, log, &SecurityManager::plaintext())
}

/// As [`raft_client`], its PD client and connections using `security`.
pub fn raft_client_with(
    pd: &PdServer,
    self_store_id: u64,
    cfg: Config,
    log: &LogCapture,
    security: &Arc<SecurityManager>,
) -> (Worker, Client, RecordingExtension) {
    cfg.validate().unwrap();
    let ext = RecordingExtension::new();
    let rcfg = ResolverConfig {
        not_found_ttl: cfg.store_not_found_cache_ttl.0,
        ..Default::default()
    };
    let w = Worker::new("addr-resolver");
    let r = resolve::new_resolver_with(
        pd_client_with(pd, security),
        &w,
        ext.clone(),
        rcfg,
        log.logger(),
    );
    let builder = ConnectionBuilder::new(env(), cfg, r, ext.clone())
        .security(security.clone())
        .logger(log.logger());
    (w, RaftClient::new(self_store_id, builder), ext)
}

/// Store 1 with hour-long backoffs, its receiver (our service) wired to
/// its raft client's evidence-of-life hook and registered in `pd`, in a
/// not-found episode for store 3, which PD does not know yet: only evidence
/// of life can end that wait within a test's deadline.
pub fn store_1_waiting_for_store_3(pd: &PdServer, log: &LogCapture) -> (Worker, Client, Node) {
    let (w, c1, _) = raft_client(pd, 1, hour_backoffs_cfg(), log);
    let alive_client = c1.clone();
    let opts = NodeOptions {
        alive: Some(Arc::new(move |store| {
            alive_client.notify_store_alive(store)
        })),
        ..Default::default()
    };
    let node1 = Node::start_with(Receiver::Ours, 1, "127.0.0.1:0", opts);
    pd.add_store(1, &node1.addr());
    let mut c1 = c1;
    c1.send(msg(1, 1, 3)).unwrap();
    c1.flush();
    wait_until(
        Duration::from_secs(20),
        "store 3 in a not-found episode",
        || c1.not_found_episode(3).is_some(),
    );
    (w, c1, node1)
}

/// Waits until `f` holds while `c` (store `from`) sends store `to` a
/// message every 5 ms, regions cycling so every connection gets some:
/// traffic drives the schedules, an idle connection waits for a message.
/// Panics with `what` after 20 s.
pub fn wait_sending(
    c: &mut Client,
    from: u64,
    to: u64,
    what: &str,
    mut f: impl FnMut(&Client) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut region = 1_000_000;
    while !f(c) {
        if Instant::now() > deadline {
            panic!("timed out after 20s waiting for {}", what);
        }
        region += 1;
        let _ = c.send(msg(region, from, to));
        c.flush();
        std::thread::park_timeout(Duration::from_millis(5));
    }
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

/// [`msg`] carrying one entry of `len` bytes of data.
pub fn msg_with_entry(region_id: u64, from: u64, to: u64, len: usize) -> RaftMessage {
    let mut m = msg(region_id, from, to);
    m.mut_message().mut_entries().push(Default::default());
    m.mut_message().mut_entries()[0].set_data(vec![7u8; len]);
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
