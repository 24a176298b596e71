//! A PD client for TiKV's store resolution: leader discovery over several
//! endpoints, typed errors keyed on PD's contract, and a retry policy that
//! retries only transport and leadership failures.
//!
//! Differs from upstream on purpose: an application answer such as
//! "invalid store ID N, not found" is returned after one RPC, with no forced
//! reconnect and no sleep.

#![deny(missing_docs)]

mod client;
pub mod config;
pub mod errors;
pub mod metrics;
pub mod util;

use futures::future::BoxFuture;
use kvproto::{metapb, pdpb};

pub use crate::client::{ReconnectStats, RpcClient};
pub use crate::config::{Config, REQUEST_RECONNECT_INTERVAL};
pub use crate::errors::{Error, Result};

/// A boxed future of a PD answer.
pub type PdFuture<T> = BoxFuture<'static, Result<T>>;

/// What TiKV asks PD. Methods a test double does not need keep their default,
/// which answers with an error instead of panicking.
pub trait PdClient: Send + Sync {
    /// The cluster id learnt from PD.
    fn get_cluster_id(&self) -> Result<u64> {
        Err(errors::other("get_cluster_id is not implemented"))
    }

    /// Reads one store's meta. See [`util::classify_get_store`] for verdicts.
    fn get_store(&self, store_id: u64) -> Result<metapb::Store> {
        futures::executor::block_on(self.get_store_async(store_id))
    }

    /// Reads one store's meta without blocking the caller.
    fn get_store_async(&self, store_id: u64) -> PdFuture<metapb::Store> {
        let _ = store_id;
        Box::pin(futures::future::ready(Err(errors::other(
            "get_store_async is not implemented",
        ))))
    }

    /// Reads every store; tombstones are left out when `exclude_tombstone`.
    fn get_all_stores(&self, exclude_tombstone: bool) -> Result<Vec<metapb::Store>> {
        let _ = exclude_tombstone;
        Err(errors::other("get_all_stores is not implemented"))
    }

    /// Registers or updates this store's meta.
    fn put_store(&self, store: metapb::Store) -> Result<()> {
        let _ = store;
        Err(errors::other("put_store is not implemented"))
    }

    /// Allocates a cluster-unique id (store, region and peer ids).
    fn alloc_id(&self) -> Result<u64> {
        Err(errors::other("alloc_id is not implemented"))
    }

    /// Whether the cluster has been bootstrapped.
    fn is_cluster_bootstrapped(&self) -> Result<bool> {
        Err(errors::other("is_cluster_bootstrapped is not implemented"))
    }

    /// Bootstraps the cluster with its first store and region;
    /// `Error::ClusterBootstrapped` when another store did it first.
    fn bootstrap_cluster(&self, store: metapb::Store, region: metapb::Region) -> Result<()> {
        let _ = (store, region);
        Err(errors::other("bootstrap_cluster is not implemented"))
    }

    /// Reports this store's statistics; `Error::StoreTombstone` when PD has
    /// buried the store.
    fn store_heartbeat(&self, stats: pdpb::StoreStats) -> Result<()> {
        let _ = stats;
        Err(errors::other("store_heartbeat is not implemented"))
    }
}
