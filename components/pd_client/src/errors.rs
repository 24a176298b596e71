//! PD client errors, typed by PD's contract.

use std::error;

/// Errors from the PD client. Application answers are typed here, once, so
/// callers never match on strings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster is already bootstrapped.
    #[error("cluster {0} is already bootstrapped")]
    ClusterBootstrapped(u64),
    /// The cluster is not bootstrapped yet.
    #[error("cluster {0} is not bootstrapped")]
    ClusterNotBootstrapped(u64),
    /// PD says this client's version is incompatible.
    #[error("feature is not supported in other cluster components")]
    Incompatible,
    /// A transport or gRPC status failure (after the retries it deserved).
    #[error("{0:?}")]
    Grpc(#[from] grpcio::Error),
    /// Anything else: bad input, unexpected answers, cluster id mismatch.
    #[error("{0}")]
    Other(#[from] Box<dyn error::Error + Sync + Send>),
    /// PD has no region for the key.
    #[error("region is not found for key {0:?}")]
    RegionNotFound(Vec<u8>),
    /// The store is Tombstone (returned with state Tombstone, or PD answered
    /// STORE_TOMBSTONE). The string describes what PD said.
    #[error("store is tombstone {0}")]
    StoreTombstone(String),
    /// PD answered "invalid store ID <id>, not found" for the requested id:
    /// the store was removed and forgotten, or is not registered yet.
    #[error("invalid store ID {0}, not found")]
    StoreNotFound(u64),
    /// Asked to stop while waiting for PD at start.
    #[error("stopped while waiting for PD")]
    Stopped,
}

/// The result type of the PD client.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A short label for metrics (`kind` of `tikv_pd_request_failures_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::ClusterBootstrapped(_) => "cluster_bootstrapped",
            Error::ClusterNotBootstrapped(_) => "cluster_not_bootstrapped",
            Error::Incompatible => "incompatible",
            Error::Grpc(_) => "grpc",
            Error::Other(_) => "other",
            Error::RegionNotFound(_) => "region_not_found",
            Error::StoreTombstone(_) => "store_tombstone",
            Error::StoreNotFound(_) => "store_not_found",
            Error::Stopped => "stopped",
        }
    }
}

/// Builds an `Error::Other` from a message.
pub fn other(msg: impl Into<String>) -> Error {
    Error::Other(msg.into().into())
}

impl Error {
    /// A transport or leadership failure (UNAVAILABLE, DEADLINE_EXCEEDED,
    /// CANCELLED, a reset, "not leader"): worth another try.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Grpc(e) if crate::util::is_retryable(e))
    }
}
