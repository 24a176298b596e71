//! Interoperation with upstream TiKV stores: how calls end, the
//! `source_store_id` header, `last_observed_time`, store-not-match after an
//! address is reused, and a peer that fails every call. Each test runs
//! against our service and the upstream-like peer (`upstream_peer`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::SinkExt;
use grpcio::{CallOption, ChannelBuilder, MetadataBuilder, RpcStatus, RpcStatusCode, WriteFlags};
use kvproto::raft_serverpb::RaftMessage;
use kvproto::tikvpb::{BatchRaftMessage, TikvClient};
use slog::Level;
use test_pd::Server as PdServer;
use tikv::server::metrics::{MESSAGE_RECV_BY_STORE, RAFT_MESSAGE_DURATION_VEC};
use tikv::server::{Config, StoreNotMatch};
use tikv_util::config::ReadableDuration;
use tikv_util::logger::LogCapture;

use super::util::*;

const T: Duration = Duration::from_secs(20);

fn raw_client(addr: &str) -> TikvClient {
    TikvClient::new(ChannelBuilder::new(env()).connect(addr))
}

fn with_source(store_id: Option<&str>) -> CallOption {
    let mut md = MetadataBuilder::new();
    if let Some(v) = store_id {
        md.add_str("source_store_id", v).unwrap();
    }
    CallOption::default().headers(md.build())
}

fn status_of(r: grpcio::Result<kvproto::raft_serverpb::Done>) -> RpcStatus {
    match r {
        Err(grpcio::Error::RpcFailure(s)) => s,
        other => panic!("the call must fail with a status, got {:?}", other),
    }
}

/// Writes `batches` on one `BatchRaft` call, closes it, returns its status.
fn batch_call(addr: &str, source: Option<&str>, batches: Vec<Vec<RaftMessage>>) -> RpcStatus {
    let c = raw_client(addr);
    let (mut sink, recv) = c.batch_raft_opt(with_source(source)).unwrap();
    block_on(async {
        for msgs in batches {
            let mut b = BatchRaftMessage::default();
            b.set_msgs(msgs.into());
            if sink.send((b, WriteFlags::default())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
        status_of(recv.await)
    })
}

/// Writes `msgs` on one `Raft` call, closes it, returns its status.
fn raft_call(addr: &str, msgs: Vec<RaftMessage>) -> RpcStatus {
    let c = raw_client(addr);
    let (mut sink, recv) = c.raft_opt(with_source(Some("1"))).unwrap();
    block_on(async {
        for m in msgs {
            if sink.send((m, WriteFlags::default())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
        status_of(recv.await)
    })
}

/// Upstream never answers `Done`: a clean end is 2-UNKNOWN with an empty
/// message, and ours must end calls the same way.
#[test]
fn calls_end_with_unknown_as_upstream() {
    for kind in RECEIVERS {
        let node = Node::start(kind, 2, "127.0.0.1:0");
        let s = batch_call(&node.addr(), Some("1"), vec![vec![msg(1, 1, 2)]]);
        assert_eq!(
            (s.code(), s.message()),
            (RpcStatusCode::UNKNOWN, ""),
            "{:?}",
            kind
        );
        let s = raft_call(&node.addr(), vec![msg(2, 1, 2)]);
        assert_eq!(
            (s.code(), s.message()),
            (RpcStatusCode::UNKNOWN, ""),
            "{:?}",
            kind
        );
        assert_eq!(node.ext.fed_count(), 2);
    }
}

/// A batch mixing messages for this store and another: the prefix before
/// the first stranger is fed, the call fails with upstream's store-not-match
/// text, and nothing after it is fed (not even messages for this store).
#[test]
fn mixed_batch_feeds_the_prefix_and_fails_the_call() {
    let mut texts = Vec::new();
    for kind in RECEIVERS {
        let node = Node::start(kind, 2, "127.0.0.1:0");
        // Message 4 (for this store, after the stranger) must not be fed.
        // Nothing is written after the failing batch: a write racing the
        // peer's status can surface as a reset instead of the status.
        let batch = vec![msg(1, 1, 2), msg(2, 1, 2), msg(3, 1, 5), msg(4, 1, 2)];
        // A source id no other test uses: the counter is process-wide.
        let counted = MESSAGE_RECV_BY_STORE.with_label_values(&["4343"]);
        let counted0 = counted.get();
        let s = batch_call(&node.addr(), Some("4343"), vec![batch]);
        let regions: Vec<u64> = node
            .ext
            .with(|r| r.fed.iter().map(|m| m.get_region_id()).collect());
        assert_eq!(regions, vec![1, 2], "{:?}", kind);
        if kind == Receiver::Ours {
            // Counted once for the batch: what was fed, not the stranger
            // nor what follows it.
            assert_eq!(counted.get() - counted0, 2, "counted under the source");
        }
        assert_eq!(
            StoreNotMatch::from_status(&s),
            Some(StoreNotMatch {
                to_store_id: 5,
                my_store_id: 2
            }),
            "{:?}: {:?}",
            kind,
            s
        );
        // The same on `Raft`.
        let s = raft_call(&node.addr(), vec![msg(6, 1, 2), msg(7, 1, 5)]);
        assert!(StoreNotMatch::from_status(&s).is_some(), "{:?}", s);
        assert_eq!(node.ext.fed_count(), 3);
        texts.push(s.message().to_owned());
    }
    // Our text is upstream's, to the letter.
    assert_eq!(texts[0], texts[1]);
}

#[test]
fn source_store_id_header() {
    // Some upstream builds refuse a call without it.
    let strict = PeerOptions {
        require_source_store_id: true,
        ..Default::default()
    };
    let opts = NodeOptions {
        peer: strict,
        ..Default::default()
    };
    let node = Node::start_with(Receiver::Upstream, 2, "127.0.0.1:0", opts);
    let s = batch_call(&node.addr(), None, vec![vec![msg(1, 1, 2)]]);
    assert_eq!(s.code(), RpcStatusCode::INVALID_ARGUMENT);
    assert_eq!(node.ext.fed_count(), 0);

    // Our raft client sends it on every call, so such a store takes its traffic.
    let pd = PdServer::single();
    pd.add_store(2, &node.addr());
    let before = tikv_util::unix_nanos_now();
    let (_w, mut c, _) = raft_client(&pd, 1, fast_cfg(), &LogCapture::new());
    for i in 0..10 {
        c.send(msg(i, 1, 2)).unwrap();
    }
    c.flush();
    wait_until(T, "10 messages fed", || node.ext.fed_count() == 10);
    let after = tikv_util::unix_nanos_now();
    let peer = node.upstream().unwrap();
    assert_eq!(peer.sources().last(), Some(&Some(1)));
    // Every batch carries the sender's wall clock in field 13.
    let observed = peer.observed_times();
    assert!(!observed.is_empty());
    assert!(
        observed.iter().all(|t| (before..=after).contains(t)),
        "{:?} not within {}..{}",
        observed,
        before,
        after
    );
    assert_balanced(&c);
}

#[test]
fn our_service_reads_source_store_id_and_receive_delay() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let opts = NodeOptions {
        alive: Some(Arc::new(move |store| s2.lock().unwrap().push(store))),
        ..Default::default()
    };
    let node = Node::start_with(Receiver::Ours, 2, "127.0.0.1:0", opts);
    let counter = MESSAGE_RECV_BY_STORE.with_label_values(&["4242"]);
    let delays = RAFT_MESSAGE_DURATION_VEC.with_label_values(&["receive_delay"]);
    let (count0, delays0) = (counter.get(), delays.get_sample_count());

    // A call that carries no message is already evidence of life.
    let s = batch_call(&node.addr(), Some("4242"), vec![]);
    assert_eq!(s.code(), RpcStatusCode::UNKNOWN);
    assert_eq!(*seen.lock().unwrap(), vec![4242]);

    let mut m = msg(1, 4242, 2);
    m.mut_from_peer().set_store_id(4242);
    let s = batch_call(&node.addr(), Some("4242"), vec![vec![m.clone(), m]]);
    assert_eq!((s.code(), s.message()), (RpcStatusCode::UNKNOWN, ""));
    assert_eq!(counter.get() - count0, 2, "counted per source store");
    assert!(
        delays.get_sample_count() > delays0,
        "receive delay observed"
    );

    // A malformed header is refused with a clear status, nothing is fed.
    let fed = node.ext.fed_count();
    let s = batch_call(&node.addr(), Some("store-1"), vec![vec![msg(3, 1, 2)]]);
    assert_eq!(s.code(), RpcStatusCode::INVALID_ARGUMENT);
    assert!(s.message().contains("source_store_id"), "{}", s.message());
    assert_eq!(node.ext.fed_count(), fed);
}

/// What PD says about store 3 when store 7 registers its address: the
/// states in which PD accepts that (tikv/pd `putStoreImpl`).
#[derive(Clone, Copy, Debug)]
enum Pd3 {
    Tombstone,
    Forgotten,
    /// Offline and physically destroyed (`DELETE /pd/api/v1/store/3?force`):
    /// PD still names A for store 3.
    Destroyed,
}

/// Store 3 at address A gets traffic; store 3 stops; store 7 starts on A.
/// Store 7 never feeds a message meant for store 3, store 7's own traffic
/// flows, and store 1 reaches the verdict PD gives, or backs off.
#[test]
fn address_reused_by_another_store() {
    for kind in RECEIVERS {
        for pd3 in [Pd3::Tombstone, Pd3::Forgotten, Pd3::Destroyed] {
            address_reused_by_another_store_with(kind, pd3);
        }
    }
}

fn address_reused_by_another_store_with(kind: Receiver, pd3: Pd3) {
    let pd = PdServer::single();
    let mut node3 = Node::start(kind, 3, "127.0.0.1:0");
    let a = node3.addr();
    pd.add_store(3, &a);
    let log = LogCapture::new();
    let cfg = fast_cfg(); // reconnect backoff 50ms doubling to 200ms
    let (_w, mut c, _) = raft_client(&pd, 1, cfg.clone(), &log);
    let mut region = 0;
    let mut send_both = |c: &mut Client| {
        region += 1;
        let _ = c.send(msg(region, 1, 3));
        let _ = c.send(msg(region, 1, 7));
        c.flush();
    };
    while node3.ext.fed_count() == 0 {
        send_both(&mut c);
        std::thread::park_timeout(Duration::from_millis(20));
    }

    node3.stop();
    match pd3 {
        Pd3::Tombstone => pd.bury(3),
        Pd3::Forgotten => {
            pd.bury(3);
            assert!(pd.remove_tombstone(3));
        }
        Pd3::Destroyed => pd.remove_store(3, true).unwrap(),
    }
    let node7 = Node::start(kind, 7, &a);
    assert_eq!(node7.addr(), a);
    pd.add_store(7, &a);
    let calls_before = pd.get_store_count(3);
    let start = Instant::now();
    let deadline = start + T;
    // Run until the verdict (or, when PD still names A, for 1.5s).
    loop {
        send_both(&mut c);
        let verdict = match pd3 {
            Pd3::Tombstone => c.is_tombstone(3),
            Pd3::Forgotten => c.in_not_found_episode(3),
            Pd3::Destroyed => start.elapsed() >= Duration::from_millis(1500),
        };
        if verdict && node7.ext.fed_count() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}: no verdict",
            kind,
            pd3
        );
        std::thread::park_timeout(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    assert!(
        node7.fed_to_stores().iter().all(|s| *s == 7),
        "{:?} {:?}: store 7 fed a message for another store",
        kind,
        pd3
    );
    assert!(!c.is_tombstone(7));
    match pd3 {
        // The verdict came from the first resolution or two after the stream
        // broke (one more if store 1 resolved before PD buried the store).
        Pd3::Tombstone => assert!(pd.get_store_count(3) - calls_before <= 2),
        Pd3::Forgotten => {}
        Pd3::Destroyed => {
            assert!(!c.is_tombstone(3), "a mismatch is not a tombstone");
            assert!(node7.rejected() >= 1, "store 1 did reach A");
            // One resolution per attempt on the reconnect backoff (50ms
            // doubling to 200ms): at most 3 + elapsed/200ms attempts.
            let bound = 3 + (elapsed.as_millis() / 200) as u64 + 1;
            let calls = pd.get_store_count(3) - calls_before;
            assert!(
                calls <= bound,
                "{:?}: {} GetStore calls for store 3 in {:?}, bound {}",
                kind,
                calls,
                elapsed,
                bound
            );
            assert!(
                node7.rejected() <= bound,
                "{:?}: {} refused calls",
                kind,
                node7.rejected()
            );
        }
    }
    // Throttled: a handful of warnings about store 3, not one per attempt.
    let warns = log.count(Level::Warning, "", Some(3));
    assert!(warns <= 3, "{:?} {:?}: {} warnings", kind, pd3, warns);
    assert_balanced(&c);
}

/// A peer that accepts connections and fails every call must not reset the
/// reconnect backoff: calls, PD calls and warnings follow the schedule.
#[test]
fn peer_failing_every_call_stays_on_the_backoff_schedule() {
    let pd = PdServer::single();
    let opts = NodeOptions {
        peer: PeerOptions {
            fail_every_call: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let node = Node::start_with(Receiver::Upstream, 2, "127.0.0.1:0", opts);
    pd.add_store(2, &node.addr());
    let log = LogCapture::new();
    let cfg = Config {
        raft_client_initial_reconnect_backoff: ReadableDuration::millis(50),
        raft_client_max_backoff: ReadableDuration::millis(400),
        ..fast_cfg()
    };
    let (_w, mut c, _) = raft_client(&pd, 1, cfg, &log);
    let start = Instant::now();
    let mut region = 0;
    while start.elapsed() < Duration::from_secs(2) {
        region += 1;
        let _ = c.send(msg(region, 1, 2));
        c.flush();
        std::thread::park_timeout(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    // 50, 100, 200, 400, 400, ...ms: at most 4 + elapsed/400ms attempts.
    let bound = 4 + (elapsed.as_millis() / 400) as u64 + 1;
    let calls = node.calls();
    assert!(calls >= 2, "it did retry");
    assert!(
        calls <= bound,
        "{} calls in {:?}, bound {}",
        calls,
        elapsed,
        bound
    );
    let pd_calls = pd.get_store_count(2);
    assert!(
        pd_calls <= bound + 1,
        "{} GetStore calls, bound {}",
        pd_calls,
        bound
    );
    assert_eq!(
        log.count(Level::Warning, "connection to store failed", Some(2)),
        1,
        "one warning per log interval"
    );
    assert_eq!(node.ext.fed_count(), 0);
    let s = assert_balanced(&c);
    assert_eq!(
        s.delivered, 0,
        "nothing written to a refused call is delivered"
    );
}

/// Store 3's address A is served by store 7 now and PD names store 3's new
/// address B: after the store-not-match the client asks PD again at once
/// and reaches store 3 at B, without waiting for the address refresh (60s).
#[test]
fn store_not_match_follows_the_new_address_from_pd() {
    for kind in RECEIVERS {
        let pd = PdServer::single();
        let node7 = Node::start(kind, 7, "127.0.0.1:0");
        let a = node7.addr();
        // PD has not heard yet that store 3 moved: it still names A, where
        // store 7 already serves (store 7 can register A only once store 3's
        // record leaves it: PD refuses a duplicated address).
        pd.add_store(3, &a);
        let (_w, mut c, _) = raft_client(&pd, 1, fast_cfg(), &LogCapture::new());
        let mut region = 0;
        while node7.rejected() == 0 {
            region += 1;
            let _ = c.send(msg(region, 1, 3));
            c.flush();
            std::thread::park_timeout(Duration::from_millis(20));
            assert!(
                region < 1000,
                "{:?}: store 7 never saw store 3's call",
                kind
            );
        }
        let node3 = Node::start(kind, 3, "127.0.0.1:0");
        pd.set_store_address(3, &node3.addr());
        pd.add_store(7, &a);
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        while node3.ext.fed_count() == 0 {
            assert!(
                Instant::now() < deadline,
                "{:?}: store 3 not reached at its new address within 10s",
                kind
            );
            region += 1;
            let _ = c.send(msg(region, 1, 3));
            c.flush();
            std::thread::park_timeout(Duration::from_millis(20));
        }
        assert!(node7.fed_to_stores().iter().all(|s| *s == 7));
        assert!(!c.is_tombstone(3));
        assert_balanced(&c);
    }
}

/// The `Raft` fallback carries `source_store_id` too: a store that predates
/// `BatchRaft` and refuses calls without the header takes the traffic, and
/// our service counts it under the sender's id.
#[test]
fn raft_fallback_carries_source_store_id() {
    let pd = PdServer::single();
    let strict_old = PeerOptions {
        no_batch_raft: true,
        require_source_store_id: true,
        ..Default::default()
    };
    let opts = NodeOptions {
        peer: strict_old,
        ..Default::default()
    };
    let up = Node::start_with(Receiver::Upstream, 2, "127.0.0.1:0", opts);
    pd.add_store(2, &up.addr());
    let old_ours = NodeOptions {
        peer: PeerOptions {
            no_batch_raft: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let ours = Node::start_with(Receiver::Ours, 3, "127.0.0.1:0", old_ours);
    pd.add_store(3, &ours.addr());
    // A sender id no other test uses: the counter is process-wide.
    let me = 4711;
    let counter = MESSAGE_RECV_BY_STORE.with_label_values(&["4711"]);
    let before = counter.get();
    let (_w, mut c, _) = raft_client(&pd, me, fast_cfg(), &LogCapture::new());
    for i in 0..10 {
        c.send(msg(i, me, 2)).unwrap();
        c.send(msg(i, me, 3)).unwrap();
    }
    c.flush();
    wait_until(T, "10 messages fed by each", || {
        up.ext.fed_count() == 10 && ours.ext.fed_count() == 10
    });
    let p = up.upstream().unwrap();
    assert!(p.raft_calls() >= 1);
    assert!(
        p.sources().iter().all(|s| *s == Some(me)),
        "{:?}",
        p.sources()
    );
    assert_eq!(counter.get() - before, 10, "counted under the sender's id");
    let s = assert_balanced(&c);
    assert_eq!(s.delivered, 20);
}

/// The receive delay is the receiver's clock minus the batch's
/// `last_observed_time`: a batch stamped 2s ago is observed near 2s.
#[test]
fn receive_delay_is_now_minus_last_observed_time() {
    let node = Node::start(Receiver::Ours, 2, "127.0.0.1:0");
    let delays = RAFT_MESSAGE_DURATION_VEC.with_label_values(&["receive_delay"]);
    let (count0, sum0) = (delays.get_sample_count(), delays.get_sample_sum());
    let c = raw_client(&node.addr());
    let (mut sink, recv) = c.batch_raft_opt(with_source(Some("1"))).unwrap();
    let s = block_on(async {
        let mut b = BatchRaftMessage::default();
        b.set_msgs(vec![msg(1, 1, 2)].into());
        b.set_last_observed_time(tikv_util::unix_nanos_now() - 2_000_000_000);
        sink.send((b, WriteFlags::default())).await.unwrap();
        let _ = sink.close().await;
        status_of(recv.await)
    });
    assert_eq!(s.code(), RpcStatusCode::UNKNOWN);
    assert_eq!(node.ext.fed_count(), 1);
    assert!(delays.get_sample_count() > count0);
    // Other tests in this process add batches of a few milliseconds at most.
    let added = delays.get_sample_sum() - sum0;
    assert!(
        (1.9..10.0).contains(&added),
        "observed {}s for a batch stamped 2s ago",
        added
    );
}

/// A message from a store in a not-found episode ends the wait even when
/// its call carries no `source_store_id` (an older TiKV): each message's
/// `from_peer` is evidence of life, not only the header.
#[test]
fn message_without_source_header_ends_not_found_wait() {
    for kind in RECEIVERS {
        let pd = PdServer::single();
        let (_w1, mut c1, node1) = store_1_waiting_for_store_3(&pd, &LogCapture::new());
        let node3 = Node::start(kind, 3, "127.0.0.1:0");
        pd.add_store(3, &node3.addr());
        // Store 3 talks to store 1 with no header at all.
        let s = batch_call(&node1.addr(), None, vec![vec![msg(2, 3, 1)]]);
        assert_eq!((s.code(), s.message()), (RpcStatusCode::UNKNOWN, ""));
        assert_eq!(node1.ext.fed_count(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut region = 100;
        while node3.ext.fed_count() == 0 {
            assert!(
                Instant::now() < deadline,
                "{:?}: store 1 still waits out its hour",
                kind
            );
            region += 1;
            let _ = c1.send(msg(region, 1, 3));
            c1.flush();
            std::thread::park_timeout(Duration::from_millis(20));
        }
        assert!(c1.not_found_episode(3).is_none());
        assert_balanced(&c1);
    }
}
