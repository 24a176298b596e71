//! A small test cluster (upstream has `test_raftstore`): test_pd plus N
//! stores on loopback, each with its own PD client, resolver, raft client,
//! raft service (evidence of life wired to its raft client), a recording
//! router and a log capture; synthetic traffic sends a heartbeat per region
//! to every other peer on each tick, as raftstore does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvproto::eraftpb::MessageType;
use kvproto::raft_serverpb::RaftMessage;
use security::SecurityManager;
use slog::Level;
use test_pd::{Method, NotFoundShape, Server as PdServer};
use tikv::server::raft_client::StatsSnapshot;
use tikv::server::{Config, RecordingExtension};
use tikv_util::logger::LogCapture;
use tikv_util::worker::Worker;

use crate::util::*;

/// One store of the cluster.
pub struct TestStore {
    /// Store id.
    pub id: u64,
    /// Its raft service (our own), fed messages land in `node.ext`.
    pub node: Node,
    /// Its raft client (a clone; traffic uses others).
    pub client: Client,
    /// What its raft client reported (unreachable, maybe-tombstone).
    pub router: RecordingExtension,
    /// Its log lines (raft client and resolver).
    pub log: LogCapture,
    _worker: Worker,
}

/// A region and its peers: (peer id, store id).
#[derive(Clone, Debug)]
pub struct Region {
    /// Region id.
    pub id: u64,
    /// Peers, as (peer id, store id).
    pub peers: Vec<(u64, u64)>,
}

/// A heartbeat from `from` to `to` of `region`.
pub fn heartbeat(region: &Region, from: u64, to: u64) -> RaftMessage {
    let peer = |store: u64| region.peers.iter().find(|p| p.1 == store).unwrap().0;
    let mut m = RaftMessage::default();
    m.set_region_id(region.id);
    m.mut_from_peer().set_id(peer(from));
    m.mut_from_peer().set_store_id(from);
    m.mut_to_peer().set_id(peer(to));
    m.mut_to_peer().set_store_id(to);
    m.mut_message().set_msg_type(MessageType::MsgHeartbeat);
    m.mut_message().set_from(peer(from));
    m.mut_message().set_to(peer(to));
    m
}

/// The cluster.
pub struct Cluster {
    /// The embedded PD.
    pub pd: PdServer,
    /// Running stores by id.
    pub stores: BTreeMap<u64, TestStore>,
    /// Stopped stores keep their clients for accounting.
    pub stopped: BTreeMap<u64, TestStore>,
    /// Regions with peers on the given stores.
    pub regions: Arc<Vec<Region>>,
    cfg: Config,
    senders: Arc<Mutex<BTreeMap<u64, Client>>>,
    traffic: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    members_at_start: u64,
    security: Arc<SecurityManager>,
}

impl Cluster {
    /// PD with `shape`, stores `ids` registered, `regions` regions with a
    /// peer on every store in `peer_stores` (which may name stores that are
    /// not started yet: their peers point at them all the same).
    pub fn new(
        shape: NotFoundShape,
        ids: &[u64],
        peer_stores: &[u64],
        regions: u64,
        cfg: Config,
    ) -> Cluster {
        Cluster::with_pd(PdServer::new(1, shape), ids, peer_stores, regions, cfg)
    }

    /// As [`new`](Self::new), on a PD of the caller's (several members).
    pub fn with_pd(
        pd: PdServer,
        ids: &[u64],
        peer_stores: &[u64],
        regions: u64,
        cfg: Config,
    ) -> Cluster {
        Cluster::with_security(
            pd,
            ids,
            peer_stores,
            regions,
            cfg,
            SecurityManager::plaintext(),
        )
    }

    /// As [`with_pd`](Self::with_pd), every store's PD client, raft client
    /// and raft service using `security` (give `pd` the same).
    pub fn with_security(
        pd: PdServer,
        ids: &[u64],
        peer_stores: &[u64],
        regions: u64,
        cfg: Config,
        security: Arc<SecurityManager>,
    ) -> Cluster {
        let regions = (1..=regions)
            .map(|id| Region {
                id,
                peers: peer_stores.iter().map(|s| (id * 1000 + s, *s)).collect(),
            })
            .collect();
        let mut c = Cluster {
            pd,
            stores: BTreeMap::new(),
            stopped: BTreeMap::new(),
            regions: Arc::new(regions),
            cfg,
            senders: Arc::default(),
            traffic: None,
            members_at_start: 0,
            security,
        };
        for id in ids {
            c.start_store(*id, "127.0.0.1:0", true);
        }
        c
    }

    /// Starts store `id` on `addr`, registering it with PD when `register`;
    /// it joins the traffic.
    pub fn start_store(&mut self, id: u64, addr: &str, register: bool) {
        self.start_store_opts(id, addr, register, true)
    }

    /// As [`start_store`](Self::start_store); a store that does not `send`
    /// only receives (no evidence of life for its peers).
    pub fn start_store_opts(&mut self, id: u64, addr: &str, register: bool, send: bool) {
        let log = LogCapture::new();
        let members = self.pd.method_count(Method::GetMembers);
        let (worker, client, router) =
            raft_client_with(&self.pd, id, self.cfg.clone(), &log, &self.security);
        // A new PD client's discovery is not a reconnect.
        self.members_at_start += self.pd.method_count(Method::GetMembers) - members;
        let alive = client.clone();
        let opts = NodeOptions {
            alive: Some(Arc::new(move |s| alive.notify_store_alive(s))),
            security: Some(self.security.clone()),
            ..Default::default()
        };
        let node = Node::start_with(Receiver::Ours, id, addr, opts);
        if register {
            self.pd.add_store(id, &node.addr());
        }
        if send {
            self.senders.lock().unwrap().insert(id, client.clone());
        }
        let store = TestStore {
            id,
            node,
            client,
            router,
            log,
            _worker: worker,
        };
        self.stores.insert(id, store);
    }

    /// Stops store `id`: its service and its raft client (as SIGKILL would,
    /// its peers only see the connection break).
    pub fn stop_store(&mut self, id: u64) {
        self.senders.lock().unwrap().remove(&id);
        let mut s = self.stores.remove(&id).expect("running store");
        s.node.stop();
        assert!(
            s.client.stop(),
            "store {}: a connection task outlived stop",
            id
        );
        self.stopped.insert(id, s);
    }

    /// Store `id`.
    pub fn store(&self, id: u64) -> &TestStore {
        &self.stores[&id]
    }

    /// Starts a thread sending a tick every `interval` until the cluster is
    /// dropped or [`stop_traffic`](Self::stop_traffic).
    pub fn start_traffic(&mut self, interval: Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, senders, regions) = (stop.clone(), self.senders.clone(), self.regions.clone());
        let h = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                tick(&senders, &regions);
                std::thread::park_timeout(interval);
            }
        });
        self.traffic = Some((stop, h));
    }

    /// Stops the traffic thread, if any.
    pub fn stop_traffic(&mut self) {
        if let Some((stop, h)) = self.traffic.take() {
            stop.store(true, Ordering::SeqCst);
            h.thread().unpark();
            h.join().unwrap();
        }
    }

    /// Warn and error lines mentioning `store_id`, over every store's log.
    pub fn warn_lines_about(&self, store_id: u64) -> usize {
        self.stores
            .values()
            .chain(self.stopped.values())
            .map(|s| {
                s.log.count(Level::Warning, "", Some(store_id))
                    + s.log.count(Level::Error, "", Some(store_id))
            })
            .sum()
    }

    /// GetMembers calls other than the stores' PD client discovery: PD
    /// client reconnects.
    pub fn pd_reconnects(&self) -> u64 {
        self.pd.method_count(Method::GetMembers) - self.members_at_start
    }

    /// Waits until every store's accounting balances; returns the stats.
    pub fn assert_balanced(&self) -> Vec<(u64, StatsSnapshot)> {
        self.stores
            .values()
            .chain(self.stopped.values())
            .map(|s| (s.id, assert_balanced(&s.client)))
            .collect()
    }
}

fn tick(senders: &Mutex<BTreeMap<u64, Client>>, regions: &[Region]) {
    let mut senders = senders.lock().unwrap();
    for (from, c) in senders.iter_mut() {
        for r in regions {
            if !r.peers.iter().any(|p| p.1 == *from) {
                continue;
            }
            for &(_, to) in &r.peers {
                if to != *from {
                    let _ = c.send(heartbeat(r, *from, to));
                }
            }
        }
        c.flush();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_traffic();
        for s in self.stores.values() {
            s.client.stop();
        }
    }
}
