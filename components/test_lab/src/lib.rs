//! Lab clusters of real processes (upstream keeps its cluster helpers in
//! `components/test_raftstore`): spawns `test-pd` and `tikv-server` from the
//! binaries cargo built, talks to their HTTP APIs, and walks the
//! removed-store scenario. Used by `tests/process` and `tikv-drill
//! --processes`.

#![deny(missing_docs)]

pub mod host_walk;
pub mod hosts;
pub mod http;
pub mod lab;
pub mod plot;
pub mod port_hold;
pub mod process;
pub mod report;
pub mod scenario;
pub mod startup;

pub use crate::lab::{Lab, LabStore};
pub use crate::report::{Progress, Report};
