//! PD trouble while a store is being removed: transient errors are never a
//! verdict, and once PD answers, the right verdict follows.

use std::time::Duration;

use grpcio::RpcStatusCode;
use test_pd::{Fault, Method, NotFoundShape, Server as PdServer};

use super::test_removed_store::{fed_from, observe_for};
use crate::cluster::Cluster;
use crate::util::*;

const T: Duration = Duration::from_secs(20);

/// Store 3 stops while PD is in trouble: GetStore failing UNAVAILABLE, the
/// PD client's GetStore timing out (failpoint), every PD member down, then
/// a leader change. None of it is a verdict; when PD answers again store 3
/// gets the verdict PD gives: Tombstone, or not-found once forgotten.
#[test]
fn pd_trouble_during_a_removal_is_never_a_verdict() {
    for forgotten in [false, true] {
        let _s = fail::FailScenario::setup();
        let pd = PdServer::new(3, NotFoundShape::Header);
        let mut c = Cluster::with_pd(pd, &[1, 3], &[1, 3], 4, fast_cfg());
        c.start_traffic(Duration::from_millis(20));
        wait_until(T, "store 3 hears from 1", || fed_from(&c, 3, 1) > 0);
        let client = c.store(1).client.clone();
        let no_verdict = |what: &str| {
            assert!(!client.is_tombstone(3), "{}: tombstone", what);
            assert!(!client.in_not_found_episode(3), "{}: not-found", what);
        };

        c.pd.set_fault(
            Method::GetStore,
            Fault::Fail(RpcStatusCode::UNAVAILABLE, "injected".into()),
        );
        c.stop_store(3);
        c.pd.bury(3);
        if forgotten {
            assert!(c.pd.remove_tombstone(3));
        }
        let calls = c.pd.get_store_count(3);
        wait_until(T, "resolutions fail at PD", || {
            c.pd.get_store_count(3) > calls + 1
        });
        no_verdict("UNAVAILABLE");
        // The troubles pile up and end together: PD never answers in
        // between (a request already in pd_client's retry loop would get
        // through a gap).
        fail::cfg("pd_client_get_store", "return(timeout)").unwrap();
        observe_for(Duration::from_millis(500));
        no_verdict("timeout");

        for m in 0..3 {
            c.pd.stop_member(m);
        }
        observe_for(Duration::from_millis(500));
        no_verdict("PD down");
        // PD comes back with another leader.
        fail::remove("pd_client_get_store");
        c.pd.clear_faults();
        for m in 0..3 {
            c.pd.restart_member(m);
        }
        c.pd.change_leader(1);

        if forgotten {
            wait_until(T, "not-found episode", || client.in_not_found_episode(3));
            assert!(!client.is_tombstone(3));
        } else {
            wait_until(T, "tombstone verdict", || client.is_tombstone(3));
        }
        c.stop_traffic();
        c.assert_balanced();
    }
}
