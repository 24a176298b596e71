//! Upstream's regression: a live store that PD does not know yet (cold
//! start) gets the same not-found answer as a removed one. It must never be
//! blacklisted, and must get traffic as soon as it is known or heard from.

use std::time::{Duration, Instant};

use slog::Level;
use test_pd::NotFoundShape;
use tikv::server::Config;
use tikv_util::config::ReadableDuration;

use super::test_removed_store::fed_from;
use crate::cluster::Cluster;
use crate::util::*;

const T: Duration = Duration::from_secs(20);
const TICK: Duration = Duration::from_millis(20);

/// Stores 1 and 2 send to store 3 before it registers; it registers later.
#[test]
fn late_store_is_never_blacklisted_and_gets_traffic() {
    for shape in [NotFoundShape::GrpcStatus, NotFoundShape::Header] {
        let _s = fail::FailScenario::setup();
        let mut c = Cluster::new(shape, &[1, 2], &[1, 2, 3], 10, fast_cfg());
        c.start_traffic(TICK);
        wait_until(T, "not-found episodes for store 3", || {
            c.store(1).client.in_not_found_episode(3) && c.store(2).client.in_not_found_episode(3)
        });
        // Store 3 starts without talking to anyone, then registers.
        c.start_store_opts(3, "127.0.0.1:0", false, false);
        let registered = Instant::now();
        c.pd.add_store(3, &c.store(3).node.addr());
        wait_until(T, "store 3 hears from 1 and 2", || {
            fed_from(&c, 3, 1) > 0 && fed_from(&c, 3, 2) > 0
        });
        // Within a backoff step (not-found cap 400ms) of registering.
        let took = registered.elapsed();
        assert!(took < Duration::from_secs(5), "{:?}", took);
        for s in [1, 2] {
            assert!(!c.store(s).client.is_tombstone(3), "{:?}", shape);
            assert!(!c.store(s).client.in_not_found_episode(3));
        }
        c.stop_traffic();
        c.assert_balanced();
    }
}

/// With hour-long backoffs, only evidence of life can end the wait in
/// time: store 3 registers and sends first, and 1 and 2 reach it at once.
#[test]
fn late_store_that_sends_first_is_reached_without_waiting() {
    let _s = fail::FailScenario::setup();
    let slow = hour_backoffs_cfg();
    let mut c = Cluster::new(NotFoundShape::Header, &[1, 2], &[1, 2, 3], 10, slow);
    c.start_traffic(TICK);
    wait_until(T, "not-found episodes for store 3", || {
        c.store(1).client.in_not_found_episode(3) && c.store(2).client.in_not_found_episode(3)
    });
    c.start_store(3, "127.0.0.1:0", true);
    wait_until(T, "1 and 2 reach store 3 long before the hour", || {
        fed_from(&c, 3, 1) > 0 && fed_from(&c, 3, 2) > 0
    });
    assert!(!c.store(1).client.is_tombstone(3));
    c.stop_traffic();
    c.assert_balanced();
}

/// Not found, found, not found again: the second episode is new, its first
/// warning comes at once and its backoff starts again from the initial one.
#[test]
fn flapping_store_starts_a_new_episode() {
    let _s = fail::FailScenario::setup();
    let cfg = Config {
        raft_client_initial_reconnect_backoff: ReadableDuration::secs(2),
        raft_client_max_backoff: ReadableDuration::secs(2),
        raft_client_not_found_max_backoff: ReadableDuration::secs(8),
        ..fast_cfg()
    };
    let initial = Duration::from_secs(2);
    let mut c = Cluster::new(NotFoundShape::Header, &[1], &[1, 3], 4, cfg);
    c.start_traffic(TICK);
    let client = c.store(1).client.clone();
    wait_until(T, "first episode", || client.in_not_found_episode(3));
    assert_eq!(client.not_found_episode(3), Some((1, initial * 2)));
    let warns = |c: &Cluster| c.store(1).log.count(Level::Warning, "not found", Some(3));
    assert_eq!(warns(&c), 1);
    // Found: store 3 comes up and talks to store 1, which ends the wait.
    c.start_store(3, "127.0.0.1:0", true);
    wait_until(T, "store 3 reached", || fed_from(&c, 3, 1) > 0);
    assert!(!client.in_not_found_episode(3));
    // Not found again: removed and forgotten.
    c.stop_store(3);
    c.pd.bury(3);
    assert!(c.pd.remove_tombstone(3));
    wait_until(T, "second episode", || client.in_not_found_episode(3));
    assert_eq!(
        client.not_found_episode(3),
        Some((1, initial * 2)),
        "the backoff starts over"
    );
    assert_eq!(warns(&c), 2, "the new episode warns at once");
    assert!(!client.is_tombstone(3));
    c.stop_traffic();
    c.assert_balanced();
}
