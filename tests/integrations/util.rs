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
    let r = resolve::new_resolver_with(pd_client(pd), &w, router, cfg, tikv_util::logger::discard());
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
