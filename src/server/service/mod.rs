//! The receiving side of the Raft transport.

mod kv;

pub use self::kv::{Service, StoreAliveHook, StoreNotMatch};
