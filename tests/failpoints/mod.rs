//! Failpoint regression tests. Built only with `--features failpoints`
//! (`make test` runs them, `make fail` runs only them). Failpoints are
//! process-global, so every test holds a `FailScenario`, which runs them one
//! at a time.

#[path = "../integrations/upstream_peer.rs"]
#[allow(dead_code)]
mod upstream_peer;
#[path = "../integrations/util.rs"]
#[allow(dead_code)]
mod util;

#[allow(dead_code)]
mod cluster;

mod cases;
