//! What the transport reports to raftstore (TiKV keeps this trait in
//! `tikv_kv`): received messages, unreachable stores and peers, and stores
//! that may be tombstone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kvproto::raft_serverpb::RaftMessage;

/// raftstore's side of the transport. Every method has a do-nothing default.
pub trait RaftExtension: Clone + Send + Sync + 'static {
    /// A Raft message arrived from another store.
    fn feed(&self, msg: RaftMessage) {
        let _ = msg;
    }
    /// The connection to `store_id` failed.
    fn report_store_unreachable(&self, store_id: u64) {
        let _ = store_id;
    }
    /// PD does not know `store_id`: it may have been removed (or may not be
    /// registered yet). raftstore may check its peers on that store.
    fn report_store_maybe_tombstone(&self, store_id: u64) {
        let _ = store_id;
    }
    /// A message to `to_peer_id` of `region_id` was not delivered.
    fn report_unreachable(&self, region_id: u64, to_peer_id: u64) {
        let _ = (region_id, to_peer_id);
    }
}

/// An extension that drops everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct FakeExtension;

impl RaftExtension for FakeExtension {}

/// What a [`RecordingExtension`] saw.
#[derive(Default, Debug)]
pub struct Records {
    /// Messages fed, in arrival order.
    pub fed: Vec<RaftMessage>,
    /// `report_store_unreachable` calls per store.
    pub store_unreachable: HashMap<u64, u64>,
    /// `report_store_maybe_tombstone` calls per store.
    pub maybe_tombstone: HashMap<u64, u64>,
    /// `report_unreachable` calls as (region, peer).
    pub unreachable: Vec<(u64, u64)>,
}

/// An extension that records everything, for tests. Clones share records.
#[derive(Clone, Default)]
pub struct RecordingExtension {
    records: Arc<Mutex<Records>>,
}

impl RecordingExtension {
    /// A new empty recorder.
    pub fn new() -> RecordingExtension {
        RecordingExtension::default()
    }
    /// Runs `f` on the records.
    pub fn with<T>(&self, f: impl FnOnce(&Records) -> T) -> T {
        f(&self.records.lock().unwrap())
    }
    /// Number of messages fed.
    pub fn fed_count(&self) -> usize {
        self.with(|r| r.fed.len())
    }
    /// Number of `report_unreachable` calls.
    pub fn unreachable_count(&self) -> usize {
        self.with(|r| r.unreachable.len())
    }
    /// Number of `report_store_maybe_tombstone` calls for `store_id`.
    pub fn maybe_tombstone_count(&self, store_id: u64) -> u64 {
        self.with(|r| r.maybe_tombstone.get(&store_id).copied().unwrap_or(0))
    }
    /// Number of `report_store_unreachable` calls for `store_id`.
    pub fn store_unreachable_count(&self, store_id: u64) -> u64 {
        self.with(|r| r.store_unreachable.get(&store_id).copied().unwrap_or(0))
    }
}

impl RaftExtension for RecordingExtension {
    fn feed(&self, msg: RaftMessage) {
        self.records.lock().unwrap().fed.push(msg);
    }
    fn report_store_unreachable(&self, store_id: u64) {
        *self
            .records
            .lock()
            .unwrap()
            .store_unreachable
            .entry(store_id)
            .or_default() += 1;
    }
    fn report_store_maybe_tombstone(&self, store_id: u64) {
        *self
            .records
            .lock()
            .unwrap()
            .maybe_tombstone
            .entry(store_id)
            .or_default() += 1;
    }
    fn report_unreachable(&self, region_id: u64, to_peer_id: u64) {
        self.records
            .lock()
            .unwrap()
            .unreachable
            .push((region_id, to_peer_id));
    }
}
