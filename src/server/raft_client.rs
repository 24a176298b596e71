//! The Raft client: one queue and one connection task per (store, conn_id),
//! batching messages over `BatchRaft` (falling back to `Raft`).
//!
//! What a resolution verdict does to a connection task:
//! - `StoreTombstone`: stop for good. Every connection to the store is
//!   closed, pending messages are reported unreachable, the store joins the
//!   tombstone set and later sends fail with `Disconnected` at once, without
//!   a PD call or a task.
//! - `StoreNotFound`: ambiguous (removed, or not registered yet). Pending
//!   messages are reported unreachable and the store's connections retry on
//!   one shared doubling backoff (an "episode"), logging at most once per
//!   interval. A message received from the store ends the wait at once.
//! - anything else: retried at `raft-client-max-backoff`.
//!
//! Every message given to `send` ends in exactly one of: delivered, refused
//! by `send`, or reported unreachable ([`RaftClientStats`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::executor::ThreadPool;
use futures::future::{self, Either};
use futures::SinkExt;
use grpcio::{ChannelBuilder, Environment, RpcStatusCode, WriteFlags};
use kvproto::raft_serverpb::RaftMessage;
use kvproto::tikvpb::{BatchRaftMessage, TikvClient};
use protobuf::Message;
use slog::{error, info, warn, Logger};

use super::config::Config;
use super::metrics::*;
use super::raft_extension::RaftExtension;
use super::resolve::{self, StoreAddrResolver};

/// Why `send` refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscardReason {
    /// The store is gone (tombstone) or the client is stopped.
    Disconnected,
    /// The connection's queue is full.
    Full,
    /// The message is malformed (no target store).
    Filtered,
}

struct QueueInner {
    buf: VecDeque<RaftMessage>,
    closed: bool,
    interrupted: bool,
    waker: Option<Waker>,
}

/// The bounded queue of one connection.
struct Queue {
    cap: usize,
    inner: Mutex<QueueInner>,
}

/// Bytes `msg` takes as a `msgs` entry of a `BatchRaftMessage`: tag,
/// length varint and body.
fn encoded_len_in_batch(msg: &RaftMessage) -> usize {
    let body = msg.compute_size() as usize;
    let mut varint = 1;
    let mut v = body >> 7;
    while v > 0 {
        varint += 1;
        v >>= 7;
    }
    1 + varint + body
}

enum Event {
    Messages,
    Interrupted,
    Closed,
}

impl Queue {
    fn new(cap: usize) -> Queue {
        Queue {
            cap,
            inner: Mutex::new(QueueInner {
                buf: VecDeque::new(),
                closed: false,
                interrupted: false,
                waker: None,
            }),
        }
    }

    // The message comes back on failure so `send` can retry it on a fresh
    // queue without cloning on the hot path.
    #[allow(clippy::result_large_err)]
    fn push(&self, msg: RaftMessage) -> Result<(), (DiscardReason, RaftMessage)> {
        let mut g = self.inner.lock().unwrap();
        if g.closed {
            return Err((DiscardReason::Disconnected, msg));
        }
        if g.buf.len() >= self.cap {
            return Err((DiscardReason::Full, msg));
        }
        g.buf.push_back(msg);
        Ok(())
    }

    fn wake(g: &mut QueueInner) {
        if let Some(w) = g.waker.take() {
            w.wake();
        }
    }

    fn notify(&self) {
        Self::wake(&mut self.inner.lock().unwrap());
    }

    fn interrupt(&self) {
        let mut g = self.inner.lock().unwrap();
        g.interrupted = true;
        Self::wake(&mut g);
    }

    /// Closes the queue; returns what was still pending.
    fn close(&self) -> Vec<RaftMessage> {
        let mut g = self.inner.lock().unwrap();
        g.closed = true;
        Self::wake(&mut g);
        g.buf.drain(..).collect()
    }

    fn is_closed(&self) -> bool {
        self.inner.lock().unwrap().closed
    }

    fn drain(&self) -> Vec<RaftMessage> {
        self.inner.lock().unwrap().buf.drain(..).collect()
    }

    /// Takes up to `max_n` messages whose encoding inside a
    /// `BatchRaftMessage` fits in `max_bytes` (a single larger message is
    /// still taken alone, so nothing is stuck).
    fn take_batch(&self, max_n: usize, max_bytes: usize) -> Vec<RaftMessage> {
        let mut g = self.inner.lock().unwrap();
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_n {
            let Some(front) = g.buf.front() else { break };
            let size = encoded_len_in_batch(front);
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(g.buf.pop_front().unwrap());
        }
        out
    }

    fn poll_event(&self, cx: &mut Context<'_>, want_interrupt: bool) -> Poll<Event> {
        let mut g = self.inner.lock().unwrap();
        if g.closed {
            return Poll::Ready(Event::Closed);
        }
        if want_interrupt && g.interrupted {
            g.interrupted = false;
            return Poll::Ready(Event::Interrupted);
        }
        if !g.buf.is_empty() {
            return Poll::Ready(Event::Messages);
        }
        g.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn event(&self, want_interrupt: bool) -> impl Future<Output = Event> + '_ {
        future::poll_fn(move |cx| self.poll_event(cx, want_interrupt))
    }

    fn clear_interrupt(&self) {
        self.inner.lock().unwrap().interrupted = false;
    }
}

/// Message accounting of a raft client (shared by its clones).
#[derive(Default, Debug)]
pub struct RaftClientStats {
    sent: AtomicU64,
    delivered: AtomicU64,
    refused: AtomicU64,
    reported: AtomicU64,
}

/// A consistent-enough snapshot of [`RaftClientStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Messages given to `send`.
    pub sent: u64,
    /// Messages written to a peer's stream.
    pub delivered: u64,
    /// Messages `send` refused with a `DiscardReason`.
    pub refused: u64,
    /// Messages reported unreachable to the router.
    pub reported_unreachable: u64,
}

impl StatsSnapshot {
    /// True when every sent message is accounted for.
    pub fn balanced(&self) -> bool {
        self.sent == self.delivered + self.refused + self.reported_unreachable
    }
}

impl RaftClientStats {
    /// A snapshot of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            sent: self.sent.load(Ordering::SeqCst),
            delivered: self.delivered.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::SeqCst),
            reported_unreachable: self.reported.load(Ordering::SeqCst),
        }
    }
}

/// A not-found episode of one store, shared by all its connections.
struct Episode {
    backoff: Duration,
    next_attempt: Instant,
    attempts: u64,
    last_log: Option<Instant>,
}

#[derive(Default)]
struct ConnectionPool {
    connections: HashMap<(u64, usize), Arc<Queue>>,
    tombstone_stores: HashSet<u64>,
    not_found: HashMap<u64, Episode>,
}

struct Shared<R, E> {
    cfg: Config,
    env: Arc<Environment>,
    resolver: R,
    router: E,
    self_store_id: u64,
    pool: Mutex<ConnectionPool>,
    episodes: AtomicUsize,
    stats: RaftClientStats,
    executor: ThreadPool,
    stopped: AtomicBool,
    logger: Logger,
}

/// Builds the connections of a [`RaftClient`].
pub struct ConnectionBuilder<R, E> {
    env: Arc<Environment>,
    cfg: Config,
    resolver: R,
    router: E,
    logger: Logger,
}

impl<R: StoreAddrResolver + Sync, E: RaftExtension> ConnectionBuilder<R, E> {
    /// A builder using `env` for channels, `resolver` for addresses and
    /// `router` for reports. `cfg` should have passed `Config::validate`.
    pub fn new(env: Arc<Environment>, cfg: Config, resolver: R, router: E) -> Self {
        ConnectionBuilder {
            env,
            cfg,
            resolver,
            router,
            logger: tikv_util::logger::discard(),
        }
    }

    /// Logs to `logger` instead of discarding.
    pub fn logger(mut self, logger: Logger) -> Self {
        self.logger = logger;
        self
    }
}

/// A queue as one clone sees it: `dirty` when this clone pushed since its
/// last flush.
struct CachedQueue {
    queue: Arc<Queue>,
    dirty: bool,
}

/// The raft client. Clones share connections and accounting; each clone
/// has its own queue cache so `send` takes no shared lock, and flushes the
/// queues it pushed to (also when dropped).
pub struct RaftClient<R, E> {
    shared: Arc<Shared<R, E>>,
    cache: HashMap<(u64, usize), CachedQueue>,
    need_flush: Vec<(u64, usize)>,
}

impl<R, E> Clone for RaftClient<R, E> {
    fn clone(&self) -> Self {
        RaftClient {
            shared: self.shared.clone(),
            cache: HashMap::new(),
            need_flush: Vec::new(),
        }
    }
}

impl<R, E> RaftClient<R, E> {
    /// Wakes the connections this clone pushed to since its last flush.
    pub fn flush(&mut self) {
        let n = self.need_flush.len();
        for key in self.need_flush.drain(..) {
            if let Some(cq) = self.cache.get_mut(&key) {
                cq.dirty = false;
                cq.queue.notify();
            }
        }
        if n > 0 {
            RAFT_MESSAGE_FLUSH_COUNTER
                .with_label_values(&["flush"])
                .inc_by(n as u64);
        }
    }
}

impl<R, E> Drop for RaftClient<R, E> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl<R: StoreAddrResolver + Sync, E: RaftExtension> RaftClient<R, E> {
    /// A client for the store `self_store_id`.
    pub fn new(self_store_id: u64, builder: ConnectionBuilder<R, E>) -> Self {
        let executor = ThreadPool::builder()
            .pool_size(2)
            .name_prefix("raft-client")
            .create()
            .expect("raft client executor");
        RaftClient {
            shared: Arc::new(Shared {
                cfg: builder.cfg,
                env: builder.env,
                resolver: builder.resolver,
                router: builder.router,
                self_store_id,
                pool: Mutex::new(ConnectionPool::default()),
                episodes: AtomicUsize::new(0),
                stats: RaftClientStats::default(),
                executor,
                stopped: AtomicBool::new(false),
                logger: builder.logger,
            }),
            cache: HashMap::new(),
            need_flush: Vec::new(),
        }
    }

    /// Queues `msg` for its target store. Call [`flush`](Self::flush) to
    /// wake the senders.
    pub fn send(&mut self, msg: RaftMessage) -> Result<(), DiscardReason> {
        self.shared.stats.sent.fetch_add(1, Ordering::SeqCst);
        let r = self.send_inner(msg);
        if r.is_err() {
            self.shared.stats.refused.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    fn send_inner(&mut self, mut msg: RaftMessage) -> Result<(), DiscardReason> {
        let store_id = msg.get_to_peer().get_store_id();
        if store_id == 0 {
            return Err(DiscardReason::Filtered);
        }
        let conn_num = self.shared.cfg.grpc_raft_conn_num;
        let conn_id = if conn_num <= 1 {
            0
        } else {
            (msg.get_region_id() % conn_num as u64) as usize
        };
        let key = (store_id, conn_id);
        for _ in 0..2 {
            if let Some(cq) = self.cache.get_mut(&key) {
                match cq.queue.push(msg) {
                    Ok(()) => {
                        if !cq.dirty {
                            cq.dirty = true;
                            self.need_flush.push(key);
                        }
                        return Ok(());
                    }
                    Err((DiscardReason::Disconnected, m)) => {
                        self.cache.remove(&key);
                        msg = m;
                    }
                    Err((reason, _)) => return Err(reason),
                }
            }
            match self.load_queue(store_id, conn_id) {
                Some(queue) => {
                    self.cache.insert(
                        key,
                        CachedQueue {
                            queue,
                            dirty: false,
                        },
                    );
                }
                None => return Err(DiscardReason::Disconnected),
            }
        }
        Err(DiscardReason::Disconnected)
    }

    fn load_queue(&self, store_id: u64, conn_id: usize) -> Option<Arc<Queue>> {
        let mut pool = self.shared.pool.lock().unwrap();
        // Checked under the lock: `stop` drains the pool under it too.
        if self.shared.stopped.load(Ordering::SeqCst) || pool.tombstone_stores.contains(&store_id) {
            return None;
        }
        let shared = &self.shared;
        let q = pool
            .connections
            .entry((store_id, conn_id))
            .or_insert_with(|| {
                let q = Arc::new(Queue::new(shared.cfg.queue_size_per_conn()));
                let task = run_connection(shared.clone(), store_id, conn_id, q.clone());
                shared.executor.spawn_ok(task);
                q
            })
            .clone();
        Some(q)
    }

    /// Evidence that `store_id` is alive (our raft service received a
    /// message from it): a not-found wait for it ends at once. Cheap when
    /// no store is in a not-found episode.
    pub fn notify_store_alive(&self, store_id: u64) {
        if self.shared.episodes.load(Ordering::SeqCst) == 0 {
            return;
        }
        let queues: Vec<Arc<Queue>> = {
            let mut pool = self.shared.pool.lock().unwrap();
            let now = Instant::now();
            match pool.not_found.get_mut(&store_id) {
                Some(ep) => {
                    ep.next_attempt = now;
                    ep.backoff = self.shared.cfg.initial_backoff();
                }
                None => return,
            }
            pool.connections
                .iter()
                .filter(|(k, _)| k.0 == store_id)
                .map(|(_, q)| q.clone())
                .collect()
        };
        info!(self.shared.logger, "store shows signs of life, retry resolving it now"; "store_id" => store_id);
        self.shared.resolver.invalidate(store_id);
        for q in queues {
            q.interrupt();
        }
    }

    /// Whether `store_id` is in the tombstone set.
    pub fn is_tombstone(&self, store_id: u64) -> bool {
        self.shared
            .pool
            .lock()
            .unwrap()
            .tombstone_stores
            .contains(&store_id)
    }

    /// Whether `store_id` is in a not-found episode.
    pub fn in_not_found_episode(&self, store_id: u64) -> bool {
        self.shared
            .pool
            .lock()
            .unwrap()
            .not_found
            .contains_key(&store_id)
    }

    /// The store's not-found episode, if any: (attempts so far, backoff
    /// the next not-found answer will wait).
    pub fn not_found_episode(&self, store_id: u64) -> Option<(u64, Duration)> {
        let pool = self.shared.pool.lock().unwrap();
        pool.not_found
            .get(&store_id)
            .map(|e| (e.attempts, e.backoff))
    }

    /// Number of live connection tasks.
    pub fn connection_count(&self) -> usize {
        self.shared.pool.lock().unwrap().connections.len()
    }

    /// Message accounting.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Stops every connection; pending messages are reported unreachable
    /// and later sends fail with `Disconnected`.
    pub fn stop(&self) {
        let conns: Vec<_> = {
            let mut pool = self.shared.pool.lock().unwrap();
            self.shared.stopped.store(true, Ordering::SeqCst);
            pool.connections.drain().collect()
        };
        for ((store_id, _), q) in conns {
            let pending = q.close();
            self.shared.report_msgs(store_id, pending, "stopped");
        }
    }
}

impl<R: StoreAddrResolver + Sync, E: RaftExtension> Shared<R, E> {
    /// Reports messages (by region and target peer) unreachable.
    fn report_targets(&self, store_id: u64, targets: &[(u64, u64)], reason: &str) {
        if targets.is_empty() {
            return;
        }
        REPORT_FAILURE_MSG_COUNTER
            .with_label_values(&[reason, &store_id.to_string()])
            .inc_by(targets.len() as u64);
        for &(region_id, peer_id) in targets {
            self.router.report_unreachable(region_id, peer_id);
        }
        self.stats
            .reported
            .fetch_add(targets.len() as u64, Ordering::SeqCst);
    }

    fn report_msgs(&self, store_id: u64, msgs: Vec<RaftMessage>, reason: &str) {
        let targets: Vec<_> = msgs.iter().map(target).collect();
        self.report_targets(store_id, &targets, reason);
    }

    fn report_pending(&self, store_id: u64, q: &Queue, reason: &str) {
        self.report_msgs(store_id, q.drain(), reason);
    }

    /// The tombstone verdict: close every connection to the store for good.
    fn on_tombstone(&self, store_id: u64) {
        let (first, queues) = {
            let mut pool = self.pool.lock().unwrap();
            let first = pool.tombstone_stores.insert(store_id);
            if pool.not_found.remove(&store_id).is_some() {
                self.episodes.fetch_sub(1, Ordering::SeqCst);
                RAFT_CLIENT_NOT_FOUND_STORES.dec();
            }
            let keys: Vec<_> = pool
                .connections
                .keys()
                .filter(|k| k.0 == store_id)
                .copied()
                .collect();
            let queues: Vec<_> = keys
                .iter()
                .filter_map(|k| pool.connections.remove(k))
                .collect();
            (first, queues)
        };
        if first {
            RAFT_CLIENT_TOMBSTONE_STORES.inc();
            error!(self.logger, "store is tombstone, stop reconnecting to it";
                "store_id" => store_id, "self_store_id" => self.self_store_id);
        }
        for q in queues {
            let pending = q.close();
            self.report_msgs(store_id, pending, "tombstone");
        }
    }

    /// One not-found answer: advances the store's episode (once per round,
    /// whichever connection sees it first) and returns when to retry.
    fn on_not_found(&self, store_id: u64) -> Instant {
        RAFT_CLIENT_RESOLVE_COUNTER
            .with_label_values(&["not_found"])
            .inc();
        let mut pool = self.pool.lock().unwrap();
        let now = Instant::now();
        let initial = self.cfg.initial_backoff();
        let ep = pool.not_found.entry(store_id).or_insert_with(|| {
            self.episodes.fetch_add(1, Ordering::SeqCst);
            RAFT_CLIENT_NOT_FOUND_STORES.inc();
            Episode {
                backoff: initial,
                next_attempt: now,
                attempts: 0,
                last_log: None,
            }
        });
        if now >= ep.next_attempt {
            ep.attempts += 1;
            let wait = ep.backoff;
            ep.next_attempt = now + wait;
            ep.backoff = (wait * 2).min(self.cfg.raft_client_not_found_max_backoff.0);
            let interval = self.cfg.raft_client_not_found_log_interval.0;
            if tikv_util::throttle_elapsed(&mut ep.last_log, now, interval) {
                warn!(self.logger, "store not found in PD, it may be removed or not registered yet; will retry";
                    "store_id" => store_id, "attempts" => ep.attempts, "backoff" => ?wait);
            }
        }
        ep.next_attempt
    }

    fn end_not_found(&self, store_id: u64) {
        if self.episodes.load(Ordering::SeqCst) == 0 {
            return;
        }
        let ended = self.pool.lock().unwrap().not_found.remove(&store_id);
        if let Some(ep) = ended {
            self.episodes.fetch_sub(1, Ordering::SeqCst);
            RAFT_CLIENT_NOT_FOUND_STORES.dec();
            info!(self.logger, "store found in PD again"; "store_id" => store_id, "attempts" => ep.attempts);
        }
    }

    /// Waits until `deadline`, reporting messages that arrive meanwhile.
    /// Returns false when the queue was closed.
    async fn backoff(&self, store_id: u64, q: &Queue, deadline: Instant, reason: &str) -> bool {
        let mut delay = tikv_util::timer::delay(deadline);
        loop {
            match future::select(&mut delay, Box::pin(q.event(true))).await {
                Either::Left(_) => return !q.is_closed(),
                Either::Right((Event::Interrupted, _)) => return true,
                Either::Right((Event::Closed, _)) => return false,
                Either::Right((Event::Messages, _)) => self.report_pending(store_id, q, reason),
            }
        }
    }
}

async fn resolve_addr<R: StoreAddrResolver>(r: &R, store_id: u64) -> resolve::Result<String> {
    let (tx, rx) = futures::channel::oneshot::channel();
    r.resolve(
        store_id,
        Box::new(move |res| {
            let _ = tx.send(res);
        }),
    )?;
    rx.await
        .unwrap_or_else(|_| Err(resolve::Error::Other("resolver dropped the request".into())))
}

enum StreamEnd {
    Closed,
    Failed(String),
}

async fn run_connection<R: StoreAddrResolver + Sync, E: RaftExtension>(
    shared: Arc<Shared<R, E>>,
    store_id: u64,
    conn_id: usize,
    q: Arc<Queue>,
) {
    RAFT_CLIENT_CONNECTIONS.inc();
    connection_loop(&shared, store_id, conn_id, &q).await;
    RAFT_CLIENT_CONNECTIONS.dec();
}

async fn connection_loop<R: StoreAddrResolver + Sync, E: RaftExtension>(
    shared: &Arc<Shared<R, E>>,
    store_id: u64,
    conn_id: usize,
    q: &Arc<Queue>,
) {
    let cfg = &shared.cfg;
    let initial = cfg.initial_backoff();
    let mut connect_backoff = initial;
    let mut last_other_log = None;
    let mut batch_supported: Option<bool> = None;
    let mut last_addr = String::new();
    loop {
        if q.is_closed() {
            return;
        }
        q.clear_interrupt();
        let addr = match resolve_addr(&shared.resolver, store_id).await {
            Ok(addr) => {
                RAFT_CLIENT_RESOLVE_COUNTER
                    .with_label_values(&["success"])
                    .inc();
                shared.end_not_found(store_id);
                addr
            }
            Err(resolve::Error::StoreTombstone(_)) => {
                RAFT_CLIENT_RESOLVE_COUNTER
                    .with_label_values(&["tombstone"])
                    .inc();
                shared.on_tombstone(store_id);
                return;
            }
            Err(resolve::Error::StoreNotFound(_)) => {
                shared.report_pending(store_id, q, "not_found");
                let next = shared.on_not_found(store_id);
                if !shared.backoff(store_id, q, next, "not_found").await {
                    return;
                }
                continue;
            }
            Err(resolve::Error::Other(e)) => {
                RAFT_CLIENT_RESOLVE_COUNTER
                    .with_label_values(&["failed"])
                    .inc();
                let now = Instant::now();
                let interval = cfg.raft_client_not_found_log_interval.0;
                if tikv_util::throttle_elapsed(&mut last_other_log, now, interval) {
                    warn!(shared.logger, "resolve store address failed, will retry";
                        "store_id" => store_id, "err" => %e);
                }
                shared.report_pending(store_id, q, "resolve");
                let next = now + cfg.raft_client_max_backoff.0;
                if !shared.backoff(store_id, q, next, "resolve").await {
                    return;
                }
                continue;
            }
        };
        if addr != last_addr {
            batch_supported = None;
            last_addr = addr.clone();
        }
        RAFT_CLIENT_CONNECTION_COUNTER
            .with_label_values(&["connect"])
            .inc();
        let ch = ChannelBuilder::new(shared.env.clone())
            .keepalive_time(cfg.grpc_keepalive_time.0)
            .keepalive_timeout(cfg.grpc_keepalive_timeout.0)
            .initial_reconnect_backoff(initial)
            .max_reconnect_backoff(cfg.raft_client_max_backoff.0)
            .max_send_message_len(cfg.max_grpc_send_msg_len.0 as i32)
            .connect(&addr);
        let connected = ch
            .wait_for_connected(cfg.raft_client_connect_timeout.0)
            .await;
        let end = if connected {
            RAFT_CLIENT_CONNECTION_COUNTER
                .with_label_values(&["connected"])
                .inc();
            connect_backoff = initial;
            stream(
                shared,
                store_id,
                conn_id,
                q,
                TikvClient::new(ch),
                &mut batch_supported,
            )
            .await
        } else {
            StreamEnd::Failed(format!("connect to {} timed out", addr))
        };
        match end {
            StreamEnd::Closed => return,
            StreamEnd::Failed(e) => {
                RAFT_CLIENT_CONNECTION_COUNTER
                    .with_label_values(&["failed"])
                    .inc();
                warn!(shared.logger, "connection to store failed, will reconnect";
                    "store_id" => store_id, "conn_id" => conn_id, "addr" => &addr, "err" => e);
                shared.router.report_store_unreachable(store_id);
                shared.report_pending(store_id, q, "unreachable");
                // The address may have moved: ask PD again next time.
                shared.resolver.invalidate(store_id);
                let next = Instant::now() + connect_backoff;
                connect_backoff = (connect_backoff * 2).min(cfg.raft_client_max_backoff.0);
                if !shared.backoff(store_id, q, next, "unreachable").await {
                    return;
                }
            }
        }
    }
}

/// A message larger than a gRPC message may be can never be sent: report
/// it unreachable instead of failing the stream over and over.
fn drop_oversized<R: StoreAddrResolver + Sync, E: RaftExtension>(
    shared: &Shared<R, E>,
    store_id: u64,
    mut msgs: Vec<RaftMessage>,
    max_bytes: usize,
) -> Vec<RaftMessage> {
    if msgs.len() == 1 && encoded_len_in_batch(&msgs[0]) > max_bytes {
        warn!(shared.logger, "raft message is larger than max-grpc-send-msg-len, dropped";
            "store_id" => store_id, "region_id" => msgs[0].get_region_id(),
            "size" => msgs[0].compute_size());
        shared.report_msgs(store_id, std::mem::take(&mut msgs), "oversize");
    }
    msgs
}

/// Asks whether the peer implements `BatchRaft`: an empty batch on a
/// stream closed at once is answered `Done`, or UNIMPLEMENTED.
async fn probe_batch_raft(client: &TikvClient) -> grpcio::Result<bool> {
    let (mut sink, recv) = client.batch_raft()?;
    let sent = sink
        .send((BatchRaftMessage::default(), WriteFlags::default()))
        .await;
    let closed = match sent {
        Ok(()) => sink.close().await,
        Err(e) => Err(e),
    };
    match recv.await {
        Ok(_) => closed.map(|_| true),
        Err(grpcio::Error::RpcFailure(s)) if s.code() == RpcStatusCode::UNIMPLEMENTED => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits for queued messages and takes a batch; ends when the queue is
/// closed or the peer ends the call.
async fn next_batch<R, E, F>(
    shared: &Shared<R, E>,
    store_id: u64,
    q: &Queue,
    call_end: &mut F,
    call: &str,
) -> Result<Vec<RaftMessage>, StreamEnd>
where
    R: StoreAddrResolver + Sync,
    E: RaftExtension,
    F: Future + Unpin,
    F::Output: std::fmt::Debug,
{
    let limit = shared.cfg.max_grpc_send_msg_len.0 as usize;
    // Room for the batch's own fields.
    let max_bytes = limit.saturating_sub(16).max(1);
    loop {
        match future::select(Box::pin(q.event(false)), &mut *call_end).await {
            Either::Left((Event::Closed, _)) => return Err(StreamEnd::Closed),
            Either::Left(_) => {}
            Either::Right((r, _)) => {
                return Err(StreamEnd::Failed(format!("{} stream ended: {:?}", call, r)))
            }
        }
        let msgs = q.take_batch(shared.cfg.raft_msg_max_batch_size, max_bytes);
        let msgs = drop_oversized(shared, store_id, msgs, max_bytes);
        if !msgs.is_empty() {
            return Ok(msgs);
        }
    }
}

fn target(m: &RaftMessage) -> (u64, u64) {
    (m.get_region_id(), m.get_to_peer().get_id())
}

async fn stream<R: StoreAddrResolver + Sync, E: RaftExtension>(
    shared: &Shared<R, E>,
    store_id: u64,
    conn_id: usize,
    q: &Queue,
    client: TikvClient,
    batch_supported: &mut Option<bool>,
) -> StreamEnd {
    let batch = match *batch_supported {
        Some(b) => b,
        None => match probe_batch_raft(&client).await {
            Ok(b) => {
                if !b {
                    info!(shared.logger, "peer does not implement BatchRaft, fall back to Raft";
                        "store_id" => store_id, "conn_id" => conn_id);
                }
                *batch_supported = Some(b);
                b
            }
            Err(e) => return StreamEnd::Failed(format!("{:?}", e)),
        },
    };
    if batch {
        let (mut sink, recv) = match client.batch_raft() {
            Ok(c) => c,
            Err(e) => return StreamEnd::Failed(format!("{:?}", e)),
        };
        let mut recv = Box::pin(recv);
        loop {
            let msgs = match next_batch(shared, store_id, q, &mut recv, "BatchRaft").await {
                Ok(m) => m,
                Err(end) => return end,
            };
            let targets: Vec<_> = msgs.iter().map(target).collect();
            let mut b = BatchRaftMessage::default();
            b.set_msgs(msgs.into());
            if let Err(e) = sink.send((b, WriteFlags::default())).await {
                shared.report_targets(store_id, &targets, "send");
                return StreamEnd::Failed(format!("{:?}", e));
            }
            shared
                .stats
                .delivered
                .fetch_add(targets.len() as u64, Ordering::SeqCst);
            RAFT_MESSAGE_FLUSH_COUNTER
                .with_label_values(&["batch"])
                .inc();
        }
    } else {
        let (mut sink, recv) = match client.raft() {
            Ok(c) => c,
            Err(e) => return StreamEnd::Failed(format!("{:?}", e)),
        };
        let mut recv = Box::pin(recv);
        loop {
            let msgs = match next_batch(shared, store_id, q, &mut recv, "Raft").await {
                Ok(m) => m,
                Err(end) => return end,
            };
            let targets: Vec<_> = msgs.iter().map(target).collect();
            let total = msgs.len();
            for (i, m) in msgs.into_iter().enumerate() {
                let flags = WriteFlags::default().buffer_hint(i + 1 < total);
                if let Err(e) = sink.send((m, flags)).await {
                    shared.report_targets(store_id, &targets[i..], "send");
                    return StreamEnd::Failed(format!("{:?}", e));
                }
                shared.stats.delivered.fetch_add(1, Ordering::SeqCst);
            }
            RAFT_MESSAGE_FLUSH_COUNTER
                .with_label_values(&["raft"])
                .inc();
        }
    }
}
