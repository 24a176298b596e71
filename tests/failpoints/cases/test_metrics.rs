//! Every metric the README names, asserted with a value only the behaviour
//! gives: deltas around one walk (healthy store, unknown store, buried
//! store, a failing PD), each against an independent count (test_pd's,
//! the receiver's, the client's own accounting). The failpoint suite runs
//! one test at a time (each holds a `FailScenario`), so nothing else moves
//! the process-wide registry meanwhile.

use std::time::Duration;

use grpcio::RpcStatusCode;
use pd_client::metrics::{
    PD_RECONNECT_COUNTER_VEC, PD_REQUEST_FAILURE_COUNTER_VEC, PD_REQUEST_HISTOGRAM_VEC,
};
use pd_client::PdClient;
use test_pd::{Fault, Method, Server as PdServer};
use tikv::server::metrics::*;
use tikv_util::logger::LogCapture;

use crate::util::*;

const T: Duration = Duration::from_secs(20);
use tikv::server::metrics::REPORT_REASONS as REASONS;

fn resolved(t: &str) -> u64 {
    RESOLVE_STORE_COUNTER.with_label_values(&[t]).get()
}
fn resolved_all() -> u64 {
    ["success", "failed", "tombstone", "not_found"]
        .iter()
        .map(|t| resolved(t))
        .sum()
}
/// A counter family's total over every series whose `label` is `value`
/// (whatever their `store_id`).
fn total(family: &str, label: &str, value: &str) -> u64 {
    prometheus::gather()
        .iter()
        .filter(|f| f.get_name() == family)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.get_name() == label && l.get_value() == value)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}
fn verdicts(t: &str) -> u64 {
    total("tikv_server_raft_client_resolve_total", "verdict", t)
}
fn verdicts_of(t: &str, store: u64) -> u64 {
    RAFT_CLIENT_RESOLVE_COUNTER
        .with_label_values(&[t, &store.to_string()])
        .get()
}
fn conns(t: &str) -> u64 {
    total("tikv_server_raft_client_connection_total", "type", t)
}
fn conns_of(t: &str, store: u64) -> u64 {
    RAFT_CLIENT_CONNECTION_COUNTER
        .with_label_values(&[t, &store.to_string()])
        .get()
}
fn gauge_of(g: &prometheus::IntGaugeVec, store: u64) -> Option<i64> {
    // Read without creating the series: a gauge this test expects gone
    // must not be brought back by looking at it.
    let name = prometheus::core::Collector::desc(g)[0].fq_name.clone();
    prometheus::gather()
        .iter()
        .filter(|f| f.get_name() == name)
        .flat_map(|f| f.get_metric())
        .find(|m| {
            m.get_label()
                .iter()
                .any(|l| l.get_name() == "store_id" && l.get_value() == store.to_string())
        })
        .map(|m| m.get_gauge().get_value() as i64)
}
fn flushes(t: &str) -> u64 {
    RAFT_MESSAGE_FLUSH_COUNTER.with_label_values(&[t]).get()
}
fn reports(store: u64) -> u64 {
    REASONS
        .iter()
        .map(|r| {
            REPORT_FAILURE_MSG_COUNTER
                .with_label_values(&[r, &store.to_string()])
                .get()
        })
        .sum()
}
fn pd_failures(kind: &str) -> u64 {
    PD_REQUEST_FAILURE_COUNTER_VEC
        .with_label_values(&["get_store", kind])
        .get()
}

#[test]
fn every_readme_metric_follows_the_walk() {
    let _s = fail::FailScenario::setup();
    let pd = PdServer::single();
    let mut node = Node::start(Receiver::Ours, 2, "127.0.0.1:0");
    pd.add_store(2, &node.addr());
    let (_w, mut c, _) = raft_client(&pd, 1, fast_cfg(), &LogCapture::new());
    let pd_calls0 = RESOLVE_PD_CALL_COUNTER.get();
    let hist0 = ADDRESS_RESOLVE_HISTOGRAM.get_sample_count();
    let resolved0 = resolved_all();
    let (success0, connect0, connected0) =
        (resolved("success"), conns("connect"), conns("connected"));
    let connect2_0 = conns_of("connect", 2);
    let verdict_ok0 = verdicts("success");
    let (flush0, batch0) = (flushes("flush"), flushes("batch"));
    let recv0 = MESSAGE_RECV_BY_STORE.with_label_values(&["1"]).get();
    let pd_hist0 = PD_REQUEST_HISTOGRAM_VEC
        .with_label_values(&["get_store"])
        .get_sample_count();
    let get_store0 = pd.method_count(Method::GetStore);
    // Clients earlier tests left running keep their tasks: a delta.
    let tasks0 = RAFT_CLIENT_CONNECTIONS.get();
    let (reports2, reports9) = (reports(2), reports(9));

    // 1. A healthy store.
    for i in 0..10 {
        c.send(msg(i, 1, 2)).unwrap();
    }
    c.flush();
    wait_until(T, "10 messages fed", || node.ext.fed_count() == 10);
    wait_until(T, "every batch written counted", || {
        flushes("batch") - batch0 == node.batches()
    });
    assert!(flushes("flush") > flush0, "flush counted");
    assert!(resolved("success") > success0);
    assert!(verdicts("success") > verdict_ok0);
    assert_eq!(conns("connect") - connect0, c.connection_attempts(2));
    assert_eq!(
        conns_of("connect", 2) - connect2_0,
        c.connection_attempts(2),
        "connection attempts counted under the store they were for"
    );
    assert_eq!(conns("connected") - connected0, 1);
    assert_eq!(
        MESSAGE_RECV_BY_STORE.with_label_values(&["1"]).get() - recv0,
        10,
        "counted under the sender's store id"
    );
    assert_eq!(
        RAFT_CLIENT_CONNECTIONS.get() - tasks0,
        1,
        "one live connection task"
    );

    // 2. A store PD does not know: a not-found episode.
    let (nf_gauge0, nf_verdict0, nf_resolved0) = (
        RAFT_CLIENT_NOT_FOUND_STORES.get(),
        verdicts("not_found"),
        resolved("not_found"),
    );
    let nf_failures0 = pd_failures("store_not_found");
    c.send(msg(1, 1, 9)).unwrap();
    c.flush();
    wait_until(T, "store 9 in an episode, its message reported", || {
        c.not_found_episode(9).is_some() && reports(9) - reports9 == 1
    });
    assert_eq!(RAFT_CLIENT_NOT_FOUND_STORES.get() - nf_gauge0, 1);
    let since = gauge_of(&RAFT_CLIENT_NOT_FOUND_SINCE, 9).expect("store 9's episode start");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        since <= now && since > now - 20,
        "the episode began during this test: {} vs now {}",
        since,
        now
    );
    assert_eq!(
        gauge_of(&RAFT_CLIENT_STALE_REGIONS, 9),
        Some(1),
        "region 1's message to store 9 reported: one stale region"
    );
    assert!(verdicts_of("not_found", 9) >= 1, "labelled with store 9");
    wait_until(T, "the client saw every not-found answer", || {
        verdicts("not_found") - nf_verdict0 == resolved("not_found") - nf_resolved0
    });
    assert!(verdicts("not_found") > nf_verdict0);
    assert_eq!(
        pd_failures("store_not_found") - nf_failures0,
        pd.get_store_count(9),
        "one not-found failure per GetStore answered for store 9"
    );

    // 3. PD buries store 2 and its stream breaks: the tombstone verdict.
    let (t_gauge0, t_verdict0, t_resolved0) = (
        RAFT_CLIENT_TOMBSTONE_STORES.get(),
        verdicts("tombstone"),
        resolved("tombstone"),
    );
    let (t_failures0, failed0) = (pd_failures("store_tombstone"), conns("failed"));
    let t2_0 = verdicts_of("tombstone", 2);
    pd.bury(2);
    let buried_calls = pd.get_store_count(2);
    node.stop();
    let mut region = 100;
    while !c.is_tombstone(2) {
        region += 1;
        let _ = c.send(msg(region, 1, 2));
        c.flush();
        std::thread::park_timeout(Duration::from_millis(10));
        assert!(region < 3000, "no tombstone verdict");
    }
    // A send after the verdict is refused, and its region kept as stale.
    assert!(c.send(msg(7777, 1, 2)).is_err());
    c.flush();
    let s = assert_balanced(&c);
    assert_eq!(RAFT_CLIENT_TOMBSTONE_STORES.get() - t_gauge0, 1);
    assert_eq!(
        verdicts("tombstone") - t_verdict0,
        1,
        "one connection, one verdict"
    );
    assert_eq!(
        verdicts_of("tombstone", 2) - t2_0,
        1,
        "the verdict names store 2"
    );
    let view = c.pool_view().stale_regions[&2].clone();
    assert!(
        view.regions
            .iter()
            .any(|r| r.region_id == 7777 && r.messages == 1),
        "the refused send's region kept: {:?}",
        view
    );
    let stale2 = view.regions.len() as i64;
    assert_eq!(gauge_of(&RAFT_CLIENT_STALE_REGIONS, 2), Some(stale2));
    assert!(resolved("tombstone") > t_resolved0);
    assert!(conns("failed") > failed0, "the broken stream counted");
    assert!(conns_of("failed", 2) >= 1, "under store 2");
    assert_eq!(
        pd_failures("store_tombstone") - t_failures0,
        pd.get_store_count(2) - buried_calls
    );
    assert_eq!(
        (reports(2) - reports2) + (reports(9) - reports9),
        s.reported_unreachable,
        "report_failure_msg_total per store adds up to what was reported"
    );
    wait_until(T, "store 2's connection task ended, store 9's runs", || {
        RAFT_CLIENT_CONNECTIONS.get() - tasks0 == 1
    });

    // Resolver and PD client: every resolution timed, every PD call counted.
    assert_eq!(
        ADDRESS_RESOLVE_HISTOGRAM.get_sample_count() - hist0,
        resolved_all() - resolved0
    );
    let get_stores = pd.method_count(Method::GetStore) - get_store0;
    assert_eq!(RESOLVE_PD_CALL_COUNTER.get() - pd_calls0, get_stores);
    assert_eq!(
        PD_REQUEST_HISTOGRAM_VEC
            .with_label_values(&["get_store"])
            .get_sample_count()
            - pd_hist0,
        get_stores
    );

    // 4. PD fails every GetStore with UNAVAILABLE: retried with reconnects,
    // each counted as the client counted it.
    let p = pd_client(&pd);
    let r = |t: &str| PD_RECONNECT_COUNTER_VEC.with_label_values(&[t]).get();
    let (try0, ok0, fail0, grpc0) = (
        r("try_connect"),
        r("success"),
        r("failure"),
        pd_failures("grpc"),
    );
    let stats0 = p.reconnect_stats().attempts();
    pd.set_fault(
        Method::GetStore,
        Fault::Fail(RpcStatusCode::UNAVAILABLE, "leader lost".into()),
    );
    assert!(p.get_store(2).is_err());
    pd.clear_faults();
    let tries = p.reconnect_stats().attempts() - stats0;
    assert!(tries >= 1);
    assert_eq!(r("try_connect") - try0, tries);
    assert_eq!(
        (r("success") - ok0) + (r("failure") - fail0),
        tries,
        "every attempt ended in success or failure"
    );
    assert_eq!(pd_failures("grpc") - grpc0, 1, "one failed request");
    c.stop();
}
