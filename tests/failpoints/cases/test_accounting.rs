//! The counters say who got what, not only that they add up.

use std::time::{Duration, Instant};

use test_pd::Server as PdServer;
use tikv_util::logger::LogCapture;

use crate::util::*;

const T: Duration = Duration::from_secs(20);

/// A write to a confirmed call fails (`raft_client_write_error`): the
/// messages of that write are reported unreachable and never also counted
/// delivered. Every message either reached the peer (delivered) or was
/// reported, and the peer is healthy, so delivered equals what it fed.
#[test]
fn failed_write_on_a_confirmed_call_is_reported_not_delivered() {
    for kind in RECEIVERS {
        let _s = fail::FailScenario::setup();
        let pd = PdServer::single();
        let node = Node::start(kind, 2, "127.0.0.1:0");
        pd.add_store(2, &node.addr());
        let cfg = fast_cfg();
        let window = cfg.raft_client_call_confirm_window.0;
        let (_w, mut c, ext) = raft_client(&pd, 1, cfg, &LogCapture::new());
        for i in 0..5 {
            c.send(msg(i, 1, 2)).unwrap();
        }
        c.flush();
        wait_until(T, "5 messages fed", || node.ext.fed_count() == 5);
        let past_window = Instant::now() + window * 2;
        wait_until(T, "the call confirmed", || {
            Instant::now() >= past_window && c.stats().delivered == 5
        });

        fail::cfg("raft_client_write_error", "1*return").unwrap();
        for i in 500..510 {
            c.send(msg(i, 1, 2)).unwrap();
        }
        c.flush();
        wait_until(T, "the 10 messages fed or reported", || {
            c.stats().balanced() && c.stats().sent == 15
        });
        let s = c.stats();
        let fed: Vec<u64> = node
            .ext
            .with(|r| r.fed.iter().map(|m| m.get_region_id()).collect());
        let reported: Vec<u64> = ext.with(|r| r.unreachable.iter().map(|(reg, _)| *reg).collect());
        assert!(
            !reported.is_empty(),
            "{:?}: the failed write reported",
            kind
        );
        for region in 500..510 {
            let n = fed.iter().filter(|r| **r == region).count()
                + reported.iter().filter(|r| **r == region).count();
            assert_eq!(n, 1, "{:?}: region {} fed or reported once", kind, region);
        }
        assert_eq!(
            s.delivered,
            fed.len() as u64,
            "{:?}: delivered counts what the peer got",
            kind
        );
        assert_eq!(s.reported_unreachable, reported.len() as u64);
    }
}
