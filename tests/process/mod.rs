//! The removed-store scenario across real processes: `test-pd` and
//! `tikv-server`s spawned from the binaries cargo built (`make test` builds
//! them first), on loopback, logs in a temp dir, every child killed on drop.

mod cli;

use test_lab::scenario::removed_store_walk;
use test_lab::Progress;

fn walk(flavor: &str) {
    let report = removed_store_walk(flavor, Progress::off()).unwrap_or_else(|e| panic!("{}", e));
    println!("{}", report.table());
    assert!(report.passed(), "failed expectations:\n{}", report.failures());
}

#[test]
fn removed_store_across_processes_new_pd() {
    walk("new");
}

#[test]
fn removed_store_across_processes_old_pd() {
    walk("old");
}
