//! The patched TiKV server pieces: store address resolution that tells a
//! definite tombstone from an ambiguous not-found, and a Raft client that
//! stops reconnecting to tombstones while retrying not-found cheaply.

#![deny(missing_docs)]

pub mod server;
