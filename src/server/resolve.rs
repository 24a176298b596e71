//! Store address resolution: asks PD for a store's address and turns PD's
//! answer into an address or a verdict the raft client acts on.
//!
//! | PD answer | verdict |
//! |---|---|
//! | store Up/Offline with a usable address | `Ok(addr)`, `peer_address` first |
//! | store Tombstone, or STORE_TOMBSTONE | `Error::StoreTombstone(id)`: definite, remembered |
//! | "invalid store ID <id>, not found" (status or header) | `Error::StoreNotFound(id)`: ambiguous, cached for a short TTL, `report_store_maybe_tombstone` |
//! | anything else (PD down, timeout, leader change, bad address) | `Error::Other`: retryable |
//!
//! Unlike upstream, resolution never blocks on PD: the worker thread owns
//! the cache and hands PD calls to an async executor, so a slow or failing
//! store does not delay any other store. Concurrent resolutions of one store
//! share one PD call.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::executor::ThreadPool;
use kvproto::metapb;
use pd_client::PdClient;
use slog::{debug, info, Logger};
use tikv_util::worker::{Runnable, Scheduler, Worker};

use super::metrics::*;
use super::raft_extension::RaftExtension;

/// How long a resolved address is served before PD is asked again.
pub const STORE_ADDRESS_REFRESH_SECONDS: u64 = 60;
/// Default TTL of a cached not-found answer.
pub const DEFAULT_NOT_FOUND_TTL: Duration = Duration::from_secs(1);

/// Resolution errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Retryable: PD unreachable, timed out, a bad address, anything else.
    #[error("{0}")]
    Other(#[from] Box<dyn std::error::Error + Sync + Send>),
    /// PD does not know the store: removed and forgotten, or not registered
    /// yet. Ambiguous, so retried.
    #[error("store {0} not found")]
    StoreNotFound(u64),
    /// The store is Tombstone: it is gone for good.
    #[error("store {0} has been removed")]
    StoreTombstone(u64),
}

impl Error {
    fn duplicate(&self) -> Error {
        match self {
            Error::Other(e) => Error::Other(e.to_string().into()),
            Error::StoreNotFound(id) => Error::StoreNotFound(*id),
            Error::StoreTombstone(id) => Error::StoreTombstone(*id),
        }
    }
}

/// The result of a resolution.
pub type Result<T> = std::result::Result<T, Error>;

/// Called once with the address or the verdict.
pub type Callback = Box<dyn FnOnce(Result<String>) + Send>;

/// Resolves a store id to the address its raft service listens on.
pub trait StoreAddrResolver: Send + Clone + 'static {
    /// Resolves `store_id`; `cb` is called exactly once unless this returns
    /// an error (then it is never called).
    fn resolve(&self, store_id: u64, cb: Callback) -> Result<()>;

    /// Forget what is cached for `store_id` (its address or a not-found), so
    /// the next resolution asks PD: called when a message from the store
    /// arrives (evidence it is alive) or its address stopped working.
    /// Default: nothing cached, nothing to forget.
    fn invalidate(&self, store_id: u64) {
        let _ = store_id;
    }
}

/// Resolver settings.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// How long a not-found answer is served from cache.
    pub not_found_ttl: Duration,
    /// How long an address is served before asking PD again.
    pub refresh_interval: Duration,
}

impl Default for ResolverConfig {
    fn default() -> ResolverConfig {
        ResolverConfig {
            not_found_ttl: DEFAULT_NOT_FOUND_TTL,
            refresh_interval: Duration::from_secs(STORE_ADDRESS_REFRESH_SECONDS),
        }
    }
}

/// Checks that a store address is `host:port` with a usable port.
pub fn validate_address(addr: &str) -> Result<()> {
    let bad = |why: &str| -> Result<()> {
        Err(Error::Other(
            format!("invalid store address {:?}: {}", addr, why).into(),
        ))
    };
    if addr.is_empty() {
        return bad("empty");
    }
    if addr.chars().any(|c| c.is_whitespace() || c.is_control()) || addr.contains("://") {
        return bad("not host:port");
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad("no port");
    };
    if host.is_empty() || host == "[]" {
        return bad("no host");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bad("bad port"),
    }
}

/// The address raft messages go to: `peer_address` if set, else `address`.
pub fn store_address(store: &metapb::Store) -> Result<String> {
    let addr = if store.get_peer_address().is_empty() {
        store.get_address()
    } else {
        store.get_peer_address()
    };
    validate_address(addr)?;
    Ok(addr.to_owned())
}

fn refresh_interval(default: Duration) -> Duration {
    fail::fail_point!("mock_store_refresh_interval_secs", |arg| {
        Duration::from_secs(arg.and_then(|s| s.parse().ok()).unwrap_or(0))
    });
    default
}

fn injected_failure(store_id: u64) -> bool {
    fail::fail_point!("transport_on_resolve", |arg| {
        arg.and_then(|s| s.parse::<u64>().ok()) == Some(store_id)
    });
    let _ = store_id;
    false
}

fn injected_pd_delay() -> Option<Duration> {
    fail::fail_point!("resolve_delay_get_store", |arg| {
        arg.and_then(|s| s.parse().ok()).map(Duration::from_millis)
    });
    None
}

/// Tasks of the resolver worker.
pub enum Task {
    /// Resolve a store.
    Resolve {
        /// The store.
        store_id: u64,
        /// Called with the outcome.
        cb: Callback,
        /// When `resolve` was called.
        start: Instant,
    },
    /// A PD answer arrived.
    Answer {
        /// The store asked about.
        store_id: u64,
        /// PD's answer.
        res: pd_client::Result<metapb::Store>,
    },
    /// Forget a cached not-found.
    Invalidate {
        /// The store.
        store_id: u64,
    },
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Task::Resolve { store_id, .. } => write!(f, "resolve store {}", store_id),
            Task::Answer { store_id, .. } => write!(f, "PD answer for store {}", store_id),
            Task::Invalidate { store_id } => write!(f, "invalidate store {}", store_id),
        }
    }
}

#[derive(Default)]
struct StoreEntry {
    addr: Option<(String, Instant)>,
    not_found_until: Option<Instant>,
    waiters: Vec<(Callback, Instant)>,
    in_flight: bool,
}

struct Runner<P: PdClient + 'static, R: RaftExtension> {
    pd_client: Arc<P>,
    router: R,
    cfg: ResolverConfig,
    stores: HashMap<u64, StoreEntry>,
    tombstones: HashSet<u64>,
    scheduler: Arc<OnceLock<Scheduler<Task>>>,
    pool: ThreadPool,
    logger: Logger,
}

fn finish(cb: Callback, start: Instant, res: Result<String>) {
    let label = match &res {
        Ok(_) => "success",
        Err(Error::StoreTombstone(_)) => "tombstone",
        Err(Error::StoreNotFound(_)) => "not_found",
        Err(Error::Other(_)) => "failed",
    };
    RESOLVE_STORE_COUNTER.with_label_values(&[label]).inc();
    ADDRESS_RESOLVE_HISTOGRAM.observe(start.elapsed().as_secs_f64());
    cb(res)
}

impl<P: PdClient + 'static, R: RaftExtension> Runner<P, R> {
    fn resolve(&mut self, store_id: u64, cb: Callback, start: Instant) {
        if store_id == 0 {
            return finish(cb, start, Err(Error::Other("invalid store id 0".into())));
        }
        if injected_failure(store_id) {
            return finish(
                cb,
                start,
                Err(Error::Other(
                    format!("failpoint transport_on_resolve for store {}", store_id).into(),
                )),
            );
        }
        if self.tombstones.contains(&store_id) {
            return finish(cb, start, Err(Error::StoreTombstone(store_id)));
        }
        let now = Instant::now();
        let refresh = refresh_interval(self.cfg.refresh_interval);
        let e = self.stores.entry(store_id).or_default();
        if let Some((addr, at)) = &e.addr {
            if now.saturating_duration_since(*at) < refresh {
                return finish(cb, start, Ok(addr.clone()));
            }
        }
        if e.not_found_until.is_some_and(|t| now < t) {
            return finish(cb, start, Err(Error::StoreNotFound(store_id)));
        }
        e.waiters.push((cb, start));
        if e.in_flight {
            return;
        }
        e.in_flight = true;
        self.ask_pd(store_id);
    }

    fn ask_pd(&self, store_id: u64) {
        RESOLVE_PD_CALL_COUNTER.inc();
        let fut = self.pd_client.get_store_async(store_id);
        let sched = self.scheduler.get().expect("resolver scheduler").clone();
        let delay = injected_pd_delay();
        self.pool.spawn_ok(async move {
            if let Some(d) = delay {
                tikv_util::timer::sleep(d).await;
            }
            let res = fut.await;
            let _ = sched.schedule(Task::Answer { store_id, res });
        });
    }

    fn on_answer(&mut self, store_id: u64, res: pd_client::Result<metapb::Store>) {
        let now = Instant::now();
        let verdict: Result<String> = match res {
            Ok(store) => store_address(&store),
            Err(pd_client::Error::StoreTombstone(msg)) => {
                info!(self.logger, "store is tombstone, stop resolving it";
                    "store_id" => store_id, "pd" => msg);
                self.tombstones.insert(store_id);
                Err(Error::StoreTombstone(store_id))
            }
            Err(pd_client::Error::StoreNotFound(id)) => {
                debug_assert_eq!(id, store_id);
                self.router.report_store_maybe_tombstone(store_id);
                Err(Error::StoreNotFound(store_id))
            }
            Err(e) => Err(Error::Other(Box::new(e))),
        };
        let e = self.stores.entry(store_id).or_default();
        e.in_flight = false;
        match &verdict {
            Ok(addr) => {
                e.addr = Some((addr.clone(), now));
                e.not_found_until = None;
            }
            Err(Error::StoreNotFound(_)) => {
                e.addr = None;
                e.not_found_until = Some(now + self.cfg.not_found_ttl);
            }
            Err(Error::StoreTombstone(_)) => {
                e.addr = None;
                e.not_found_until = None;
            }
            Err(Error::Other(err)) => {
                debug!(self.logger, "resolve store failed"; "store_id" => store_id, "err" => %err);
            }
        }
        let waiters = std::mem::take(&mut e.waiters);
        if self.tombstones.contains(&store_id) {
            self.stores.remove(&store_id);
        }
        for (cb, start) in waiters {
            let r = match &verdict {
                Ok(a) => Ok(a.clone()),
                Err(err) => Err(err.duplicate()),
            };
            finish(cb, start, r);
        }
    }
}

impl<P: PdClient + 'static, R: RaftExtension> Runnable for Runner<P, R> {
    type Task = Task;

    fn run(&mut self, task: Task) {
        match task {
            Task::Resolve {
                store_id,
                cb,
                start,
            } => self.resolve(store_id, cb, start),
            Task::Answer { store_id, res } => self.on_answer(store_id, res),
            Task::Invalidate { store_id } => {
                if let Some(e) = self.stores.get_mut(&store_id) {
                    e.not_found_until = None;
                    e.addr = None;
                }
            }
        }
    }
}

/// The PD-backed resolver. Cheap to clone.
#[derive(Clone)]
pub struct PdStoreAddrResolver {
    sched: Scheduler<Task>,
}

impl PdStoreAddrResolver {
    /// Wraps a scheduler of a running resolver worker.
    pub fn new(sched: Scheduler<Task>) -> PdStoreAddrResolver {
        PdStoreAddrResolver { sched }
    }
}

impl StoreAddrResolver for PdStoreAddrResolver {
    fn resolve(&self, store_id: u64, cb: Callback) -> Result<()> {
        let task = Task::Resolve {
            store_id,
            cb,
            start: Instant::now(),
        };
        self.sched
            .schedule(task)
            .map_err(|e| Error::Other(Box::new(e)))
    }

    fn invalidate(&self, store_id: u64) {
        let _ = self.sched.schedule(Task::Invalidate { store_id });
    }
}

/// Starts a resolver on `worker` with default settings and a discarding logger.
pub fn new_resolver<P, R>(pd_client: Arc<P>, worker: &Worker, router: R) -> PdStoreAddrResolver
where
    P: PdClient + 'static,
    R: RaftExtension,
{
    new_resolver_with(
        pd_client,
        worker,
        router,
        ResolverConfig::default(),
        tikv_util::logger::discard(),
    )
}

/// Starts a resolver on `worker`.
pub fn new_resolver_with<P, R>(
    pd_client: Arc<P>,
    worker: &Worker,
    router: R,
    cfg: ResolverConfig,
    logger: Logger,
) -> PdStoreAddrResolver
where
    P: PdClient + 'static,
    R: RaftExtension,
{
    let cell = Arc::new(OnceLock::new());
    let pool = ThreadPool::builder()
        .pool_size(1)
        .name_prefix("resolve-pd")
        .create()
        .expect("resolver executor");
    let runner = Runner {
        pd_client,
        router,
        cfg,
        stores: HashMap::new(),
        tombstones: HashSet::new(),
        scheduler: cell.clone(),
        pool,
        logger,
    };
    let sched = worker.start(runner);
    let _ = cell.set(sched.clone());
    PdStoreAddrResolver::new(sched)
}

/// A resolver answering with a closure, for tests (as upstream has).
#[derive(Clone)]
pub struct MockStoreAddrResolver {
    /// Computes the answer for a store id.
    pub resolve_fn: Arc<dyn Fn(u64) -> Result<String> + Send + Sync>,
}

impl MockStoreAddrResolver {
    /// A resolver answering with `f`.
    pub fn new(f: impl Fn(u64) -> Result<String> + Send + Sync + 'static) -> Self {
        MockStoreAddrResolver {
            resolve_fn: Arc::new(f),
        }
    }
}

impl StoreAddrResolver for MockStoreAddrResolver {
    fn resolve(&self, store_id: u64, cb: Callback) -> Result<()> {
        cb((self.resolve_fn)(store_id));
        Ok(())
    }
}

/// Resolves `store_id` and waits for the answer (for tools and tests).
pub fn resolve_blocking<T: StoreAddrResolver>(
    r: &T,
    store_id: u64,
    timeout: Duration,
) -> Result<String> {
    let (tx, rx) = crossbeam::channel::bounded(1);
    r.resolve(
        store_id,
        Box::new(move |res| {
            let _ = tx.send(res);
        }),
    )?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(_) => Err(Error::Other(
            format!("resolve store {} timed out after {:?}", store_id, timeout).into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for good in ["127.0.0.1:20160", "tikv-0.tikv:20160", "[::1]:20160"] {
            assert!(validate_address(good).is_ok(), "{}", good);
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:",
            ":20160",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "127.0.0.1:port",
            "http://127.0.0.1:20160",
            "127.0.0.1 :20160",
            "[]:20160",
        ] {
            assert!(
                matches!(validate_address(bad), Err(Error::Other(_))),
                "{:?}",
                bad
            );
        }
    }

    #[test]
    fn peer_address_preferred() {
        let mut s = metapb::Store::default();
        s.set_address("127.0.0.1:1".into());
        assert_eq!(store_address(&s).unwrap(), "127.0.0.1:1");
        s.set_peer_address("127.0.0.1:2".into());
        assert_eq!(store_address(&s).unwrap(), "127.0.0.1:2");
        s.set_peer_address("bad".into());
        assert!(store_address(&s).is_err());
    }

    #[test]
    fn mock_resolver_answers() {
        let r = MockStoreAddrResolver::new(|id| {
            if id == 1 {
                Ok("127.0.0.1:1".into())
            } else {
                Err(Error::StoreTombstone(id))
            }
        });
        assert_eq!(
            resolve_blocking(&r, 1, Duration::from_secs(1)).unwrap(),
            "127.0.0.1:1"
        );
        assert!(matches!(
            resolve_blocking(&r, 2, Duration::from_secs(1)),
            Err(Error::StoreTombstone(2))
        ));
    }
}
