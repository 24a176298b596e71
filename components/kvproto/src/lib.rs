//! Wire-compatible subset of `pingcap/kvproto`.
//!
//! The `.proto` files under `proto/` keep upstream's package names, message
//! names, field numbers, enum values, service and method names, so the
//! generated types interoperate with a real PD and a real TiKV. Rust code is
//! generated at build time by `protobuf-build` (protobuf 2 codec, grpcio stubs).

// Generated code: none of its lints are ours to fix.
#![allow(warnings, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));

#[cfg(test)]
mod wire_tests;
