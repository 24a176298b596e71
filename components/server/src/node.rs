//! Joining PD as a TiKV store does (upstream: `src/server/raft_server.rs`,
//! `try_bootstrap_store`, `check_or_prepare_bootstrap_cluster`,
//! `bootstrap_cluster`, then `put_store`), and the periodic store heartbeat
//! (upstream: raftstore's pd worker).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kvproto::{metapb, pdpb};
use pd_client::{Error as PdError, PdClient};
use slog::{error, info, Logger};

use crate::ident::{DataDir, StoreIdent};

/// Version this store reports to PD.
pub const STORE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-transport-only");

/// What the store tells PD about itself in `PutStore` (the id is filled by
/// [`join`]).
#[derive(Clone, Debug)]
pub struct StoreMeta {
    /// Address for peers and clients.
    pub address: String,
    /// Status server address, if any.
    pub status_address: String,
    /// Labels.
    pub labels: Vec<(String, String)>,
    /// Where the binary runs from.
    pub deploy_path: String,
    /// Process start, unix seconds.
    pub start_timestamp: i64,
}

impl StoreMeta {
    /// The `metapb::Store` for `store_id`.
    pub fn to_store(&self, store_id: u64) -> metapb::Store {
        let mut s = metapb::Store::default();
        s.set_id(store_id);
        s.set_address(self.address.clone());
        s.set_peer_address(self.address.clone());
        s.set_status_address(self.status_address.clone());
        s.set_version(STORE_VERSION.to_owned());
        s.set_start_timestamp(self.start_timestamp);
        s.set_deploy_path(self.deploy_path.clone());
        s.set_labels(
            self.labels
                .iter()
                .map(|(k, v)| {
                    let mut l = metapb::StoreLabel::default();
                    l.set_key(k.clone());
                    l.set_value(v.clone());
                    l
                })
                .collect::<Vec<_>>()
                .into(),
        );
        s
    }
}

/// Unix seconds now.
pub fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Finds this store's identity in the data dir or, on first start, asks PD
/// for a store id and persists it (upstream: `try_bootstrap_store`).
///
/// Errors are the messages an operator needs: another cluster's data dir,
/// a corrupt identity, PD unreachable.
pub fn ensure_ident<P: PdClient + ?Sized>(
    pd: &P,
    dir: &DataDir,
    logger: &Logger,
) -> Result<StoreIdent, String> {
    let cluster_id = pd
        .get_cluster_id()
        .map_err(|e| format!("cannot get the cluster id from PD: {}", e))?;
    match StoreIdent::load(dir.path())? {
        Some(ident) if ident.cluster_id != cluster_id => Err(format!(
            "cluster ID mismatch, local {} != remote {}: data dir {} belongs to another cluster; \
             point --pd at that cluster's PD, or use a fresh --data-dir",
            ident.cluster_id,
            cluster_id,
            dir.path().display()
        )),
        Some(ident) => {
            info!(logger, "found store identity"; "store_id" => ident.store_id, "cluster_id" => cluster_id);
            Ok(ident)
        }
        None => {
            let store_id = pd
                .alloc_id()
                .map_err(|e| format!("cannot allocate a store id from PD: {}", e))?;
            let ident = StoreIdent {
                cluster_id,
                store_id,
            };
            ident.save(dir.path())?;
            info!(logger, "alloc store id"; "store_id" => store_id, "cluster_id" => cluster_id);
            Ok(ident)
        }
    }
}

/// Bootstraps the cluster if nobody has, then registers the store with
/// `PutStore` (upstream: `MultiRaftServer::start`). A store PD has buried
/// refuses to start.
pub fn register<P: PdClient + ?Sized>(
    pd: &P,
    store: metapb::Store,
    data_dir: &DataDir,
    logger: &Logger,
) -> Result<(), String> {
    let store_id = store.get_id();
    let bootstrapped = pd
        .is_cluster_bootstrapped()
        .map_err(|e| format!("cannot ask PD whether the cluster is bootstrapped: {}", e))?;
    if !bootstrapped {
        bootstrap_cluster(pd, &store, logger)?;
    }
    info!(logger, "put store to PD"; "store_id" => store_id, "address" => store.get_address());
    match pd.put_store(store) {
        Ok(()) => Ok(()),
        Err(PdError::StoreTombstone(msg)) => Err(format!(
            "store {} is tombstone in PD ({}): it was removed from the cluster and cannot rejoin; \
             to join as a new store, start with an empty --data-dir (this one: {})",
            store_id,
            msg,
            data_dir.path().display()
        )),
        Err(e) => Err(format!("cannot register store {} with PD: {}", store_id, e)),
    }
}

fn bootstrap_cluster<P: PdClient + ?Sized>(
    pd: &P,
    store: &metapb::Store,
    logger: &Logger,
) -> Result<(), String> {
    let alloc = || {
        pd.alloc_id()
            .map_err(|e| format!("cannot allocate the first region's ids: {}", e))
    };
    let (region_id, peer_id) = (alloc()?, alloc()?);
    let mut region = metapb::Region::default();
    region.set_id(region_id);
    region.mut_region_epoch().set_conf_ver(1);
    region.mut_region_epoch().set_version(1);
    let mut peer = metapb::Peer::default();
    peer.set_id(peer_id);
    peer.set_store_id(store.get_id());
    region.mut_peers().push(peer);
    info!(logger, "trying to bootstrap cluster"; "store_id" => store.get_id(), "region_id" => region_id);
    match pd.bootstrap_cluster(store.clone(), region) {
        Ok(()) => {
            info!(logger, "bootstrap cluster ok"; "store_id" => store.get_id());
            Ok(())
        }
        Err(PdError::ClusterBootstrapped(_)) => {
            info!(logger, "cluster is already bootstrapped"; "store_id" => store.get_id());
            Ok(())
        }
        Err(e) => Err(format!("cannot bootstrap the cluster: {}", e)),
    }
}

/// What the heartbeat loop saw, for `/status`.
#[derive(Default)]
pub struct HeartbeatState {
    /// Heartbeats PD accepted.
    pub sent: AtomicU64,
    /// Heartbeats that failed.
    pub failed: AtomicU64,
    /// PD answered that this store is tombstone.
    pub tombstone: AtomicBool,
}

/// Sends one store heartbeat: id, region count, start time and the
/// interval it covers.
pub fn heartbeat<P: PdClient + ?Sized>(
    pd: &P,
    store_id: u64,
    region_count: u32,
    start_time: i64,
    interval: Duration,
    state: &HeartbeatState,
    logger: &Logger,
) {
    let mut stats = pdpb::StoreStats::default();
    stats.set_store_id(store_id);
    stats.set_region_count(region_count);
    stats.set_start_time(start_time as u32);
    let now = unix_secs() as u64;
    stats
        .mut_interval()
        .set_start_timestamp(now.saturating_sub(interval.as_secs()));
    stats.mut_interval().set_end_timestamp(now);
    match pd.store_heartbeat(stats) {
        Ok(()) => {
            state.sent.fetch_add(1, Ordering::SeqCst);
        }
        Err(PdError::StoreTombstone(msg)) => {
            state.failed.fetch_add(1, Ordering::SeqCst);
            if !state.tombstone.swap(true, Ordering::SeqCst) {
                error!(logger, "PD says this store is tombstone; it is no longer part of the cluster";
                    "store_id" => store_id, "err" => msg);
            }
        }
        Err(e) => {
            state.failed.fetch_add(1, Ordering::SeqCst);
            error!(logger, "store heartbeat failed"; "store_id" => store_id, "err" => %e);
        }
    }
}

/// A PD client shared by the store's parts.
pub type SharedPd = Arc<dyn PdClient>;
