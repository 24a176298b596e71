//! Addresses: one store's resolution failing, a store moving to a new
//! port, and a removed store's address taken by a new store.

use std::time::Duration;

use test_pd::NotFoundShape;

use super::test_removed_store::{fed_from, observe_for};
use crate::cluster::Cluster;
use crate::util::*;

const T: Duration = Duration::from_secs(20);

/// `transport_on_resolve` failing store 3's resolution does not disturb
/// traffic between stores 1 and 2, and is never a verdict for store 3.
#[test]
fn failing_resolution_of_one_store_spares_the_others() {
    let _s = fail::FailScenario::setup();
    let mut c = Cluster::new(NotFoundShape::Header, &[1, 2, 3], &[1, 2, 3], 6, fast_cfg());
    c.start_traffic(Duration::from_millis(20));
    wait_until(T, "store 3 hears from 1 and 2", || {
        fed_from(&c, 3, 1) > 0 && fed_from(&c, 3, 2) > 0
    });
    fail::cfg("transport_on_resolve", "return(3)").unwrap();
    c.stop_store(3);
    let calls = c.pd.get_store_count(3);
    let (a, b) = (fed_from(&c, 2, 1), fed_from(&c, 1, 2));
    observe_for(Duration::from_millis(800));
    assert!(fed_from(&c, 2, 1) > a + 10 && fed_from(&c, 1, 2) > b + 10);
    for s in [1, 2] {
        let st = c.store(s);
        assert!(!st.client.is_tombstone(3) && !st.client.in_not_found_episode(3));
        let other = 3 - s;
        assert_eq!(st.router.store_unreachable_count(other), 0);
    }
    assert_eq!(c.pd.get_store_count(3), calls, "failed before asking PD");
    fail::remove("transport_on_resolve");
    c.start_store(3, "127.0.0.1:0", true);
    wait_until(T, "store 3 reached again", || fed_from(&c, 3, 1) > 0);
    c.stop_traffic();
    c.assert_balanced();
}

/// Store 2 restarts on a new port (same id) and PD is told: the others
/// follow, through the failed connection, with and without the refresh
/// interval shortened by `mock_store_refresh_interval_secs`.
#[test]
fn store_moving_to_a_new_port_is_followed() {
    for shortened in [false, true] {
        let _s = fail::FailScenario::setup();
        if shortened {
            fail::cfg("mock_store_refresh_interval_secs", "return(0)").unwrap();
        }
        let mut c = Cluster::new(NotFoundShape::Header, &[1, 2, 3], &[1, 2, 3], 4, fast_cfg());
        c.start_traffic(Duration::from_millis(20));
        wait_until(T, "store 2 hears from 1 and 3", || {
            fed_from(&c, 2, 1) > 0 && fed_from(&c, 2, 3) > 0
        });
        let old = c.store(2).node.addr();
        c.stop_store(2);
        // Port 0 with the old port held: the kernel cannot hand the freed
        // port back, and no port is picked early for another test to take.
        let hold = std::net::TcpListener::bind(&old).ok();
        c.start_store(2, "127.0.0.1:0", true);
        drop(hold);
        assert_ne!(c.store(2).node.addr(), old);
        wait_until(T, "1 and 3 reach store 2 at its new address", || {
            fed_from(&c, 2, 1) > 0 && fed_from(&c, 2, 3) > 0
        });
        for s in [1, 3] {
            assert!(!c.store(s).client.is_tombstone(2));
        }
        c.stop_traffic();
        c.assert_balanced();
    }
}

/// Store 3 is removed and forgotten; store 7 is deployed on its old
/// address. Store 7 never feeds a message meant for store 3, store 1 gets
/// the not-found verdict for 3, and store 7's own traffic flows.
#[test]
fn removed_stores_address_reused_by_a_new_store() {
    let _s = fail::FailScenario::setup();
    let mut c = Cluster::new(NotFoundShape::Header, &[1, 3], &[1, 3, 7], 4, fast_cfg());
    c.start_traffic(Duration::from_millis(20));
    wait_until(T, "store 3 hears from 1", || fed_from(&c, 3, 1) > 0);
    let addr = c.store(3).node.addr();
    c.stop_store(3);
    c.pd.bury(3);
    assert!(c.pd.remove_tombstone(3));
    c.start_store(7, &addr, true);
    assert_eq!(c.store(7).node.addr(), addr);
    wait_until(T, "store 7 hears from 1", || fed_from(&c, 7, 1) > 0);
    wait_until(T, "not-found episode for store 3", || {
        c.store(1).client.in_not_found_episode(3)
    });
    observe_for(Duration::from_millis(300));
    let to_stores = c.store(7).node.fed_to_stores();
    assert!(
        to_stores.iter().all(|s| *s == 7),
        "store 7 fed another store's message"
    );
    assert!(!c.store(1).client.is_tombstone(3));
    c.stop_traffic();
    c.assert_balanced();
}
