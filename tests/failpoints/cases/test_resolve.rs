//! Failpoints of store resolution: `transport_on_resolve`,
//! `mock_store_refresh_interval_secs`, `resolve_delay_get_store`.

use std::time::Duration;

use test_pd::Server as PdServer;
use tikv::server::resolve::{resolve_blocking, Error, ResolverConfig};
use tikv::server::FakeExtension;
use tikv_util::logger::LogCapture;

use crate::util::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn transport_on_resolve_fails_only_the_chosen_store() {
    for kind in RECEIVERS {
        transport_on_resolve_fails_only_the_chosen_store_with(kind);
    }
}

fn transport_on_resolve_fails_only_the_chosen_store_with(kind: Receiver) {
    let _s = fail::FailScenario::setup();
    let pd = PdServer::single();
    let node = Node::start(kind, 7, "127.0.0.1:0");
    pd.add_store(7, &node.addr());
    pd.add_store(8, "127.0.0.1:20168");
    let (_w, r) = resolver(&pd, FakeExtension, ResolverConfig::default());
    fail::cfg("transport_on_resolve", "return(7)").unwrap();
    assert!(matches!(resolve_blocking(&r, 7, T), Err(Error::Other(_))));
    assert_eq!(resolve_blocking(&r, 8, T).unwrap(), "127.0.0.1:20168");
    assert_eq!(pd.get_store_count(7), 0, "failed before asking PD");

    // The raft client treats it as retryable: no tombstone, no episode,
    // and messages flow once the failure is gone.
    let (_w2, mut c, _) = raft_client(&pd, 1, fast_cfg(), &LogCapture::new());
    c.send(msg(1, 1, 7)).unwrap();
    c.flush();
    wait_until(T, "the failure reported", || {
        c.stats().reported_unreachable == 1
    });
    assert!(!c.is_tombstone(7));
    assert!(c.not_found_episode(7).is_none());
    fail::remove("transport_on_resolve");
    wait_until(T, "messages flow", || {
        let _ = c.send(msg(2, 1, 7));
        c.flush();
        node.ext.fed_count() > 0
    });
    assert_balanced(&c);
}

#[test]
fn refresh_interval_failpoint_picks_up_a_new_address() {
    let _s = fail::FailScenario::setup();
    let pd = PdServer::single();
    pd.add_store(1, "127.0.0.1:20161");
    let (_w, r) = resolver(&pd, FakeExtension, ResolverConfig::default());
    assert_eq!(resolve_blocking(&r, 1, T).unwrap(), "127.0.0.1:20161");
    pd.set_store_address(1, "127.0.0.1:20171");
    // Default refresh (60s): the cached address is served.
    assert_eq!(resolve_blocking(&r, 1, T).unwrap(), "127.0.0.1:20161");
    assert_eq!(pd.get_store_count(1), 1);
    fail::cfg("mock_store_refresh_interval_secs", "return(0)").unwrap();
    assert_eq!(resolve_blocking(&r, 1, T).unwrap(), "127.0.0.1:20171");
    assert_eq!(pd.get_store_count(1), 2);
}

#[test]
fn single_flight_holds_while_pd_is_slow() {
    let _s = fail::FailScenario::setup();
    let pd = PdServer::single();
    let no_cache = ResolverConfig {
        not_found_ttl: Duration::ZERO,
        refresh_interval: Duration::ZERO,
    };
    let (_w, r) = resolver(&pd, FakeExtension, no_cache);
    fail::cfg("resolve_delay_get_store", "return(300)").unwrap();
    assert_eq!(resolve_concurrently_not_found(&r, 6365, 16), 16);
    assert_eq!(pd.get_store_count(6365), 1);
}

/// After the tombstone verdict a resolution answers `StoreTombstone` even
/// while the address PD gave before is still within its refresh interval.
#[test]
fn tombstone_verdict_wins_over_a_cached_address() {
    let _s = fail::FailScenario::setup();
    let pd = PdServer::single();
    pd.add_store(3, "127.0.0.1:20163");
    let (_w, r) = resolver(&pd, FakeExtension, ResolverConfig::default());
    // Every resolution asks PD while the refresh interval is 0.
    fail::cfg("mock_store_refresh_interval_secs", "return(0)").unwrap();
    assert_eq!(resolve_blocking(&r, 3, T).unwrap(), "127.0.0.1:20163");
    pd.bury(3);
    assert!(matches!(
        resolve_blocking(&r, 3, T),
        Err(Error::StoreTombstone(3))
    ));
    // Back to 60s: the address PD gave a moment ago would be fresh again.
    fail::remove("mock_store_refresh_interval_secs");
    let calls = pd.get_store_count(3);
    for _ in 0..3 {
        assert!(matches!(
            resolve_blocking(&r, 3, T),
            Err(Error::StoreTombstone(3))
        ));
    }
    assert_eq!(pd.get_store_count(3), calls, "no PD call after the verdict");
}
