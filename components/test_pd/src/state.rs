//! The shared state of an embedded PD cluster (what etcd holds for PD), plus
//! injected faults and request counters.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use grpcio::RpcStatusCode;
use kvproto::{metapb, pdpb};

/// How PD answers GetStore for an id it does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotFoundShape {
    /// Old PD: the call fails with gRPC status 2-UNKNOWN.
    GrpcStatus,
    /// Newer PD: a response whose header carries error type UNKNOWN.
    Header,
}

/// A PD method, for counters and faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GetMembers`.
    GetMembers,
    /// `GetStore`.
    GetStore,
    /// `PutStore`.
    PutStore,
    /// `GetAllStores`.
    GetAllStores,
    /// `StoreHeartbeat`.
    StoreHeartbeat,
    /// `AllocID`.
    AllocId,
    /// `IsBootstrapped`.
    IsBootstrapped,
    /// `Bootstrap`.
    Bootstrap,
}

/// A fault to inject into a method.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer normally, after this delay (the server thread is not blocked).
    Delay(Duration),
    /// Fail the call with this gRPC status and message.
    Fail(RpcStatusCode, String),
    /// Never answer; the client sees its deadline pass.
    Drop,
}

struct State {
    cluster_id: u64,
    members: Vec<pdpb::Member>,
    leader: usize,
    stores: HashMap<u64, metapb::Store>,
    next_id: u64,
    bootstrapped: bool,
    faults: HashMap<(Method, Option<u64>), Fault>,
    counts: HashMap<(Method, Option<u64>), u64>,
    heartbeats: HashMap<u64, pdpb::StoreStats>,
    dropped: Vec<Box<dyn Any + Send>>,
}

/// The cluster state all members share.
pub(crate) struct Cluster {
    shape: NotFoundShape,
    state: Mutex<State>,
}

impl Cluster {
    pub(crate) fn new(shape: NotFoundShape) -> Cluster {
        Cluster {
            shape,
            state: Mutex::new(State {
                cluster_id: 6_800_000_000_000_000_001,
                members: vec![],
                leader: 0,
                stores: HashMap::new(),
                next_id: 1000,
                bootstrapped: true,
                faults: HashMap::new(),
                counts: HashMap::new(),
                heartbeats: HashMap::new(),
                dropped: vec![],
            }),
        }
    }

    pub(crate) fn shape(&self) -> NotFoundShape {
        self.shape
    }

    pub(crate) fn cluster_id(&self) -> u64 {
        self.state.lock().unwrap().cluster_id
    }

    pub(crate) fn set_cluster_id(&self, id: u64) {
        self.state.lock().unwrap().cluster_id = id;
    }

    pub(crate) fn set_members(&self, m: Vec<pdpb::Member>) {
        self.state.lock().unwrap().members = m;
    }

    pub(crate) fn members(&self) -> (Vec<pdpb::Member>, usize) {
        let s = self.state.lock().unwrap();
        (s.members.clone(), s.leader)
    }

    pub(crate) fn set_leader(&self, idx: usize) {
        self.state.lock().unwrap().leader = idx;
    }

    pub(crate) fn leader(&self) -> usize {
        self.state.lock().unwrap().leader
    }

    pub(crate) fn set_bootstrapped(&self, b: bool) {
        self.state.lock().unwrap().bootstrapped = b;
    }

    pub(crate) fn bootstrapped(&self) -> bool {
        self.state.lock().unwrap().bootstrapped
    }

    pub(crate) fn put_store(&self, store: metapb::Store) {
        let mut s = self.state.lock().unwrap();
        s.stores.insert(store.get_id(), store);
    }

    /// PD's refusal of `store` when another store holds its address or
    /// peer address (tikv/pd `server/cluster/cluster.go`, `putStoreImpl`):
    /// a store that is Tombstone or physically destroyed holds nothing. An
    /// empty peer address takes part in no check.
    pub(crate) fn address_conflict(&self, store: &metapb::Store) -> Option<String> {
        let s = self.state.lock().unwrap();
        let mut others: Vec<_> = s.stores.values().collect();
        others.sort_by_key(|o| o.get_id());
        for o in others {
            if o.get_state() == metapb::StoreState::Tombstone
                || o.get_physically_destroyed()
                || o.get_id() == store.get_id()
            {
                continue;
            }
            let (addr, peer) = (o.get_address(), o.get_peer_address());
            if store.get_address() == addr || (!peer.is_empty() && store.get_address() == peer) {
                return Some(format!(
                    "duplicated store address: {}, already registered by {}",
                    go_text(store),
                    go_text(o)
                ));
            }
            let mine = store.get_peer_address();
            if !mine.is_empty() && (mine == addr || mine == peer) {
                return Some(format!(
                    "duplicated store peer address: {}, already registered by {}",
                    go_text(store),
                    go_text(o)
                ));
            }
        }
        None
    }

    pub(crate) fn get_store(&self, id: u64) -> Option<metapb::Store> {
        self.state.lock().unwrap().stores.get(&id).cloned()
    }

    pub(crate) fn all_stores(&self) -> Vec<metapb::Store> {
        let s = self.state.lock().unwrap();
        let mut v: Vec<_> = s.stores.values().cloned().collect();
        v.sort_by_key(|s| s.get_id());
        v
    }

    pub(crate) fn update_store(&self, id: u64, f: impl FnOnce(&mut metapb::Store)) {
        let mut s = self.state.lock().unwrap();
        let store = s
            .stores
            .get_mut(&id)
            .unwrap_or_else(|| panic!("test PD does not know store {}", id));
        f(store);
    }

    pub(crate) fn remove_tombstone(&self, id: u64) -> bool {
        let mut s = self.state.lock().unwrap();
        match s.stores.get(&id) {
            Some(st) if st.get_state() == metapb::StoreState::Tombstone => {
                s.stores.remove(&id);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn alloc_id(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        s.next_id
    }

    pub(crate) fn set_fault(&self, m: Method, store: Option<u64>, f: Fault) {
        self.state.lock().unwrap().faults.insert((m, store), f);
    }

    pub(crate) fn clear_faults(&self) {
        let dropped = {
            let mut s = self.state.lock().unwrap();
            s.faults.clear();
            std::mem::take(&mut s.dropped)
        };
        drop(dropped);
    }

    /// Counts a call and returns the fault that applies to it, if any.
    pub(crate) fn on_call(&self, m: Method, store: Option<u64>) -> Option<Fault> {
        let mut s = self.state.lock().unwrap();
        *s.counts.entry((m, None)).or_default() += 1;
        if store.is_some() {
            *s.counts.entry((m, store)).or_default() += 1;
        }
        store
            .and_then(|id| s.faults.get(&(m, Some(id))))
            .or_else(|| s.faults.get(&(m, None)))
            .cloned()
    }

    /// Keeps a sink alive without answering (the `Drop` fault).
    pub(crate) fn hold(&self, sink: Box<dyn Any + Send>) {
        self.state.lock().unwrap().dropped.push(sink);
    }

    /// Records a heartbeat of a known store: its stats, and the time in
    /// the store's `last_heartbeat` (unix nanoseconds, as PD keeps it).
    pub(crate) fn on_heartbeat(&self, stats: pdpb::StoreStats) {
        let mut s = self.state.lock().unwrap();
        let id = stats.get_store_id();
        if let Some(store) = s.stores.get_mut(&id) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            store.set_last_heartbeat(now.as_nanos() as i64);
            s.heartbeats.insert(id, stats);
        }
    }

    pub(crate) fn last_heartbeat(&self, id: u64) -> Option<pdpb::StoreStats> {
        self.state.lock().unwrap().heartbeats.get(&id).cloned()
    }

    /// Every (method, store) counter with a store.
    pub(crate) fn store_counts(&self) -> Vec<(Method, u64, u64)> {
        let s = self.state.lock().unwrap();
        let mut v: Vec<_> = s
            .counts
            .iter()
            .filter_map(|((m, id), n)| id.map(|id| (*m, id, *n)))
            .collect();
        v.sort_by_key(|(m, id, _)| (format!("{:?}", m), *id));
        v
    }

    pub(crate) fn count(&self, m: Method, store: Option<u64>) -> u64 {
        let s = self.state.lock().unwrap();
        s.counts.get(&(m, store)).copied().unwrap_or(0)
    }
}

/// A store as Go's `%v` prints a protobuf message (PD's error texts): the
/// fields that are set, `name:value`, strings quoted.
pub(crate) fn go_text(s: &metapb::Store) -> String {
    let mut f = vec![format!("id:{}", s.get_id())];
    let mut text = |name: &str, v: &str| {
        if !v.is_empty() {
            f.push(format!("{}:{:?}", name, v));
        }
    };
    text("address", s.get_address());
    text("version", s.get_version());
    text("peer_address", s.get_peer_address());
    text("status_address", s.get_status_address());
    if s.get_state() != metapb::StoreState::Up {
        f.push(format!("state:{:?}", s.get_state()));
    }
    if s.get_physically_destroyed() {
        f.push("physically_destroyed:true".to_owned());
    }
    f.join(" ")
}
