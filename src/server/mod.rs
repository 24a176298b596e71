//! `tikv::server`: the transport side of a TiKV node.

pub mod config;
pub mod metrics;
pub mod raft_client;
pub mod raft_codec;
pub mod raft_extension;
pub mod resolve;
#[allow(clippy::module_inception)] // upstream's path: src/server/server.rs
pub mod server;
pub mod service;

pub use self::config::Config;
pub use self::raft_client::{ConnectionBuilder, DiscardReason, MetadataSourceStoreId, RaftClient};
pub use self::raft_extension::{FakeExtension, RaftExtension, RecordingExtension};
pub use self::resolve::{PdStoreAddrResolver, StoreAddrResolver};
pub use self::server::Server;
pub use self::service::{Service, StoreAliveHook, StoreNotMatch};
