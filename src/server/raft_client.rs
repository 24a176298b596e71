//! The Raft client: one queue and one connection task per (store, conn_id),
//! batching messages over `BatchRaft` (falling back to `Raft`).
//!
//! The hot path: `send` encodes a small message (on the caller's thread,
//! while it is in cache; a large one keeps its cached sizes; see
//! [`super::raft_codec`]) and pushes it into the connection's lock-free ring ([`raft_queue`]; no lock, no clone); `flush`
//! wakes the connection only if it is parked. Each call's sender runs on the
//! channel's completion queue (`client.spawn`, as upstream) and copies
//! encoded messages into one gRPC buffer per batch; the reconnect loop
//! (resolve, connect, back off) runs on the raft client's own pool. Batches
//! are cut on exact sizes; an idle connection whose backoff ran out waits
//! for a message before it asks PD or connects again.
//!
//! What a resolution verdict does to a connection task:
//! - `StoreTombstone`: stop for good. Every connection to the store is
//!   closed, pending messages are reported unreachable, the store joins the
//!   tombstone set and later sends fail with `Disconnected` at once, without
//!   a PD call or a task.
//! - `StoreNotFound`: ambiguous (removed, or not registered yet). Pending
//!   messages are reported unreachable and the store's connections retry on
//!   one shared doubling backoff (an "episode"), logging at most once per
//!   interval; a connection that starts while the episode waits waits with
//!   it, so PD is asked once per step, not once per connection. A message
//!   received from the store ends the wait at once.
//! - anything else: retried at `raft-client-max-backoff`.
//!
//! Stale peers: the loop exists because regions keep peers on a store PD
//! removed. For each tombstoned or not-found store the client keeps the
//! regions whose messages to it were refused or reported (at most
//! [`STALE_REGIONS_PER_STORE`]; a full list makes room only by dropping
//! regions quiet for [`STALE_REGION_QUIET`], at most once a second, so a
//! store with thousands of stale regions costs a lookup per message, not a
//! scan),
//! shows them in [`PoolView::stale_regions`], counts them in
//! `tikv_server_raft_client_stale_regions{store_id}` and names them in the
//! tombstone verdict's one log line, so an operator knows which peers to remove
//! (`pd-ctl operator add remove-peer REGION STORE`). A store found again
//! forgets its list.
//!
//! How a call ends (peers behave as upstream's raft service, tikv/tikv
//! `src/server/service/kv.rs`: a call never answers `Done`):
//! - UNIMPLEMENTED on `BatchRaft`: the peer predates it; fall back to `Raft`
//!   on the same channel and remember it for the address. What was written to
//!   the refused call is queued again, ahead of newer messages.
//! - store-not-match (the address now belongs to another store): what was
//!   written and what is pending is reported, the cached address is dropped
//!   and the store resolved again at once; the same address again backs off.
//! - anything else: a stream failure, retried on the doubling reconnect
//!   backoff. Only a call that stayed up for `raft-client-call-confirm-window`
//!   after its first write resets that backoff, so a peer that accepts
//!   connections and fails every call cannot make the client spin.
//!
//! Every message given to `send` ends in exactly one of: delivered, refused
//! by `send`, or reported unreachable ([`RaftClientStats`]). "Delivered"
//! means written to a call that was still up a confirm window after its
//! first write (gRPC gives no per-message acknowledgement): messages written
//! before that are held, and become delivered when the window passes, are
//! queued again on UNIMPLEMENTED, or are reported when the call ends
//! otherwise. Once a call is confirmed, a later failure loses what was in
//! flight, as upstream does; Raft retransmits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::executor::ThreadPool;
use futures::future::{self, Either};
use futures::SinkExt;
use grpcio::{
    CallOption, ChannelBuilder, ClientCStreamReceiver, ClientCStreamSender, Environment,
    MetadataBuilder, RpcStatus, RpcStatusCode, WriteFlags,
};
use kvproto::raft_serverpb::{Done, RaftMessage};
use kvproto::tikvpb::TikvClient;
use security::SecurityManager;
use slog::{error, info, warn, Logger};

use super::config::Config;
use super::metrics::*;
use super::raft_codec::{self, EncodedBatch, EncodedMessage};
use super::raft_extension::RaftExtension;
use super::resolve::{self, StoreAddrResolver};
use super::service::StoreNotMatch;

/// The `source_store_id` call header: the sending store's id in decimal,
/// sent on `Raft` and `BatchRaft` (upstream: `MetadataSourceStoreId` in
/// tikv/tikv `src/server/raft_client.rs`).
pub struct MetadataSourceStoreId;

impl MetadataSourceStoreId {
    /// The header's key.
    pub const KEY: &'static str = "source_store_id";

    /// The header's value for `store_id`.
    pub fn format(store_id: u64) -> String {
        store_id.to_string()
    }

    /// The call options of every raft call from `store_id`: this header.
    pub fn call_option(store_id: u64) -> CallOption {
        let mut md = MetadataBuilder::with_capacity(1);
        md.add_str(Self::KEY, &Self::format(store_id))
            .expect("a decimal header value is valid");
        CallOption::default().headers(md.build())
    }

    /// The store id in a header value; `None` when it is not a decimal u64.
    pub fn parse(value: &[u8]) -> Option<u64> {
        let s = std::str::from_utf8(value).ok()?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
}

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

/// The queue of one connection: senders push into a lock-free bounded ring
/// ([`raft_queue::Queue`]: an atomic state word makes `close` exact, see
/// its doc); the connection task alone takes from it. What the task took
/// and must put back (a refused call's messages, or the message that did
/// not fit in the last batch) goes into `front`, read before the ring; only
/// the task and `close` touch it, never a sender.
struct Queue {
    ring: raft_queue::Queue<EncodedMessage>,
    front: Mutex<VecDeque<EncodedMessage>>,
    front_len: AtomicUsize,
}

/// A batch taken from a queue.
struct Batch {
    msgs: Vec<EncodedMessage>,
    /// Messages that can never be sent (larger than a gRPC message).
    oversized: Vec<EncodedMessage>,
    /// The batch was cut because the next message did not fit: a write
    /// surely follows it, so gRPC may buffer this one.
    cut_for_size: bool,
}

enum Event {
    Messages,
    Interrupted,
    Closed,
}

impl Queue {
    fn new(cap: usize) -> Queue {
        Queue {
            ring: raft_queue::Queue::new(cap),
            front: Mutex::new(VecDeque::new()),
            front_len: AtomicUsize::new(0),
        }
    }

    // The message comes back on failure so `send` can retry it on a fresh
    // queue without cloning on the hot path.
    #[allow(clippy::result_large_err)]
    fn push(&self, msg: EncodedMessage) -> Result<(), (DiscardReason, EncodedMessage)> {
        self.ring.push(msg).map_err(|e| match e {
            raft_queue::PushError::Full(m) => (DiscardReason::Full, m),
            raft_queue::PushError::Closed(m) => (DiscardReason::Disconnected, m),
        })
    }

    fn notify(&self) {
        self.ring.notify();
    }

    fn interrupt(&self) {
        self.ring.interrupt();
    }

    /// Closes the queue; returns what was still pending, oldest first.
    fn close(&self) -> Vec<EncodedMessage> {
        let ring = self.ring.close();
        let mut front = self.front.lock().unwrap();
        self.front_len.store(0, Ordering::SeqCst);
        let mut out: Vec<_> = front.drain(..).collect();
        out.extend(ring);
        out
    }

    /// Puts messages taken earlier back at the front, in order, whatever
    /// the capacity (they were accepted once). A closed queue hands them back.
    fn requeue_front(&self, msgs: Vec<EncodedMessage>) -> Vec<EncodedMessage> {
        let mut front = self.front.lock().unwrap();
        // Checked under the lock `close` drains `front` under: either
        // `close` takes them or they come back here.
        if self.ring.is_closed() {
            return msgs;
        }
        for m in msgs.into_iter().rev() {
            front.push_front(m);
        }
        self.front_len.store(front.len(), Ordering::SeqCst);
        Vec::new()
    }

    fn is_closed(&self) -> bool {
        self.ring.is_closed()
    }

    /// The ring is full now (a closed ring never is: `close` empties it).
    fn is_full(&self) -> bool {
        self.ring.len() >= self.ring.capacity() && !self.ring.is_closed()
    }

    fn drain(&self) -> Vec<EncodedMessage> {
        let mut front = self.front.lock().unwrap();
        self.front_len.store(0, Ordering::SeqCst);
        let mut out: Vec<_> = front.drain(..).collect();
        out.extend(self.ring.drain());
        out
    }

    /// Takes up to `max_n` messages whose encoded size fits `budget` bytes
    /// (a single larger message is taken alone, so nothing is stuck). A
    /// message larger than `max_bytes` is set aside as oversized before
    /// batching, so a batch cut for size is always followed by another
    /// write.
    fn take_batch(&self, max_n: usize, budget: usize, max_bytes: usize) -> Batch {
        let mut front = self.front.lock().unwrap();
        let mut b = Batch {
            msgs: Vec::with_capacity(max_n.min(front.len() + self.ring.len())),
            oversized: Vec::new(),
            cut_for_size: false,
        };
        let mut bytes = 0;
        while b.msgs.len() < max_n {
            let Some(m) = front.pop_front().or_else(|| self.ring.pop()) else {
                break;
            };
            let size = m.len_in_batch();
            if size > max_bytes {
                b.oversized.push(m);
                continue;
            }
            if !b.msgs.is_empty() && bytes + size > budget {
                front.push_front(m);
                b.cut_for_size = true;
                break;
            }
            bytes += size;
            b.msgs.push(m);
        }
        self.front_len.store(front.len(), Ordering::SeqCst);
        b
    }

    fn poll_event(&self, cx: &mut Context<'_>, want_interrupt: bool) -> Poll<Event> {
        match self.ring.poll_event(cx, want_interrupt) {
            Poll::Ready(raft_queue::Event::Closed) => Poll::Ready(Event::Closed),
            Poll::Ready(raft_queue::Event::Interrupted) => Poll::Ready(Event::Interrupted),
            Poll::Ready(raft_queue::Event::Messages) => Poll::Ready(Event::Messages),
            // Only the task fills `front`, so it cannot change while the
            // task waits: looking after the ring loses no wake-up.
            Poll::Pending if self.front_len.load(Ordering::SeqCst) > 0 => {
                Poll::Ready(Event::Messages)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn event(&self, want_interrupt: bool) -> impl Future<Output = Event> + '_ {
        future::poll_fn(move |cx| self.poll_event(cx, want_interrupt))
    }

    fn clear_interrupt(&self) {
        self.ring.clear_interrupt();
    }
}

/// Stripes of the `sent` counter.
const SENT_STRIPES: usize = 16;

/// Message accounting of a raft client (shared by its clones).
///
/// `sent` is counted on every `send`, by every clone: one shared atomic
/// made its cache line travel between the sending threads (a `perf`
/// annotation of `send` at conn-num 4 put more than half of its own time
/// on that `lock inc`). So it is striped over cache lines, each clone
/// counting into its own stripe, and read as the sum of the stripes. The
/// other counters move once per batch or on failures.
#[derive(Default, Debug)]
pub struct RaftClientStats {
    sent: [crossbeam::utils::CachePadded<AtomicU64>; SENT_STRIPES],
    /// The stripe the next clone counts into.
    next_stripe: AtomicUsize,
    delivered: AtomicU64,
    refused: AtomicU64,
    reported: AtomicU64,
}

/// A consistent-enough snapshot of [`RaftClientStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
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

/// A store's not-found episode, as operators see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NotFoundView {
    /// The store PD does not know.
    pub store_id: u64,
    /// Not-found answers so far in this episode.
    pub attempts: u64,
    /// The wait after the next not-found answer, in milliseconds.
    pub next_backoff_ms: u64,
}

/// One connection attempt, as operators see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConnectView {
    /// Its number among the store's attempts (1 is the first).
    pub attempt: u64,
    /// How long it waited for the channel, in milliseconds.
    pub waited_ms: u64,
    /// Whether the channel connected within the connect timeout.
    pub connected: bool,
}

/// A region still sending to a tombstoned or not-found store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StaleRegionView {
    /// The region whose peer on the store is stale.
    pub region_id: u64,
    /// Its messages to the store refused or reported so far.
    pub messages: u64,
    /// Milliseconds since the last of them.
    pub last_seen_ms_ago: u64,
}

/// The regions kept for one tombstoned or not-found store.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StaleStoreView {
    /// Regions, most messages first (at most [`STALE_REGIONS_PER_STORE`]).
    pub regions: Vec<StaleRegionView>,
    /// Regions dropped from the list after [`STALE_REGION_QUIET`] without a
    /// message (their peers were removed, or the region moved on).
    pub evicted: u64,
    /// Messages of regions that found the list full: more stale regions
    /// than the list holds.
    pub unlisted_messages: u64,
}

/// The connection pool, as operators see it (the status server's JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolView {
    /// Live connection tasks per store.
    pub connections: std::collections::BTreeMap<u64, usize>,
    /// Connection attempts (channel connects) per store since start.
    pub connection_attempts: std::collections::BTreeMap<u64, u64>,
    /// The last attempts per store (at most [`RECENT_CONNECTS`], oldest
    /// first): an attempt that did not connect waited
    /// `raft-client-connect-timeout`, never longer.
    pub recent_connects: std::collections::BTreeMap<u64, Vec<ConnectView>>,
    /// Stores found tombstone: never connected to again.
    pub tombstones: Vec<u64>,
    /// Stores PD does not know right now.
    pub not_found: Vec<NotFoundView>,
    /// Per tombstoned or not-found store: the regions still sending to it.
    pub stale_regions: std::collections::BTreeMap<u64, StaleStoreView>,
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
            sent: self.sent.iter().map(|c| c.load(Ordering::SeqCst)).sum(),
            delivered: self.delivered.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::SeqCst),
            reported_unreachable: self.reported.load(Ordering::SeqCst),
        }
    }

    /// A stripe of `sent` for a new clone.
    fn stripe(&self) -> usize {
        self.next_stripe.fetch_add(1, Ordering::Relaxed) % SENT_STRIPES
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
    /// Connection attempts (channel connects) per store, for operators and
    /// tests: none may follow a tombstone verdict.
    connects: HashMap<u64, u64>,
    /// The last [`RECENT_CONNECTS`] attempts per store, numbered as counted
    /// in `connects`: how long each waited and whether it connected.
    recent_connects: HashMap<u64, std::collections::VecDeque<ConnectView>>,
}

fn unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn conn_event(store_id: u64, t: &str) {
    RAFT_CLIENT_CONNECTION_COUNTER
        .with_label_values(&[t, &store_id.to_string()])
        .inc();
}

fn resolve_verdict(store_id: u64, verdict: &str) {
    RAFT_CLIENT_RESOLVE_COUNTER
        .with_label_values(&[verdict, &store_id.to_string()])
        .inc();
}

/// Connection attempts kept per store in [`PoolView::recent_connects`].
pub const RECENT_CONNECTS: usize = 32;

/// Regions kept per store in [`PoolView::stale_regions`].
pub const STALE_REGIONS_PER_STORE: usize = 64;

/// Refused sends a clone keeps before folding them into the shared
/// stale-region lists without waiting for its `flush`.
const STALE_FOLD: usize = 1024;

/// Notes (store, region) pairs whose messages were refused or reported, under
/// one lock, and sets each touched store's gauge once.
fn note_stale(stale: &Mutex<HashMap<u64, StaleRegions>>, pairs: impl Iterator<Item = (u64, u64)>) {
    let now = Instant::now();
    let mut touched: Vec<u64> = Vec::new();
    let mut map = stale.lock().unwrap();
    for (store_id, region_id) in pairs {
        map.entry(store_id).or_default().note(region_id, 1, now);
        if !touched.contains(&store_id) {
            touched.push(store_id);
        }
    }
    for store_id in touched {
        let n = map.get(&store_id).map_or(0, |s| s.regions.len());
        RAFT_CLIENT_STALE_REGIONS
            .with_label_values(&[&store_id.to_string()])
            .set(n as i64);
    }
}

/// A stale region without a message for this long leaves a full list
/// (a leader heartbeats every 2 s by default: such a peer is gone).
pub const STALE_REGION_QUIET: Duration = Duration::from_secs(60);

/// The regions seen sending to one tombstoned or not-found store.
#[derive(Default)]
struct StaleRegions {
    /// Region id to (messages, last seen).
    regions: HashMap<u64, (u64, Instant)>,
    evicted: u64,
    unlisted: u64,
    /// When a full list last looked for quiet regions.
    last_sweep: Option<Instant>,
}

impl StaleRegions {
    fn note(&mut self, region_id: u64, n: u64, now: Instant) {
        if let Some(e) = self.regions.get_mut(&region_id) {
            e.0 += n;
            e.1 = now;
            return;
        }
        if self.regions.len() >= STALE_REGIONS_PER_STORE
            && tikv_util::throttle_elapsed(&mut self.last_sweep, now, Duration::from_secs(1))
        {
            let before = self.regions.len();
            self.regions
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < STALE_REGION_QUIET);
            self.evicted += (before - self.regions.len()) as u64;
        }
        if self.regions.len() < STALE_REGIONS_PER_STORE {
            self.regions.insert(region_id, (n, now));
        } else {
            self.unlisted += n;
        }
    }

    fn view(&self, now: Instant) -> StaleStoreView {
        let mut regions: Vec<_> = self
            .regions
            .iter()
            .map(|(id, (n, seen))| StaleRegionView {
                region_id: *id,
                messages: *n,
                last_seen_ms_ago: now.saturating_duration_since(*seen).as_millis() as u64,
            })
            .collect();
        regions.sort_by_key(|r| (std::cmp::Reverse(r.messages), r.region_id));
        StaleStoreView {
            regions,
            evicted: self.evicted,
            unlisted_messages: self.unlisted,
        }
    }
}

struct Shared<R, E> {
    cfg: Config,
    env: Arc<Environment>,
    security: Arc<SecurityManager>,
    resolver: R,
    router: E,
    self_store_id: u64,
    pool: Mutex<ConnectionPool>,
    /// Regions still sending to tombstoned or not-found stores; a lock of
    /// its own, never taken before `pool`.
    stale: Mutex<HashMap<u64, StaleRegions>>,
    episodes: AtomicUsize,
    stats: RaftClientStats,
    executor: ThreadPool,
    stopped: AtomicBool,
    /// Connection tasks spawned and not ended yet; `stop` waits on
    /// `tasks_ended` for it to reach 0.
    tasks: Mutex<usize>,
    tasks_ended: Condvar,
    logger: Logger,
}

/// Builds the connections of a [`RaftClient`].
pub struct ConnectionBuilder<R, E> {
    env: Arc<Environment>,
    security: Arc<SecurityManager>,
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
            security: SecurityManager::plaintext(),
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

    /// Connects with `security` (TLS when configured; each new connection
    /// reads the certificate files as they are on disk).
    pub fn security(mut self, security: Arc<SecurityManager>) -> Self {
        self.security = security;
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
    /// This clone's stripe of the `sent` counter.
    stripe: usize,
    cache: collections::HashMap<(u64, usize), CachedQueue>,
    need_flush: Vec<(u64, usize)>,
    /// Stores this clone saw in the tombstone set: a tombstone is final, so
    /// later sends to them are refused without the pool lock.
    tombstoned: collections::HashSet<u64>,
    /// (store, region) of this clone's sends refused for a tombstone, folded
    /// into the shared stale-region lists at `flush` (one lock per flush, so
    /// a refusal stays cheaper than a queued send).
    stale_refused: Vec<(u64, u64)>,
}

impl<R, E> Clone for RaftClient<R, E> {
    fn clone(&self) -> Self {
        RaftClient {
            shared: self.shared.clone(),
            stripe: self.shared.stats.stripe(),
            cache: collections::HashMap::default(),
            need_flush: Vec::new(),
            tombstoned: collections::HashSet::default(),
            stale_refused: Vec::new(),
        }
    }
}

impl<R, E> RaftClient<R, E> {
    /// Wakes the connections this clone pushed to since its last flush (and
    /// hands its refused sends' regions to the stale-region lists).
    pub fn flush(&mut self) {
        if !self.stale_refused.is_empty() {
            self.fold_stale();
        }
        let n = self.need_flush.len();
        for key in self.need_flush.drain(..) {
            if let Some(cq) = self.cache.get_mut(&key) {
                cq.dirty = false;
                cq.queue.notify();
            }
        }
        if n > 0 {
            RAFT_MESSAGE_FLUSH_FLUSH.inc_by(n as u64);
        }
    }
}

impl<R, E> RaftClient<R, E> {
    fn fold_stale(&mut self) {
        note_stale(&self.shared.stale, self.stale_refused.drain(..));
    }

    /// A send to tombstoned `store_id` for `region_id` was refused.
    fn refused_stale(&mut self, store_id: u64, region_id: u64) {
        self.stale_refused.push((store_id, region_id));
        if self.stale_refused.len() >= STALE_FOLD {
            self.fold_stale();
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
        let shared = Arc::new(Shared {
            cfg: builder.cfg,
            env: builder.env,
            security: builder.security,
            resolver: builder.resolver,
            router: builder.router,
            self_store_id,
            pool: Mutex::new(ConnectionPool::default()),
            stale: Mutex::new(HashMap::new()),
            episodes: AtomicUsize::new(0),
            stats: RaftClientStats::default(),
            executor,
            stopped: AtomicBool::new(false),
            tasks: Mutex::new(0),
            tasks_ended: Condvar::new(),
            logger: builder.logger,
        });
        RaftClient {
            stripe: shared.stats.stripe(),
            shared,
            cache: collections::HashMap::default(),
            need_flush: Vec::new(),
            tombstoned: collections::HashSet::default(),
            stale_refused: Vec::new(),
        }
    }

    /// Queues `msg` for its target store. Call [`flush`](Self::flush) to
    /// wake the senders.
    pub fn send(&mut self, msg: RaftMessage) -> Result<(), DiscardReason> {
        self.shared.stats.sent[self.stripe].fetch_add(1, Ordering::SeqCst);
        let r = self.send_inner(msg);
        if r.is_err() {
            self.shared.stats.refused.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    fn send_inner(&mut self, msg: RaftMessage) -> Result<(), DiscardReason> {
        let store_id = msg.get_to_peer().get_store_id();
        if store_id == 0 {
            return Err(DiscardReason::Filtered);
        }
        if self.tombstoned.contains(&store_id) {
            self.refused_stale(store_id, msg.get_region_id());
            return Err(DiscardReason::Disconnected);
        }
        let conn_num = self.shared.cfg.grpc_raft_conn_num;
        let conn_id = if conn_num <= 1 {
            0
        } else {
            (msg.get_region_id() % conn_num as u64) as usize
        };
        let key = (store_id, conn_id);
        let mut raw = Some(msg);
        let mut encoded: Option<EncodedMessage> = None;
        for _ in 0..2 {
            if let Some(cq) = self.cache.get_mut(&key) {
                // A full queue refuses before the message is encoded: a
                // sender that outruns its connection pays nothing for each
                // refusal.
                if cq.queue.is_full() {
                    return Err(DiscardReason::Full);
                }
                // Encoded here, on the caller's thread, while the message is
                // in its cache (see `raft_codec`); once: a message a closed
                // queue handed back is pushed to the fresh one as it is.
                let msg = encoded.take().unwrap_or_else(|| {
                    EncodedMessage::encode(raw.take().expect("encoded at most once"))
                });
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
                        encoded = Some(m);
                    }
                    Err((reason, _)) => return Err(reason),
                }
            }
            match self.load_queue(store_id, conn_id) {
                Ok(queue) => {
                    self.cache.insert(
                        key,
                        CachedQueue {
                            queue,
                            dirty: false,
                        },
                    );
                }
                Err(tombstone) => {
                    if tombstone {
                        self.tombstoned.insert(store_id);
                        let region_id = match (&raw, &encoded) {
                            (Some(m), _) => m.get_region_id(),
                            (None, Some(e)) => e.region_id,
                            (None, None) => 0,
                        };
                        self.refused_stale(store_id, region_id);
                    }
                    return Err(DiscardReason::Disconnected);
                }
            }
        }
        Err(DiscardReason::Disconnected)
    }

    /// The queue of (store, conn), started if needed; `Err(true)` when the
    /// store is tombstone, `Err(false)` when the client is stopped.
    fn load_queue(&self, store_id: u64, conn_id: usize) -> Result<Arc<Queue>, bool> {
        let mut pool = self.shared.pool.lock().unwrap();
        // Checked under the lock: `stop` drains the pool under it too.
        if pool.tombstone_stores.contains(&store_id) {
            return Err(true);
        }
        if self.shared.stopped.load(Ordering::SeqCst) {
            return Err(false);
        }
        let shared = &self.shared;
        let q = pool
            .connections
            .entry((store_id, conn_id))
            .or_insert_with(|| {
                let q = Arc::new(Queue::new(shared.cfg.queue_size_per_conn()));
                // Counted before it runs, so `stop` never misses it.
                *shared.tasks.lock().unwrap() += 1;
                let task = run_connection(shared.clone(), store_id, conn_id, q.clone());
                shared.executor.spawn_ok(task);
                q
            })
            .clone();
        Ok(q)
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

    /// Connection attempts made to `store_id` so far.
    pub fn connection_attempts(&self, store_id: u64) -> u64 {
        let pool = self.shared.pool.lock().unwrap();
        pool.connects.get(&store_id).copied().unwrap_or(0)
    }

    /// Connections, attempts, tombstones and not-found episodes per store.
    pub fn pool_view(&self) -> PoolView {
        let pool = self.shared.pool.lock().unwrap();
        let mut v = PoolView::default();
        for (store_id, _) in pool.connections.keys() {
            *v.connections.entry(*store_id).or_default() += 1;
        }
        v.connection_attempts = pool.connects.iter().map(|(k, n)| (*k, *n)).collect();
        v.recent_connects = pool
            .recent_connects
            .iter()
            .map(|(k, r)| (*k, r.iter().cloned().collect()))
            .collect();
        v.tombstones = pool.tombstone_stores.iter().copied().collect();
        v.tombstones.sort_unstable();
        v.not_found = pool
            .not_found
            .iter()
            .map(|(id, e)| NotFoundView {
                store_id: *id,
                attempts: e.attempts,
                next_backoff_ms: e.backoff.as_millis() as u64,
            })
            .collect();
        v.not_found.sort_by_key(|e| e.store_id);
        drop(pool);
        let now = Instant::now();
        v.stale_regions = self
            .shared
            .stale
            .lock()
            .unwrap()
            .iter()
            .map(|(id, r)| (*id, r.view(now)))
            .collect();
        v
    }

    /// Number of live connection tasks.
    pub fn connection_count(&self) -> usize {
        self.shared.pool.lock().unwrap().connections.len()
    }

    /// Connection tasks that have not ended yet, including closed ones
    /// still reporting what they held.
    pub fn connection_tasks(&self) -> usize {
        *self.shared.tasks.lock().unwrap()
    }

    /// Message accounting.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Stops every connection; pending messages are reported unreachable
    /// and later sends fail with `Disconnected`. Returns once every
    /// connection task has ended (what a task held in an unconfirmed call
    /// is reported by the task itself), so the accounting read after it is
    /// final; at most [`STOP_WAIT`], then it warns and returns false. Not
    /// to be called on the client's own executor.
    pub fn stop(&self) -> bool {
        let conns: Vec<_> = {
            let mut pool = self.shared.pool.lock().unwrap();
            self.shared.stopped.store(true, Ordering::SeqCst);
            pool.connections.drain().collect()
        };
        for ((store_id, _), q) in conns {
            let pending = q.close();
            self.shared.report_msgs(store_id, pending, "stopped");
        }
        let tasks = self.shared.tasks.lock().unwrap();
        let (left, _) = self
            .shared
            .tasks_ended
            .wait_timeout_while(tasks, STOP_WAIT, |n| *n > 0)
            .unwrap();
        if *left > 0 {
            warn!(self.shared.logger, "raft client stopped with connection tasks still running";
                "tasks" => *left, "waited" => ?STOP_WAIT);
        }
        *left == 0
    }
}

/// How long [`RaftClient::stop`] waits for connection tasks to end. A task
/// ends at its next step once its queue is closed; only a step already
/// waiting on the network (a PD answer, a connect, a call's end after a
/// write error) can take longer, each bounded by its own timeout.
pub const STOP_WAIT: Duration = Duration::from_secs(5);

impl<R: StoreAddrResolver + Sync, E: RaftExtension> Shared<R, E> {
    /// Keeps the outcome of connection attempt `attempt` to `store_id`.
    fn record_connect(&self, store_id: u64, attempt: u64, waited: Duration, connected: bool) {
        let mut pool = self.pool.lock().unwrap();
        let recent = pool.recent_connects.entry(store_id).or_default();
        if recent.len() == RECENT_CONNECTS {
            recent.pop_front();
        }
        recent.push_back(ConnectView {
            attempt,
            waited_ms: waited.as_millis() as u64,
            connected,
        });
    }

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
        if reason == "tombstone" || reason == "not_found" {
            self.note_stale(store_id, targets.iter().map(|t| t.0));
        }
    }

    /// Notes regions whose messages to a tombstoned or not-found store were
    /// reported.
    fn note_stale(&self, store_id: u64, regions: impl Iterator<Item = u64>) {
        note_stale(&self.stale, regions.map(|r| (store_id, r)));
    }

    /// Forgets the stale regions of a store found again.
    fn forget_stale(&self, store_id: u64) {
        if self.stale.lock().unwrap().remove(&store_id).is_some() {
            let _ = RAFT_CLIENT_STALE_REGIONS.remove_label_values(&[&store_id.to_string()]);
        }
    }

    fn report_msgs(&self, store_id: u64, msgs: Vec<EncodedMessage>, reason: &str) {
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
                let _ = RAFT_CLIENT_NOT_FOUND_SINCE.remove_label_values(&[&store_id.to_string()]);
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
        }
        for q in queues {
            let pending = q.close();
            self.report_msgs(store_id, pending, "tombstone");
        }
        if first {
            // One line for the verdict, naming the regions still sending to
            // the store (those seen so far, the pending ones included): the
            // stale peers an operator removes.
            let view = self
                .stale
                .lock()
                .unwrap()
                .get(&store_id)
                .map(|r| r.view(Instant::now()))
                .unwrap_or_default();
            let ids: Vec<u64> = view.regions.iter().map(|r| r.region_id).collect();
            let advice = if ids.is_empty() {
                ""
            } else {
                "; regions still have peers on it, remove them with pd-ctl operator add remove-peer"
            };
            error!(self.logger, "store is tombstone, stop reconnecting to it{}", advice;
                "store_id" => store_id, "self_store_id" => self.self_store_id,
                "stale_regions" => ids.len(), "more_unlisted" => view.unlisted_messages > 0,
                "region_ids" => ?ids);
        }
    }

    /// One not-found answer: advances the store's episode (once per round,
    /// whichever connection sees it first) and returns when to retry.
    fn on_not_found(&self, store_id: u64) -> Instant {
        resolve_verdict(store_id, "not_found");
        let mut pool = self.pool.lock().unwrap();
        let now = Instant::now();
        let initial = self.cfg.initial_backoff();
        let ep = pool.not_found.entry(store_id).or_insert_with(|| {
            self.episodes.fetch_add(1, Ordering::SeqCst);
            RAFT_CLIENT_NOT_FOUND_STORES.inc();
            RAFT_CLIENT_NOT_FOUND_SINCE
                .with_label_values(&[&store_id.to_string()])
                .set(unix_secs());
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

    /// When the store is in a not-found episode whose next attempt is
    /// still ahead: that attempt's time.
    fn episode_wait(&self, store_id: u64) -> Option<Instant> {
        if self.episodes.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let pool = self.pool.lock().unwrap();
        let next = pool.not_found.get(&store_id)?.next_attempt;
        (Instant::now() < next).then_some(next)
    }

    fn end_not_found(&self, store_id: u64) {
        if self.episodes.load(Ordering::SeqCst) == 0 {
            return;
        }
        let ended = self.pool.lock().unwrap().not_found.remove(&store_id);
        if let Some(ep) = ended {
            self.episodes.fetch_sub(1, Ordering::SeqCst);
            RAFT_CLIENT_NOT_FOUND_STORES.dec();
            let _ = RAFT_CLIENT_NOT_FOUND_SINCE.remove_label_values(&[&store_id.to_string()]);
            self.forget_stale(store_id);
            info!(self.logger, "store found in PD again"; "store_id" => store_id, "attempts" => ep.attempts);
        }
    }

    /// Waits until `deadline`, reporting messages that arrive meanwhile;
    /// then, if nothing is queued, until a message is: an idle connection
    /// makes no PD call and no connection attempt, and the first message
    /// after the deadline is handled at once (never before it). Returns
    /// false when the queue was closed.
    async fn backoff(&self, store_id: u64, q: &Queue, deadline: Instant, reason: &str) -> bool {
        let mut delay = tikv_util::timer::delay(deadline);
        loop {
            match future::select(&mut delay, Box::pin(q.event(true))).await {
                Either::Left(_) => break,
                Either::Right((Event::Interrupted, _)) => return true,
                Either::Right((Event::Closed, _)) => return false,
                Either::Right((Event::Messages, _)) => self.report_pending(store_id, q, reason),
            }
        }
        match q.event(true).await {
            Event::Closed => false,
            Event::Interrupted | Event::Messages => true,
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

async fn run_connection<R: StoreAddrResolver + Sync, E: RaftExtension>(
    shared: Arc<Shared<R, E>>,
    store_id: u64,
    conn_id: usize,
    q: Arc<Queue>,
) {
    /// Ends the task's count, also when it panics.
    struct Ended<'a> {
        tasks: &'a Mutex<usize>,
        ended: &'a Condvar,
    }
    impl Drop for Ended<'_> {
        fn drop(&mut self) {
            RAFT_CLIENT_CONNECTIONS.dec();
            *self.tasks.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            self.ended.notify_all();
        }
    }
    RAFT_CLIENT_CONNECTIONS.inc();
    touch_store_series(store_id);
    let _ended = Ended {
        tasks: &shared.tasks,
        ended: &shared.tasks_ended,
    };
    connection_loop(&shared, store_id, conn_id, &q).await;
}

/// How a call ended.
enum CallEnd {
    /// The queue was closed: a tombstone verdict or `stop`.
    Closed,
    /// The peer does not implement the method.
    Unimplemented,
    /// The peer cancelled the call. A peer whose handler refuses a method
    /// while dropping the request (grpcio's default `unimplemented_call!`)
    /// races its UNIMPLEMENTED against this.
    Cancelled(String),
    /// The peer at the address is another store.
    StoreNotMatch(StoreNotMatch),
    /// Anything else: connect timeout, reset, a status from the peer.
    Failed(String),
}

/// What a call left behind for the connection loop.
struct CallOutcome {
    end: CallEnd,
    /// The call stayed up for the confirm window after its first write.
    confirmed: bool,
    /// Written but not confirmed: queued again or reported by the caller.
    unconfirmed: Vec<EncodedMessage>,
}

impl CallOutcome {
    fn failed(e: String) -> CallOutcome {
        CallOutcome {
            end: CallEnd::Failed(e),
            confirmed: false,
            unconfirmed: Vec::new(),
        }
    }
}

fn classify_status(s: RpcStatus) -> CallEnd {
    let text = || format!("{:?} {:?}", s.code(), s.message());
    match s.code() {
        RpcStatusCode::UNIMPLEMENTED => CallEnd::Unimplemented,
        RpcStatusCode::CANCELLED => CallEnd::Cancelled(text()),
        _ => match StoreNotMatch::from_status(&s) {
            Some(e) => CallEnd::StoreNotMatch(e),
            None => CallEnd::Failed(text()),
        },
    }
}

fn classify_result(r: grpcio::Result<Done>) -> CallEnd {
    match r {
        Ok(_) => CallEnd::Failed("the peer ended the call".to_owned()),
        Err(grpcio::Error::RpcFailure(s)) => classify_status(s),
        Err(e) => CallEnd::Failed(format!("{:?}", e)),
    }
}

async fn connection_loop<R: StoreAddrResolver + Sync, E: RaftExtension>(
    shared: &Arc<Shared<R, E>>,
    store_id: u64,
    conn_id: usize,
    q: &Arc<Queue>,
) {
    let cfg = &shared.cfg;
    let initial = cfg.initial_backoff();
    let log_interval = cfg.raft_client_not_found_log_interval.0;
    let mut connect_backoff = initial;
    let mut last_other_log = None;
    let mut last_fail_log = None;
    let mut batch_supported: Option<bool> = None;
    let mut last_addr = String::new();
    // The address that answered store-not-match, until resolved again.
    let mut mismatched: Option<String> = None;
    loop {
        if q.is_closed() {
            return;
        }
        q.clear_interrupt();
        // A store's connections share one not-found schedule: a connection
        // that starts while the store's episode is waiting waits with it
        // instead of asking PD on its own.
        if let Some(next) = shared.episode_wait(store_id) {
            shared.report_pending(store_id, q, "not_found");
            if !shared.backoff(store_id, q, next, "not_found").await {
                return;
            }
            continue;
        }
        let addr = match resolve_addr(&shared.resolver, store_id).await {
            Ok(addr) => {
                resolve_verdict(store_id, "success");
                shared.end_not_found(store_id);
                addr
            }
            Err(resolve::Error::StoreTombstone(_)) => {
                resolve_verdict(store_id, "tombstone");
                // Between the verdict and the pool update: sends racing it
                // must still end refused or reported.
                fail::fail_point!("raft_client_on_tombstone_verdict");
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
                resolve_verdict(store_id, "failed");
                let now = Instant::now();
                if tikv_util::throttle_elapsed(&mut last_other_log, now, log_interval) {
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
        if mismatched.take().as_deref() == Some(addr.as_str()) {
            // PD still names the address another store answered on.
            let next = Instant::now() + connect_backoff;
            connect_backoff = (connect_backoff * 2).min(cfg.raft_client_max_backoff.0);
            if !shared.backoff(store_id, q, next, "store_not_match").await {
                return;
            }
        }
        if addr != last_addr {
            batch_supported = None;
            last_addr = addr.clone();
        }
        conn_event(store_id, "connect");
        let attempt = {
            let mut pool = shared.pool.lock().unwrap();
            let n = pool.connects.entry(store_id).or_default();
            *n += 1;
            *n
        };
        let cb = ChannelBuilder::new(shared.env.clone())
            .keepalive_time(cfg.grpc_keepalive_time.0)
            .keepalive_timeout(cfg.grpc_keepalive_timeout.0)
            .initial_reconnect_backoff(initial)
            .max_reconnect_backoff(cfg.raft_client_max_backoff.0)
            .max_send_message_len(cfg.max_grpc_send_msg_len.0 as i32)
            .stream_initial_window_size(cfg.grpc_stream_initial_window_size.0 as i32)
            // A channel argument of its own per connection, so gRPC gives
            // each conn_id its own TCP connection (as upstream's "random id").
            .raw_cfg_int(
                std::ffi::CString::new("random id").expect("no NUL"),
                conn_id as i32,
            );
        let ch = shared.security.connect(cb, &addr);
        let waiting = Instant::now();
        let connected = ch
            .wait_for_connected(cfg.raft_client_connect_timeout.0)
            .await;
        shared.record_connect(store_id, attempt, waiting.elapsed(), connected);
        let out = if connected {
            conn_event(store_id, "connected");
            stream(
                shared,
                store_id,
                conn_id,
                q,
                &TikvClient::new(ch),
                &mut batch_supported,
            )
            .await
        } else {
            CallOutcome::failed(format!("connect to {} timed out", addr))
        };
        if out.confirmed {
            // Only a call that worked for a while ends a failure streak.
            connect_backoff = initial;
            last_fail_log = None;
        }
        let reason = match &out.end {
            CallEnd::Closed => {
                shared.report_msgs(store_id, out.unconfirmed, "stopped");
                return;
            }
            CallEnd::StoreNotMatch(e) => {
                conn_event(store_id, "store_not_match");
                if tikv_util::throttle_elapsed(&mut last_fail_log, Instant::now(), log_interval) {
                    warn!(shared.logger, "the store's address is served by another store, resolve it again";
                        "store_id" => store_id, "conn_id" => conn_id, "addr" => &addr,
                        "to_store_id" => e.to_store_id, "my_store_id" => e.my_store_id);
                }
                "store_not_match"
            }
            CallEnd::Unimplemented | CallEnd::Cancelled(_) | CallEnd::Failed(_) => {
                conn_event(store_id, "failed");
                if tikv_util::throttle_elapsed(&mut last_fail_log, Instant::now(), log_interval) {
                    let err = match &out.end {
                        CallEnd::Failed(e) | CallEnd::Cancelled(e) => e.as_str(),
                        _ => "the peer implements neither BatchRaft nor Raft",
                    };
                    warn!(shared.logger, "connection to store failed, will reconnect";
                        "store_id" => store_id, "conn_id" => conn_id, "addr" => &addr,
                        "err" => err, "backoff" => ?connect_backoff);
                }
                "unreachable"
            }
        };
        shared.router.report_store_unreachable(store_id);
        shared.report_msgs(store_id, out.unconfirmed, reason);
        shared.report_pending(store_id, q, reason);
        // The address may have moved, or belong to another store now: ask
        // PD again next time.
        shared.resolver.invalidate(store_id);
        if matches!(out.end, CallEnd::StoreNotMatch(_)) {
            mismatched = Some(addr);
            continue;
        }
        let next = Instant::now() + connect_backoff;
        connect_backoff = (connect_backoff * 2).min(cfg.raft_client_max_backoff.0);
        if !shared.backoff(store_id, q, next, reason).await {
            return;
        }
    }
}

/// A message larger than a gRPC message may be can never be sent: report
/// it unreachable instead of failing the stream over and over.
fn report_oversized<R: StoreAddrResolver + Sync, E: RaftExtension>(
    shared: &Shared<R, E>,
    store_id: u64,
    msgs: Vec<EncodedMessage>,
) {
    for m in &msgs {
        warn!(shared.logger, "raft message is larger than max-grpc-send-msg-len, dropped";
            "store_id" => store_id, "region_id" => m.region_id,
            "size" => m.len());
    }
    shared.report_msgs(store_id, msgs, "oversize");
}

fn target(m: &EncodedMessage) -> (u64, u64) {
    (m.region_id, m.to_peer_id)
}

/// The writing half of a `BatchRaft` or `Raft` call.
enum CallSink {
    Batch(ClientCStreamSender<EncodedBatch>),
    Single(ClientCStreamSender<EncodedMessage>),
}

impl CallSink {
    /// The write counter of this kind of call
    /// (`tikv_server_raft_message_flush_total{reason="batch"|"raft"}`).
    fn flush_counter(&self) -> &'static prometheus::IntCounter {
        match self {
            CallSink::Batch(_) => &RAFT_MESSAGE_FLUSH_BATCH,
            CallSink::Single(_) => &RAFT_MESSAGE_FLUSH_RAFT,
        }
    }

    /// Writes `msgs`; on failure also says how many were written first.
    /// `more` says a next write surely follows (the batch was cut for
    /// size): only then may gRPC buffer this one (`buffer_hint`), since a
    /// buffered write waits for the next unbuffered one.
    async fn write(
        &mut self,
        msgs: Vec<EncodedMessage>,
        more: bool,
    ) -> Result<(), (grpcio::Error, usize)> {
        // A write that fails before anything of it is written, the call
        // still up (as a write racing a reset does).
        fail::fail_point!("raft_client_write_error", |_| Err((
            grpcio::Error::RemoteStopped,
            0
        )));
        match self {
            CallSink::Batch(s) => {
                let b = EncodedBatch {
                    msgs,
                    last_observed_time: tikv_util::unix_nanos_now(),
                };
                let flags = WriteFlags::default().buffer_hint(more);
                s.send((b, flags)).await.map_err(|e| (e, 0))
            }
            CallSink::Single(s) => {
                let n = msgs.len();
                for (i, m) in msgs.into_iter().enumerate() {
                    let flags = WriteFlags::default().buffer_hint(more || i + 1 < n);
                    s.send((m, flags)).await.map_err(|e| (e, i))?;
                }
                Ok(())
            }
        }
    }
}

enum CallEvent {
    End(grpcio::Result<Done>),
    Queue(Event),
    Confirm,
}

/// Once a write failed the call is over. The write's error and the call's
/// status can differ (CANCELLED on one, UNIMPLEMENTED on the other): either
/// saying UNIMPLEMENTED means a fallback, as upstream's client decides;
/// otherwise the call's own status says why it ended.
async fn end_after_write_error(
    recv: &mut std::pin::Pin<Box<ClientCStreamReceiver<Done>>>,
    err: grpcio::Error,
    wait: Duration,
) -> CallEnd {
    let from_write = match err {
        grpcio::Error::RpcFailure(s) | grpcio::Error::RpcFinished(Some(s)) => classify_status(s),
        e => CallEnd::Failed(format!("{:?}", e)),
    };
    let from_call = match future::select(recv.as_mut(), tikv_util::timer::sleep(wait)).await {
        Either::Left((Err(e), _)) => Some(classify_result(Err(e))),
        _ => None,
    };
    decide_end(from_write, from_call)
}

/// How a call that failed a write ended: `from_write` is what the write's
/// error said, `from_call` the call's own status if it came in time.
/// Either saying UNIMPLEMENTED means a fallback; otherwise the call's status
/// wins, as it says why the peer ended the call.
fn decide_end(from_write: CallEnd, from_call: Option<CallEnd>) -> CallEnd {
    match from_call {
        _ if matches!(from_write, CallEnd::Unimplemented) => from_write,
        Some(end) => end,
        None => from_write,
    }
}

/// Drains the queue into one call until the queue is closed or the call
/// ends. Messages written before the call is confirmed are held (cloned)
/// until it is, but never more than the call's stream window in bytes
/// (`grpc-stream-initial-window-size`): a peer that refuses the call
/// without reading it grants no window, so once more than a window was
/// written the peer has read, and the call counts as confirmed. At full
/// speed that ends the cloning within the first window of a call.
async fn run_call<R: StoreAddrResolver + Sync, E: RaftExtension>(
    shared: &Shared<R, E>,
    store_id: u64,
    q: &Queue,
    mut sink: CallSink,
    recv: ClientCStreamReceiver<Done>,
) -> CallOutcome {
    let cfg = &shared.cfg;
    let delivered = &shared.stats.delivered;
    // Room for the batch's own fields.
    let max_bytes = (cfg.max_grpc_send_msg_len.0 as usize)
        .saturating_sub(32)
        .max(1);
    let budget = cfg.batch_budget(max_bytes);
    // A refusing peer answers on the call's first message: UNIMPLEMENTED
    // unread, store-not-match after reading it (upstream's service, tikv/tikv
    // `src/server/service/kv.rs`, checks each message's `to_peer.store_id`).
    // So the size bound on the held set counts from the end of the first
    // write: a first batch above the stream window confirms nothing alone;
    // more than the window past it means the peer made room beyond its first
    // message, which a peer refusing that message does not do.
    let hold_cap = cfg.grpc_stream_initial_window_size.0 as usize;
    let mut held_bytes = 0;
    let mut first_write_bytes: Option<usize> = None;
    let mut recv = Box::pin(recv);
    let mut held: Vec<EncodedMessage> = Vec::new();
    let mut confirm_at: Option<Instant> = None;
    let mut timer: Option<tikv_util::timer::Delay> = None;
    let mut confirmed = false;
    let mut more;
    loop {
        if !confirmed && confirm_at.is_some_and(|t| Instant::now() >= t) {
            confirmed = true;
            timer = None;
            delivered.fetch_add(held.len() as u64, Ordering::SeqCst);
            held = Vec::new();
        }
        // The peer's answer first: nothing more is written to a refused call.
        let ev = future::poll_fn(|cx| {
            if let Poll::Ready(r) = recv.as_mut().poll(cx) {
                return Poll::Ready(CallEvent::End(r));
            }
            if let Poll::Ready(e) = q.poll_event(cx, false) {
                return Poll::Ready(CallEvent::Queue(e));
            }
            if let Some(t) = timer.as_mut() {
                if std::pin::Pin::new(t).poll(cx).is_ready() {
                    return Poll::Ready(CallEvent::Confirm);
                }
            }
            Poll::Pending
        })
        .await;
        let msgs = match ev {
            CallEvent::End(r) => {
                return CallOutcome {
                    end: classify_result(r),
                    confirmed,
                    unconfirmed: held,
                }
            }
            CallEvent::Queue(Event::Closed) => {
                return CallOutcome {
                    end: CallEnd::Closed,
                    confirmed,
                    unconfirmed: held,
                }
            }
            CallEvent::Queue(Event::Messages) => {
                fail::fail_point!("raft_client_before_take_batch");
                let b = q.take_batch(cfg.raft_msg_max_batch_size, budget, max_bytes);
                if !b.oversized.is_empty() {
                    report_oversized(shared, store_id, b.oversized);
                }
                more = b.cut_for_size;
                b.msgs
            }
            CallEvent::Queue(Event::Interrupted) | CallEvent::Confirm => continue,
        };
        if msgs.is_empty() {
            continue;
        }
        let n = msgs.len();
        let targets: Vec<_> = if confirmed {
            msgs.iter().map(target).collect()
        } else {
            if confirm_at.is_none() {
                let t = Instant::now() + cfg.raft_client_call_confirm_window.0;
                confirm_at = Some(t);
                timer = Some(tikv_util::timer::delay(t));
            }
            let bytes = msgs.iter().map(EncodedMessage::len_in_batch).sum::<usize>();
            first_write_bytes.get_or_insert(bytes);
            held_bytes += bytes;
            held.extend(msgs.iter().cloned());
            Vec::new()
        };
        match sink.write(msgs, more).await {
            Ok(()) => {
                sink.flush_counter().inc();
                if confirmed {
                    delivered.fetch_add(n as u64, Ordering::SeqCst);
                } else if held_bytes - first_write_bytes.unwrap_or(0) > hold_cap {
                    confirmed = true;
                    timer = None;
                    delivered.fetch_add(held.len() as u64, Ordering::SeqCst);
                    held = Vec::new();
                }
            }
            Err((e, written)) => {
                if confirmed {
                    delivered.fetch_add(written as u64, Ordering::SeqCst);
                    shared.report_targets(store_id, &targets[written..], "send");
                }
                let end =
                    end_after_write_error(&mut recv, e, cfg.raft_client_connect_timeout.0).await;
                return CallOutcome {
                    end,
                    confirmed,
                    unconfirmed: held,
                };
            }
        }
    }
}

/// Immediate `BatchRaft` retries after the peer cancelled an unconfirmed
/// first call (see [`CallEnd::Cancelled`]).
const MAX_CANCELLED_RETRIES: usize = 3;

/// Streams the queue to a connected peer: `BatchRaft` first, `Raft` when
/// the peer does not implement it (remembered per address). No probe: the
/// first call carries messages, and what a refused call was given is queued
/// again: for the fallback on UNIMPLEMENTED, or for another `BatchRaft`
/// call when the peer cancelled a first call before it was confirmed (the
/// refusal may have raced its UNIMPLEMENTED; a few times at most).
async fn stream<R: StoreAddrResolver + Sync, E: RaftExtension>(
    shared: &Arc<Shared<R, E>>,
    store_id: u64,
    conn_id: usize,
    q: &Arc<Queue>,
    client: &TikvClient,
    batch_supported: &mut Option<bool>,
) -> CallOutcome {
    let mut cancelled = 0;
    loop {
        let batch = *batch_supported != Some(false);
        let opt = MetadataSourceStoreId::call_option(shared.self_store_id);
        let opened = if batch {
            client
                .client
                .client_streaming(&raft_codec::METHOD_BATCH_RAFT, opt)
                .map(|(s, r)| (CallSink::Batch(s), r))
        } else {
            client
                .client
                .client_streaming(&raft_codec::METHOD_RAFT, opt)
                .map(|(s, r)| (CallSink::Single(s), r))
        };
        let (sink, recv) = match opened {
            Ok(c) => c,
            Err(e) => return CallOutcome::failed(format!("{:?}", e)),
        };
        // The call's sender runs on the channel's own completion-queue
        // thread (as upstream's, `client.spawn`): a flush wakes it there,
        // and each write completes there, with no hop through our executor.
        let (tx, rx) = futures::channel::oneshot::channel();
        let (sh, qq) = (shared.clone(), q.clone());
        client.spawn(async move {
            let _ = tx.send(run_call(&sh, store_id, &qq, sink, recv).await);
        });
        // Dropped unrun only when gRPC's environment shuts down (the
        // process is ending).
        let out = rx.await.unwrap_or_else(|_| {
            CallOutcome::failed("the call's task was dropped by gRPC".to_owned())
        });
        match out.end {
            CallEnd::Unimplemented if batch => {
                info!(shared.logger, "peer does not implement BatchRaft, fall back to Raft";
                    "store_id" => store_id, "conn_id" => conn_id,
                    "requeued" => out.unconfirmed.len());
                conn_event(store_id, "fallback");
                *batch_supported = Some(false);
            }
            CallEnd::Cancelled(_)
                if batch
                    && batch_supported.is_none()
                    && !out.confirmed
                    && cancelled < MAX_CANCELLED_RETRIES =>
            {
                cancelled += 1;
                conn_event(store_id, "cancelled_retry");
            }
            _ => {
                if batch && out.confirmed {
                    *batch_supported = Some(true);
                }
                return out;
            }
        }
        let refused = q.requeue_front(out.unconfirmed);
        shared.report_msgs(store_id, refused, "stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> CallEnd {
        CallEnd::Failed("reset".into())
    }

    fn cancelled() -> CallEnd {
        CallEnd::Cancelled("CANCELLED".into())
    }

    /// The write and the call can disagree (a refusing peer's UNIMPLEMENTED
    /// races its dropping of the request): either saying UNIMPLEMENTED is a
    /// fallback, whatever the other says.
    #[test]
    fn unimplemented_on_either_side_is_a_fallback() {
        let cases = [
            (CallEnd::Unimplemented, Some(cancelled())),
            (CallEnd::Unimplemented, Some(failed())),
            (CallEnd::Unimplemented, None),
            (cancelled(), Some(CallEnd::Unimplemented)),
            (failed(), Some(CallEnd::Unimplemented)),
        ];
        for (i, (w, c)) in cases.into_iter().enumerate() {
            assert!(
                matches!(decide_end(w, c), CallEnd::Unimplemented),
                "case {}",
                i
            );
        }
    }

    /// Otherwise the call's own status says why it ended; the write's error
    /// only when the status did not come in time.
    #[test]
    fn otherwise_the_call_status_decides() {
        let nm = CallEnd::StoreNotMatch(StoreNotMatch {
            to_store_id: 3,
            my_store_id: 7,
        });
        assert!(matches!(
            decide_end(cancelled(), Some(nm)),
            CallEnd::StoreNotMatch(_)
        ));
        assert!(matches!(
            decide_end(failed(), Some(cancelled())),
            CallEnd::Cancelled(_)
        ));
        assert!(matches!(
            decide_end(cancelled(), None),
            CallEnd::Cancelled(_)
        ));
        assert!(matches!(decide_end(failed(), None), CallEnd::Failed(_)));
    }

    /// The stale-region list is bounded: a full list counts newcomers as
    /// unlisted until some region has been quiet for `STALE_REGION_QUIET`,
    /// then drops the quiet ones (counted as evicted) and takes newcomers
    /// again; a region seen again keeps its count.
    #[test]
    fn stale_regions_are_bounded_and_drop_quiet_ones() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut r = StaleRegions::default();
        for id in 0..STALE_REGIONS_PER_STORE as u64 {
            r.note(id, 1, at(id));
        }
        r.note(0, 2, at(100));
        r.note(9999, 1, at(2000));
        let v = r.view(at(2000));
        assert_eq!(v.regions.len(), STALE_REGIONS_PER_STORE);
        assert_eq!((v.evicted, v.unlisted_messages), (0, 1), "none quiet yet");
        assert_eq!(v.regions[0].region_id, 0, "most messages first");
        assert_eq!(v.regions[0].messages, 3);
        assert_eq!(v.regions[0].last_seen_ms_ago, 1900);
        // Region 1 keeps sending; the others go quiet.
        let late = STALE_REGION_QUIET.as_millis() as u64 + 1000;
        r.note(1, 1, at(late - 10));
        r.note(9998, 1, at(late));
        let v = r.view(at(late));
        let ids: Vec<u64> = v.regions.iter().map(|x| x.region_id).collect();
        assert_eq!(ids, [1, 9998], "{:?}", v);
        assert_eq!(v.evicted, STALE_REGIONS_PER_STORE as u64 - 1);
        // Thousands of regions: the list stays full, the rest is counted.
        for id in 20_000..30_000 {
            r.note(id, 1, at(late + 1));
        }
        let v = r.view(at(late + 1));
        assert_eq!(v.regions.len(), STALE_REGIONS_PER_STORE);
        assert_eq!(
            v.unlisted_messages,
            1 + 10_000 - (STALE_REGIONS_PER_STORE as u64 - 2)
        );
    }
}
