//! Synthetic Raft traffic standing in for raftstore: regions with peers on
//! the stores PD lists, a heartbeat per region to every other peer each
//! heartbeat tick, and an answer to every heartbeat received. Peers are
//! never removed when a store leaves PD's list, as a stale peer stays in
//! raftstore's region meta: that is the situation the patch is about.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use kvproto::eraftpb::MessageType;
use kvproto::raft_serverpb::RaftMessage;
use pd_client::PdClient;
use serde::Serialize;
use slog::{info, warn, Logger};
use tikv::server::{RaftClient, RaftExtension, StoreAddrResolver};

use crate::config::RaftstoreConfig;

/// The peer id of `store_id`'s peer of `region_id` (unique per pair).
pub fn peer_id(region_id: u64, store_id: u64) -> u64 {
    (region_id << 32) | (store_id & 0xFFFF_FFFF)
}

/// The store of a peer id made by [`peer_id`].
pub fn store_of_peer(peer_id: u64) -> u64 {
    peer_id & 0xFFFF_FFFF
}

/// A heartbeat (or its response) from `from` to `to` of `region_id`.
pub fn heartbeat(region_id: u64, from: u64, to: u64, t: MessageType) -> RaftMessage {
    let mut m = RaftMessage::default();
    m.set_region_id(region_id);
    m.mut_from_peer().set_id(peer_id(region_id, from));
    m.mut_from_peer().set_store_id(from);
    m.mut_to_peer().set_id(peer_id(region_id, to));
    m.mut_to_peer().set_store_id(to);
    m.mut_region_epoch().set_conf_ver(1);
    m.mut_region_epoch().set_version(1);
    m.mut_message().set_msg_type(t);
    m.mut_message().set_from(peer_id(region_id, from));
    m.mut_message().set_to(peer_id(region_id, to));
    m.mut_message().set_term(1);
    m
}

/// Counters of what the transport reported and what arrived, per store.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reports {
    /// Messages received, by sending store.
    pub received_from: BTreeMap<u64, u64>,
    /// `report_unreachable` calls (undelivered messages), by target store.
    pub unreachable: BTreeMap<u64, u64>,
    /// `report_store_unreachable` calls, by store.
    pub store_unreachable: BTreeMap<u64, u64>,
    /// `report_store_maybe_tombstone` calls, by store.
    pub maybe_tombstone: BTreeMap<u64, u64>,
}

/// raftstore's side of the transport for this store: counts reports and
/// queues an answer to every heartbeat received.
#[derive(Clone)]
pub struct StoreRouter {
    reports: Arc<Mutex<Reports>>,
    answers: Sender<RaftMessage>,
}

impl StoreRouter {
    /// Adds one to the counter `pick` chooses, for `store_id`.
    fn count(&self, pick: fn(&mut Reports) -> &mut BTreeMap<u64, u64>, store_id: u64) {
        *pick(&mut self.reports.lock().unwrap())
            .entry(store_id)
            .or_default() += 1;
    }
}

impl RaftExtension for StoreRouter {
    fn feed(&self, msg: RaftMessage) {
        let from = msg.get_from_peer().get_store_id();
        self.count(|r| &mut r.received_from, from);
        if msg.get_message().get_msg_type() == MessageType::MsgHeartbeat {
            let to = msg.get_to_peer().get_store_id();
            let _ = self.answers.send(heartbeat(
                msg.get_region_id(),
                to,
                from,
                MessageType::MsgHeartbeatResponse,
            ));
        }
    }
    fn report_store_unreachable(&self, store_id: u64) {
        self.count(|r| &mut r.store_unreachable, store_id);
    }
    fn report_store_maybe_tombstone(&self, store_id: u64) {
        self.count(|r| &mut r.maybe_tombstone, store_id);
    }
    fn report_unreachable(&self, _region_id: u64, to_peer_id: u64) {
        self.count(|r| &mut r.unreachable, store_of_peer(to_peer_id));
    }
}

/// The regions and where their peers are.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Regions {
    /// Region id -> stores holding a peer.
    pub peers: BTreeMap<u64, BTreeSet<u64>>,
}

impl Regions {
    /// Places up to `replicas` peers of each region on `stores` (a rotation
    /// by region id) and keeps every peer placed before.
    pub fn place(&mut self, count: u64, stores: &[u64], replicas: usize) {
        let n = stores.len();
        for region in 1..=count {
            let set = self.peers.entry(region).or_default();
            if n == 0 {
                continue;
            }
            for k in 0..replicas.min(n) {
                set.insert(stores[(region as usize + k) % n]);
            }
        }
    }

    /// Stores other than `me` that hold a peer of a region `me` is in.
    pub fn peer_stores(&self, me: u64) -> BTreeSet<u64> {
        self.peers
            .values()
            .filter(|s| s.contains(&me))
            .flat_map(|s| s.iter().copied())
            .filter(|s| *s != me)
            .collect()
    }

    /// Regions with a peer on `me`.
    pub fn count_with(&self, me: u64) -> usize {
        self.peers.values().filter(|s| s.contains(&me)).count()
    }
}

/// Counters of the traffic driver.
#[derive(Default, Serialize)]
pub struct TrafficStats {
    /// Heartbeats given to the raft client.
    pub heartbeats_sent: AtomicU64,
    /// Heartbeat responses given to the raft client.
    pub responses_sent: AtomicU64,
    /// Messages the raft client refused at `send`.
    pub refused: AtomicU64,
}

/// The traffic driver: a thread that owns a raft client clone.
pub struct Traffic {
    me: u64,
    regions: Arc<Mutex<Regions>>,
    reports: Arc<Mutex<Reports>>,
    stats: Arc<TrafficStats>,
    stop: Arc<AtomicBool>,
    wake: Sender<RaftMessage>,
    handle: Option<JoinHandle<()>>,
    /// Dropped at stop: ends the store-list thread.
    refresher: Option<Sender<()>>,
}

/// The router the raft service and raft client report to, and the inbox
/// the traffic driver answers from; build it before the client.
pub fn router() -> (StoreRouter, Receiver<RaftMessage>) {
    let (tx, rx) = channel::unbounded();
    let r = StoreRouter {
        reports: Arc::default(),
        answers: tx,
    };
    (r, rx)
}

impl Traffic {
    /// The driver for store `me`, not running yet: regions and reports can
    /// be viewed, traffic starts with [`spawn`](Self::spawn).
    pub fn new(me: u64, router: &StoreRouter) -> Traffic {
        Traffic {
            me,
            regions: Arc::default(),
            reports: router.reports.clone(),
            stats: Arc::default(),
            stop: Arc::default(),
            wake: router.answers.clone(),
            handle: None,
            refresher: None,
        }
    }

    /// Starts driving traffic (once the store is registered with PD).
    pub fn spawn<R, E>(
        &mut self,
        cfg: &RaftstoreConfig,
        pd: Arc<dyn PdClient>,
        mut client: RaftClient<R, E>,
        inbox: Receiver<RaftMessage>,
        logger: Logger,
    ) where
        R: StoreAddrResolver + Sync,
        E: RaftExtension,
    {
        if self.handle.is_some() || self.stop.load(Ordering::SeqCst) {
            return;
        }
        let me = self.me;
        let (cfg, st, rg, sp) = (
            cfg.clone(),
            self.stats.clone(),
            self.regions.clone(),
            self.stop.clone(),
        );
        // The store list comes from PD on a thread of its own: raftstore
        // keeps ticking whatever PD does, so a silent PD must not stall the
        // traffic (scenario 4 of the host lab). Not joined at stop: it may
        // be inside a PD call; dropping `refresher` ends it after that call.
        let (refresher, stopped) = channel::bounded::<()>(0);
        self.refresher = Some(refresher);
        {
            let (cfg, rg, logger) = (cfg.clone(), self.regions.clone(), logger.clone());
            std::thread::Builder::new()
                .name("synthetic-stores".to_owned())
                .spawn(move || {
                    let mut known: Vec<u64> = vec![];
                    loop {
                        match pd.get_all_stores(true) {
                            Ok(stores) => {
                                let mut ids: Vec<u64> = stores
                                    .iter()
                                    .filter(|s| !s.get_address().is_empty())
                                    .map(|s| s.get_id())
                                    .collect();
                                if !ids.contains(&me) {
                                    ids.push(me);
                                }
                                ids.sort_unstable();
                                if ids != known {
                                    info!(logger, "placing synthetic regions"; "stores" => ?ids);
                                    known = ids;
                                }
                                rg.lock().unwrap().place(
                                    cfg.synthetic_regions,
                                    &known,
                                    cfg.synthetic_max_replicas,
                                );
                            }
                            Err(e) => warn!(logger, "cannot list stores from PD"; "err" => %e),
                        }
                        match stopped.recv_timeout(cfg.synthetic_store_refresh_interval.0) {
                            Err(channel::RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                    }
                })
                .expect("spawn synthetic stores thread");
        }
        let handle = std::thread::Builder::new()
            .name("synthetic-traffic".to_owned())
            .spawn(move || {
                let tick = cfg.raft_base_tick_interval.0;
                let hb_every = cfg.raft_heartbeat_ticks as u64;
                let mut ticks = 0u64;
                let mut next_tick = Instant::now();
                while !sp.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if now >= next_tick {
                        next_tick = now + tick;
                        ticks += 1;
                        if ticks.is_multiple_of(hb_every) {
                            let targets: Vec<(u64, u64)> = {
                                let r = rg.lock().unwrap();
                                r.peers
                                    .iter()
                                    .filter(|(_, s)| s.contains(&me))
                                    .flat_map(|(id, s)| {
                                        s.iter().filter(|t| **t != me).map(move |t| (*id, *t))
                                    })
                                    .collect()
                            };
                            for (region, to) in targets {
                                st.heartbeats_sent.fetch_add(1, Ordering::SeqCst);
                                let m = heartbeat(region, me, to, MessageType::MsgHeartbeat);
                                if client.send(m).is_err() {
                                    st.refused.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            client.flush();
                        }
                    }
                    let wait = next_tick.saturating_duration_since(Instant::now());
                    match inbox.recv_timeout(wait) {
                        Ok(m) => {
                            let mut pending = vec![m];
                            pending.extend(inbox.try_iter());
                            for m in pending {
                                if m.get_to_peer().get_store_id() == 0 {
                                    continue; // a wake-up
                                }
                                st.responses_sent.fetch_add(1, Ordering::SeqCst);
                                if client.send(m).is_err() {
                                    st.refused.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            client.flush();
                        }
                        Err(channel::RecvTimeoutError::Timeout) => {}
                        Err(channel::RecvTimeoutError::Disconnected) => {
                            std::thread::sleep(wait.min(Duration::from_millis(50)))
                        }
                    }
                }
            })
            .expect("spawn synthetic traffic thread");
        self.handle = Some(handle);
    }

    /// Adds a peer on `store_id` to every region this store is in, as a
    /// conf change from raftstore would (the cold-start case: peers may
    /// name a store PD does not know yet).
    pub fn add_peer_store(&self, store_id: u64) -> usize {
        let mut r = self.regions.lock().unwrap();
        let mut n = 0;
        for set in r.peers.values_mut() {
            if set.contains(&self.me) && set.insert(store_id) {
                n += 1;
            }
        }
        n
    }

    /// Regions, peers, reports and counters as JSON.
    pub fn view(&self) -> serde_json::Value {
        let r = self.regions.lock().unwrap();
        serde_json::json!({
            "regions": r.count_with(self.me),
            "peer_stores": r.peer_stores(self.me),
            "heartbeats_sent": self.stats.heartbeats_sent.load(Ordering::SeqCst),
            "responses_sent": self.stats.responses_sent.load(Ordering::SeqCst),
            "refused": self.stats.refused.load(Ordering::SeqCst),
            "reports": &*self.reports.lock().unwrap(),
        })
    }

    /// Regions with a peer on this store.
    pub fn region_count(&self) -> usize {
        self.regions.lock().unwrap().count_with(self.me)
    }

    /// Stops the driver and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.refresher = None;
        let _ = self.wake.send(RaftMessage::default());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvproto::metapb;
    use tikv::server::resolve::MockStoreAddrResolver;
    use tikv::server::ConnectionBuilder;

    /// PD whose first store listing answers and every later one hangs until
    /// released: a PD host that went silent.
    struct SilentAfterFirst {
        calls: AtomicU64,
        entered: Sender<()>,
        release: Receiver<()>,
    }

    impl PdClient for SilentAfterFirst {
        fn get_all_stores(&self, _: bool) -> pd_client::Result<Vec<metapb::Store>> {
            if self.calls.fetch_add(1, Ordering::SeqCst) > 0 {
                let _ = self.entered.send(());
                let _ = self.release.recv_timeout(Duration::from_secs(20));
            }
            Ok([1, 2]
                .iter()
                .map(|&id| {
                    let mut s = metapb::Store::default();
                    s.set_id(id);
                    s.set_address(format!("127.0.0.1:{}", id));
                    s
                })
                .collect())
        }
    }

    #[test]
    fn traffic_goes_on_while_pd_hangs() {
        let (entered_tx, entered) = channel::unbounded();
        let (release, release_rx) = channel::unbounded();
        let pd = Arc::new(SilentAfterFirst {
            calls: AtomicU64::new(0),
            entered: entered_tx,
            release: release_rx,
        });
        let (router, inbox) = router();
        let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
        let resolver = MockStoreAddrResolver::new(|id| {
            Err(tikv::server::resolve::Error::Other(
                format!("no store {}", id).into(),
            ))
        });
        let client = RaftClient::new(
            1,
            ConnectionBuilder::new(
                env,
                tikv::server::Config::default(),
                resolver,
                router.clone(),
            ),
        );
        let cfg = RaftstoreConfig {
            raft_base_tick_interval: tikv_util::config::ReadableDuration::millis(10),
            raft_heartbeat_ticks: 1,
            synthetic_store_refresh_interval: tikv_util::config::ReadableDuration::millis(10),
            ..RaftstoreConfig::default()
        };
        let mut t = Traffic::new(1, &router);
        t.spawn(
            &cfg,
            pd,
            client,
            inbox,
            slog::Logger::root(slog::Discard, slog::o!()),
        );
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("a second store listing");
        let hung = t.stats.heartbeats_sent.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.stats.heartbeats_sent.load(Ordering::SeqCst) <= hung + 10 {
            assert!(
                Instant::now() < deadline,
                "no heartbeats while PD hangs: {} sent before, {} now",
                hung,
                t.stats.heartbeats_sent.load(Ordering::SeqCst)
            );
            std::thread::park_timeout(Duration::from_millis(10));
        }
        drop(release);
        t.stop();
    }

    #[test]
    fn placement_rotates_and_keeps_stale_peers() {
        let mut r = Regions::default();
        r.place(4, &[1, 2, 3], 3);
        assert!(r.peers.values().all(|s| s.len() == 3));
        // Store 3 leaves PD's list, store 4 joins: 3's peers stay.
        r.place(4, &[1, 2, 4], 3);
        assert!(r.peers.values().all(|s| s.contains(&3)));
        assert!(r.peers.values().all(|s| s.contains(&4)));
        assert_eq!(r.peer_stores(1), [2, 3, 4].into_iter().collect());
        // Two replicas over four stores: each region on two, all covered.
        let mut r = Regions::default();
        r.place(4, &[1, 2, 3, 4], 2);
        assert!(r.peers.values().all(|s| s.len() == 2));
        assert_eq!(r.count_with(1), 2);
    }

    #[test]
    fn heartbeats_are_answered_and_reports_counted_by_store() {
        let (router, inbox) = router();
        router.feed(heartbeat(1, 2, 1, MessageType::MsgHeartbeat));
        router.feed(heartbeat(1, 2, 1, MessageType::MsgHeartbeatResponse));
        let answer = inbox.try_recv().unwrap();
        assert_eq!(
            answer.get_message().get_msg_type(),
            MessageType::MsgHeartbeatResponse
        );
        assert_eq!(answer.get_to_peer().get_store_id(), 2);
        assert_eq!(answer.get_to_peer().get_id(), peer_id(1, 2));
        assert!(inbox.try_recv().is_err(), "responses are not answered");
        router.report_unreachable(1, peer_id(1, 2));
        router.report_store_maybe_tombstone(2);
        let r = router.reports.lock().unwrap();
        assert_eq!(r.received_from[&2], 2);
        assert_eq!(r.unreachable[&2], 1);
        assert_eq!(r.maybe_tombstone[&2], 1);
    }
}
