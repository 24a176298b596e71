//! The counters say who got what, not only that they add up.

use std::time::{Duration, Instant};

use tikv::server::Config;
use tikv_util::config::ReadableDuration;

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

/// The confirm window runs from a call's first write, not from its opening:
/// the first take waits (`raft_client_before_take_batch`) twice the window
/// on an open call, its batch is then refused UNIMPLEMENTED after the peer
/// read it (upstream-like peer), and still nothing of it was confirmed:
/// all of it is sent again over `Raft`.
#[test]
fn confirm_window_starts_at_the_first_write() {
    let _s = fail::FailScenario::setup();
    let pd = PdServer::single();
    let opts = NodeOptions {
        peer: PeerOptions {
            unimplemented_after_first_batch: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let node = Node::start_with(Receiver::Upstream, 2, "127.0.0.1:0", opts);
    pd.add_store(2, &node.addr());
    let cfg = Config {
        raft_client_call_confirm_window: ReadableDuration::millis(200),
        ..fast_cfg()
    };
    let (_w, mut c, _) = raft_client(&pd, 1, cfg, &LogCapture::new());
    fail::cfg("raft_client_before_take_batch", "1*sleep(400)").unwrap();
    for i in 1..=100 {
        c.send(msg(i, 1, 2)).unwrap();
    }
    c.flush();
    wait_until(T, "100 messages fed over Raft", || {
        node.ext.fed_count() == 100
    });
    let regions: Vec<u64> = node
        .ext
        .with(|r| r.fed.iter().map(|m| m.get_region_id()).collect());
    assert_eq!(regions, (1..=100).collect::<Vec<_>>());
    assert!(node.upstream().unwrap().raft_calls() >= 1);
    let s = assert_balanced(&c);
    assert_eq!((s.delivered, s.reported_unreachable), (100, 0));
}
