//! The seed's scenario end to end: a store is decommissioned, buried and
//! forgotten by PD while its peers keep sending it heartbeats.

use std::time::{Duration, Instant};

use std::sync::Arc;

use security::SecurityManager;
use test_pd::{NotFoundShape, Server as PdServer};
use tikv::server::Config;
use tikv_util::config::ReadableDuration;

use crate::cluster::Cluster;
use crate::util::*;

const T: Duration = Duration::from_secs(20);
const TICK: Duration = Duration::from_millis(20);
const SHAPES: [NotFoundShape; 2] = [NotFoundShape::GrpcStatus, NotFoundShape::Header];

/// Messages store `to` fed that came from store `from`.
pub fn fed_from(c: &Cluster, to: u64, from: u64) -> usize {
    c.store(to).node.ext.with(|r| {
        r.fed
            .iter()
            .filter(|m| m.get_from_peer().get_store_id() == from)
            .count()
    })
}

/// Lets the traffic run for `d` (an observation window, not a wait for
/// something to happen).
pub fn observe_for(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::thread::park_timeout(end - Instant::now());
    }
}

/// Stores 1, 2, 3 with 10 regions on all three, traffic flowing to store 3.
fn cluster_with_traffic(shape: NotFoundShape, cfg: Config) -> Cluster {
    cluster_with_traffic_sec(shape, cfg, SecurityManager::plaintext())
}

/// As [`cluster_with_traffic`], PD and every store on `security`.
fn cluster_with_traffic_sec(
    shape: NotFoundShape,
    cfg: Config,
    security: Arc<SecurityManager>,
) -> Cluster {
    let pd = PdServer::start_with_security(&["127.0.0.1:0".to_owned()], shape, security.clone())
        .unwrap();
    let mut c = Cluster::with_security(pd, &[1, 2, 3], &[1, 2, 3], 10, cfg, security);
    c.start_traffic(TICK);
    wait_until(T, "store 3 hears from stores 1 and 2", || {
        fed_from(&c, 3, 1) > 0 && fed_from(&c, 3, 2) > 0
    });
    c
}

/// Offline -> Tombstone -> remove-tombstone, the verdict taken while PD still
/// knows the Tombstone: after it, no PD call and no connection attempt for
/// store 3, however long the peers keep sending.
#[test]
fn decommissioned_store_stops_all_reconnects() {
    decommission(SecurityManager::plaintext());
}

/// The same with mutual TLS on PD and every peer connection, and
/// `cert-allowed-cn` on every server.
#[test]
fn decommissioned_store_stops_all_reconnects_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = security::test_certs::Ca::new("lab-ca").write(dir.path(), "tikv", "tikv");
    cfg.cert_allowed_cn.insert("tikv".to_owned());
    decommission(Arc::new(SecurityManager::new(&cfg).unwrap()));
}

fn decommission(security: Arc<SecurityManager>) {
    for shape in SHAPES {
        let _s = fail::FailScenario::setup();
        let mut c = cluster_with_traffic_sec(shape, fast_cfg(), security.clone());
        c.pd.set_offline(3);
        let before = c.store(3).node.ext.fed_count();
        wait_until(T, "an Offline store still gets traffic", || {
            c.store(3).node.ext.fed_count() > before
        });
        c.stop_store(3);
        c.pd.bury(3);
        wait_until(T, "stores 1 and 2 reach the tombstone verdict", || {
            c.store(1).client.is_tombstone(3) && c.store(2).client.is_tombstone(3)
        });
        assert!(c.pd.remove_tombstone(3));
        let calls = c.pd.get_store_count(3);
        let attempts: Vec<u64> = [1, 2]
            .iter()
            .map(|s| c.store(*s).client.connection_attempts(3))
            .collect();
        let refused: Vec<u64> = [1, 2]
            .iter()
            .map(|s| c.store(*s).client.stats().refused)
            .collect();
        observe_for(Duration::from_secs(1));
        for (i, s) in [1u64, 2].iter().enumerate() {
            let client = &c.store(*s).client;
            assert!(client.stats().refused > refused[i], "sends kept coming");
            assert_eq!(client.connection_attempts(3), attempts[i], "{:?}", shape);
            assert!(!client.is_tombstone(1) && !client.is_tombstone(2));
        }
        assert_eq!(c.pd.get_store_count(3), calls, "{:?}: no PD call", shape);
        // 1 and 2 keep talking to each other.
        let n = fed_from(&c, 2, 1);
        wait_until(T, "1 -> 2 traffic", || fed_from(&c, 2, 1) > n);
        // Per store: one connection warning, one tombstone error at most.
        quiet_and_balanced(c, shape);
    }
}

/// What an operator sees about store 3 over the whole run: at most two
/// warn/error lines per peer store (the seed's symptom was an unbounded
/// loop), no PD client reconnect; then every node's accounting balances.
fn quiet_and_balanced(mut c: Cluster, shape: NotFoundShape) {
    let lines = c.warn_lines_about(3);
    assert!(
        lines <= 4,
        "{:?}: {} warn/error lines about store 3",
        shape,
        lines
    );
    assert_eq!(c.pd_reconnects(), 0, "{:?}: PD client reconnects", shape);
    c.stop_traffic();
    c.assert_balanced();
}

/// PD forgot store 3 before its peers asked: each PD shape gives a
/// not-found episode (never a tombstone), whose PD calls and warnings follow
/// the doubling schedule.
#[test]
fn forgotten_store_is_retried_on_the_not_found_schedule() {
    for shape in SHAPES {
        let _s = fail::FailScenario::setup();
        let mut c = cluster_with_traffic(shape, fast_cfg()); // not-found: 50ms doubling to 400ms
        c.stop_store(3);
        c.pd.bury(3);
        assert!(c.pd.remove_tombstone(3));
        wait_until(T, "not-found episodes on 1 and 2", || {
            c.store(1).client.in_not_found_episode(3) && c.store(2).client.in_not_found_episode(3)
        });
        let calls = c.pd.get_store_count(3);
        let start = Instant::now();
        observe_for(Duration::from_millis(2000));
        let elapsed = start.elapsed();
        // Per store at most 4 + elapsed/400ms attempts (50, 100, 200, 400, ...).
        let bound = 2 * (4 + elapsed.as_millis() as u64 / 400 + 1);
        let made = c.pd.get_store_count(3) - calls;
        assert!(
            made <= bound,
            "{:?}: {} GetStore calls in {:?}",
            shape,
            made,
            elapsed
        );
        for s in [1, 2] {
            let client = &c.store(s).client;
            assert!(
                !client.is_tombstone(3),
                "{:?}: not-found is no tombstone",
                shape
            );
            let (attempts, backoff) = client.not_found_episode(3).unwrap();
            assert!(attempts >= 3, "{:?}: it kept retrying", shape);
            assert_eq!(backoff, Duration::from_millis(400), "capped");
            assert!(c.store(s).router.maybe_tombstone_count(3) >= 1);
        }
        // One connection warning and one not-found warning per store.
        quiet_and_balanced(c, shape);
    }
}

/// PD forgets store 3 while its peers still stream to it: nothing changes
/// while the streams are up (no resolution), and the verdict comes when the
/// stream breaks.
#[test]
fn forgotten_while_streaming_verdict_comes_when_the_stream_breaks() {
    for shape in SHAPES {
        let _s = fail::FailScenario::setup();
        let mut c = cluster_with_traffic(shape, fast_cfg());
        c.pd.bury(3);
        assert!(c.pd.remove_tombstone(3));
        let n = c.store(3).node.ext.fed_count();
        wait_until(T, "store 3 still gets traffic", || {
            c.store(3).node.ext.fed_count() > n + 20
        });
        for s in [1, 2] {
            assert!(!c.store(s).client.in_not_found_episode(3));
            assert!(!c.store(s).client.is_tombstone(3));
        }
        c.stop_store(3);
        wait_until(T, "episodes once the streams break", || {
            c.store(1).client.in_not_found_episode(3) && c.store(2).client.in_not_found_episode(3)
        });
        assert!(!c.store(1).client.is_tombstone(3));
        c.stop_traffic();
        c.assert_balanced();
    }
}

/// `grpc-raft-conn-num = 4`, 1000 regions with a peer on a store PD never
/// knew: one PD call per backoff step for the store, not one per
/// connection, and every connection follows the one schedule.
#[test]
fn many_regions_many_connections_one_pd_call_per_step() {
    let _s = fail::FailScenario::setup();
    let cfg = Config {
        grpc_raft_conn_num: 4,
        raft_client_initial_reconnect_backoff: ReadableDuration::millis(100),
        raft_client_max_backoff: ReadableDuration::millis(200),
        raft_client_not_found_max_backoff: ReadableDuration::millis(400),
        // Covers connections that wake a little late; below the 100ms step.
        store_not_found_cache_ttl: ReadableDuration::millis(50),
        ..fast_cfg()
    };
    let mut c = Cluster::new(NotFoundShape::Header, &[1], &[1, 9], 1000, cfg);
    c.start_traffic(Duration::from_millis(50));
    let client = c.store(1).client.clone();
    wait_until(T, "4 connections to store 9", || {
        client.connection_count() == 4
    });
    wait_until(T, "5 backoff steps", || {
        client.not_found_episode(9).is_some_and(|(a, _)| a >= 5)
    });
    let before = client.not_found_episode(9).unwrap().0;
    let calls = c.pd.get_store_count(9);
    let after = client.not_found_episode(9).unwrap().0;
    assert!(
        calls >= before && calls <= after + 1,
        "{} PD calls for {}..{} steps",
        calls,
        before,
        after
    );
    assert_eq!(
        c.warn_lines_about(9),
        1,
        "one not-found warning for 4 connections"
    );
    c.stop_traffic();
    c.assert_balanced();
}
