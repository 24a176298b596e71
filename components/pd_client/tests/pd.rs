//! pd_client against the embedded PD over real gRPC on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grpcio::{Environment, RpcStatusCode};
use kvproto::metapb;
use pd_client::{Config, Error, PdClient, RpcClient};
use test_pd::{Fault, Method, NotFoundShape, Server};
use tikv_util::config::ReadableDuration;

fn cfg(endpoints: Vec<String>) -> Config {
    let mut c = Config::new(endpoints);
    c.retry_interval = ReadableDuration::millis(10);
    c.retry_max_count = 4;
    c.reconnect_interval = ReadableDuration::millis(0);
    c.request_timeout = ReadableDuration::millis(500);
    c
}

fn client(pd: &Server) -> RpcClient {
    RpcClient::new(&cfg(pd.endpoints()), None, tikv_util::logger::discard()).unwrap()
}

/// A loopback port nothing listens on, held for the test: a socket bound
/// but not listening refuses every dial, and no other test's bind on port 0
/// can be given the port meanwhile (a bound-then-dropped listener could be).
struct Dead {
    _sock: socket2::Socket,
    addr: String,
}

fn dead_endpoint() -> Dead {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    sock.bind(&any.into()).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap().to_string();
    Dead { _sock: sock, addr }
}

fn both_shapes() -> [NotFoundShape; 2] {
    [NotFoundShape::GrpcStatus, NotFoundShape::Header]
}

#[test]
fn store_lifecycle_verdicts_in_both_pd_generations() {
    for shape in both_shapes() {
        let pd = Server::new(1, shape);
        pd.add_store(1, "127.0.0.1:20160");
        let c = client(&pd);
        assert_eq!(c.get_cluster_id().unwrap(), pd.cluster_id());

        let s = c.get_store(1).unwrap();
        assert_eq!(s.get_state(), metapb::StoreState::Up);
        assert_eq!(s.get_address(), "127.0.0.1:20160");

        pd.set_offline(1);
        let s = c.get_store(1).unwrap();
        assert_eq!(s.get_state(), metapb::StoreState::Offline);

        pd.bury(1);
        match c.get_store(1) {
            Err(Error::StoreTombstone(msg)) => assert!(msg.contains("Tombstone"), "{}", msg),
            other => panic!("{:?}: {:?}", shape, other),
        }

        assert!(pd.remove_tombstone(1));
        match c.get_store(1) {
            Err(Error::StoreNotFound(1)) => {}
            other => panic!("{:?}: {:?}", shape, other),
        }

        // Never registered.
        assert!(matches!(c.get_store(42), Err(Error::StoreNotFound(42))));
    }
}

#[test]
fn not_found_costs_one_rpc_and_no_reconnect() {
    for shape in both_shapes() {
        let pd = Server::new(3, shape);
        let c = client(&pd);
        let members_before = pd.method_count(Method::GetMembers);
        assert!(matches!(c.get_store(6365), Err(Error::StoreNotFound(6365))));
        assert_eq!(pd.get_store_count(6365), 1, "{:?}", shape);
        assert_eq!(c.reconnect_stats().attempts(), 0, "{:?}", shape);
        assert_eq!(
            pd.method_count(Method::GetMembers),
            members_before,
            "{:?}",
            shape
        );
    }
}

#[test]
fn store_id_zero_is_other() {
    for shape in both_shapes() {
        let pd = Server::new(1, shape);
        let c = client(&pd);
        match c.get_store(0) {
            Err(Error::Other(_)) | Err(Error::Grpc(_)) => {}
            other => panic!("{:?}: {:?}", shape, other),
        }
        assert_eq!(pd.get_store_count(0), 1);
    }
}

#[test]
fn put_store_then_tombstone_refused() {
    let pd = Server::single();
    let c = client(&pd);
    let mut s = metapb::Store::default();
    s.set_id(5);
    s.set_address("127.0.0.1:20165".into());
    c.put_store(s.clone()).unwrap();
    assert_eq!(c.get_store(5).unwrap().get_address(), "127.0.0.1:20165");
    pd.bury(5);
    assert!(matches!(c.put_store(s), Err(Error::StoreTombstone(_))));
    // Empty address is refused by PD.
    let mut bad = metapb::Store::default();
    bad.set_id(6);
    assert!(matches!(c.put_store(bad), Err(Error::Other(_))));
}

fn store(id: u64, addr: &str, peer: &str) -> metapb::Store {
    let mut s = metapb::Store::default();
    s.set_id(id);
    s.set_address(addr.into());
    s.set_peer_address(peer.into());
    s
}

fn refused(r: pd_client::Result<()>, want: &str) {
    match r {
        Err(Error::Other(e)) => assert!(e.to_string().contains(want), "{}", e),
        r => panic!("want {:?}, got {:?}", want, r),
    }
}

/// PutStore refuses an address or peer address another live store holds,
/// with PD's text (tikv/pd `putStoreImpl`); a Tombstone or physically
/// destroyed store holds nothing, an empty peer address conflicts with
/// nothing, and a store may register its own address again.
#[test]
fn put_store_refuses_a_duplicated_address_as_pd() {
    let pd = Server::single();
    let c = client(&pd);
    c.put_store(store(1, "127.0.0.1:20161", "")).unwrap();
    c.put_store(store(2, "127.0.0.1:20162", "127.0.0.1:20262"))
        .unwrap();
    refused(
        c.put_store(store(3, "127.0.0.1:20161", "")),
        "duplicated store address: id:3 address:\"127.0.0.1:20161\", already registered by id:1",
    );
    // A new address equal to another store's peer address.
    refused(
        c.put_store(store(3, "127.0.0.1:20262", "")),
        "duplicated store address: id:3",
    );
    // A new peer address equal to another store's address or peer address.
    refused(
        c.put_store(store(3, "127.0.0.1:20163", "127.0.0.1:20161")),
        "duplicated store peer address: id:3",
    );
    refused(
        c.put_store(store(3, "127.0.0.1:20163", "127.0.0.1:20262")),
        "already registered by id:2",
    );
    assert!(
        pd.get_store(3).is_none(),
        "a refused store is not registered"
    );
    // Empty peer addresses, a store's own address again: accepted.
    c.put_store(store(3, "127.0.0.1:20163", "")).unwrap();
    c.put_store(store(1, "127.0.0.1:20161", "")).unwrap();

    // Offline is not enough; Offline and physically destroyed is.
    pd.remove_store(1, false).unwrap();
    refused(
        c.put_store(store(4, "127.0.0.1:20161", "")),
        "already registered by id:1",
    );
    pd.remove_store(1, true).unwrap();
    c.put_store(store(4, "127.0.0.1:20161", "")).unwrap();
    // Tombstone holds nothing either.
    pd.bury(2);
    c.put_store(store(5, "127.0.0.1:20162", "127.0.0.1:20262"))
        .unwrap();
}

/// PD's `RemoveStore`: Offline, flagged physically destroyed when forced;
/// PD's errors for a removed, destroyed or unknown store.
#[test]
fn remove_store_as_pd() {
    let pd = Server::single();
    pd.add_store(1, "127.0.0.1:1");
    pd.add_store(2, "127.0.0.1:2");
    pd.remove_store(1, false).unwrap();
    let s = pd.get_store(1).unwrap();
    assert_eq!(s.get_state(), metapb::StoreState::Offline);
    assert!(!s.get_physically_destroyed());
    // Again: nothing to do. Then forced: destroyed, still Offline.
    pd.remove_store(1, false).unwrap();
    pd.remove_store(1, true).unwrap();
    let s = pd.get_store(1).unwrap();
    assert_eq!(s.get_state(), metapb::StoreState::Offline);
    assert!(s.get_physically_destroyed());
    pd.remove_store(1, true).unwrap();
    let e = pd.remove_store(1, false).unwrap_err();
    assert!(e.contains("store 1 has been physically destroyed"), "{}", e);
    pd.bury(2);
    let e = pd.remove_store(2, true).unwrap_err();
    assert!(e.contains("store 2 has been removed"), "{}", e);
    let e = pd.remove_store(9, true).unwrap_err();
    assert!(e.contains("store 9 not found"), "{}", e);
}

/// The harness refuses to plant what PD would refuse.
#[test]
#[should_panic(expected = "duplicated store address")]
fn add_store_on_a_live_store_s_address_panics() {
    let pd = Server::single();
    pd.add_store(1, "127.0.0.1:1");
    pd.add_store(2, "127.0.0.1:1");
}

#[test]
fn get_all_stores_honours_exclude_tombstone() {
    let pd = Server::single();
    pd.add_store(1, "127.0.0.1:1");
    pd.add_store(2, "127.0.0.1:2");
    pd.bury(2);
    let c = client(&pd);
    assert_eq!(c.get_all_stores(false).unwrap().len(), 2);
    let live = c.get_all_stores(true).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].get_id(), 1);
}

#[test]
fn empty_or_malformed_address_is_returned_as_is() {
    // pd_client reports what PD said; judging the address is resolve's job.
    let pd = Server::single();
    for (id, addr) in [(1u64, ""), (2, "not an address"), (3, "127.0.0.1:")] {
        let mut s = metapb::Store::default();
        s.set_id(id);
        s.set_address(addr.into());
        pd.put_store(s);
    }
    let c = client(&pd);
    assert_eq!(c.get_store(1).unwrap().get_address(), "");
    assert_eq!(c.get_store(2).unwrap().get_address(), "not an address");
    assert_eq!(c.get_store(3).unwrap().get_address(), "127.0.0.1:");
}

#[test]
fn discovers_leader_when_first_endpoint_is_dead() {
    let pd = Server::new(3, NotFoundShape::Header);
    pd.add_store(1, "127.0.0.1:20160");
    pd.change_leader(2);
    let dead = dead_endpoint();
    let mut eps = vec![dead.addr.clone()];
    eps.extend(pd.endpoints());
    let c = RpcClient::new(&cfg(eps), None, tikv_util::logger::discard()).unwrap();
    assert_eq!(c.leader_addr(), pd.endpoints()[2]);
    assert_eq!(c.get_store(1).unwrap().get_id(), 1);
}

#[test]
fn all_endpoints_dead_is_an_error() {
    let log = tikv_util::logger::LogCapture::new();
    let (a, b) = (dead_endpoint(), dead_endpoint());
    let mut c = cfg(vec![a.addr.clone(), b.addr.clone()]);
    c.retry_log_every = 1;
    let r = RpcClient::new(&c, None, log.logger());
    assert!(r.is_err());
    // Tried again retry-max-count (4) times, as upstream's client does.
    assert_eq!(log.count(slog::Level::Warning, WAITING, None), 4);
}

const WAITING: &str = "PD is not reachable yet, retrying";

/// One line per `retry-log-every` rounds, naming the endpoints and the
/// attempts so far.
#[test]
fn waiting_for_pd_logs_once_per_retry_log_every_rounds() {
    let log = tikv_util::logger::LogCapture::new();
    let a = dead_endpoint();
    let mut c = cfg(vec![a.addr.clone()]);
    c.retry_interval = ReadableDuration::millis(1);
    c.retry_max_count = 25;
    c.retry_log_every = 10;
    assert!(RpcClient::new(&c, None, log.logger()).is_err());
    // Rounds 1, 11 and 21 of 25.
    assert_eq!(log.count(slog::Level::Warning, WAITING, None), 3);
    let attempts: Vec<_> = log
        .records()
        .into_iter()
        .filter(|r| r.msg.contains(WAITING))
        .map(|r| {
            assert_eq!(r.get("endpoints"), Some(a.addr.as_str()));
            r.get("attempts").unwrap().to_owned()
        })
        .collect();
    assert_eq!(attempts, ["1", "11", "21"]);
}

/// The default waits for PD as long as it takes, and a stop ends the wait.
#[test]
fn unlimited_wait_for_pd_ends_on_stop() {
    let a = dead_endpoint();
    let mut c = cfg(vec![a.addr.clone()]);
    c.retry_max_count = Config::default().retry_max_count;
    c.retry_log_every = 1;
    let log = tikv_util::logger::LogCapture::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (logger, st) = (log.logger(), stop.clone());
    let t = std::thread::spawn(move || {
        let sec = Arc::new(security::SecurityManager::default());
        RpcClient::new_with_stop(&c, None, sec, logger, &st).map(|_| ())
    });
    // Well past any finite count a test would use.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while log.count(slog::Level::Warning, WAITING, None) < 30 {
        assert!(std::time::Instant::now() < deadline, "no retries seen");
        assert!(!t.is_finished(), "gave up waiting for PD");
        std::thread::park_timeout(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !t.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting 5 s after the stop"
        );
        std::thread::park_timeout(Duration::from_millis(5));
    }
    let r = t.join().unwrap();
    assert!(matches!(r, Err(Error::Stopped)), "{:?}", r.err());
}

/// PD is down when the client starts and comes back while it retries (a
/// cold start, or a first connection slower than the request timeout).
#[test]
fn startup_waits_for_pd_by_default() {
    let pd = Server::single();
    pd.add_store(1, "127.0.0.1:20160");
    pd.stop_member(0);
    let log = tikv_util::logger::LogCapture::new();
    let mut c = cfg(pd.endpoints());
    // The default: unlimited.
    c.retry_max_count = Config::default().retry_max_count;
    c.retry_log_every = 1;
    let (logger, eps) = (log.logger(), c);
    let t = std::thread::spawn(move || RpcClient::new(&eps, None, logger));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // More rounds than the old default of 10 allowed.
    while log.count(slog::Level::Warning, WAITING, None) < 12 {
        assert!(std::time::Instant::now() < deadline, "no retry seen");
        std::thread::park_timeout(Duration::from_millis(5));
    }
    pd.restart_member(0);
    let c = t.join().unwrap().expect("connected once PD came back");
    assert_eq!(c.get_store(1).unwrap().get_id(), 1);
}

#[test]
fn malformed_endpoints_are_rejected() {
    for eps in [
        vec![],
        vec!["".to_owned()],
        vec!["127.0.0.1".to_owned()],
        vec!["h:0".to_owned()],
    ] {
        let r = RpcClient::new(&cfg(eps.clone()), None, tikv_util::logger::discard());
        assert!(matches!(r, Err(Error::Other(_))), "{:?}", eps);
    }
}

#[test]
fn follows_leader_change_mid_run() {
    let pd = Server::new(3, NotFoundShape::GrpcStatus);
    pd.add_store(1, "127.0.0.1:20160");
    let c = client(&pd);
    assert_eq!(c.leader_addr(), pd.endpoints()[0]);
    assert!(c.get_store(1).is_ok());

    pd.change_leader(1);
    // The old leader answers "not leader" (UNAVAILABLE); the client
    // reconnects to the new leader and the request succeeds.
    assert_eq!(c.get_store(1).unwrap().get_id(), 1);
    assert_eq!(c.leader_addr(), pd.endpoints()[1]);
    assert!(
        c.reconnect_stats()
            .success
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );

    // The old leader goes away entirely; the next change is followed too.
    pd.stop_member(0);
    pd.change_leader(2);
    assert!(matches!(c.get_store(9), Err(Error::StoreNotFound(9))));
    assert_eq!(c.leader_addr(), pd.endpoints()[2]);
}

#[test]
fn pd_down_fails_after_bounded_retries_then_recovers() {
    let pd = Server::single();
    pd.add_store(1, "127.0.0.1:20160");
    let c = client(&pd);
    pd.stop_member(0);
    match c.get_store(1) {
        Err(Error::Grpc(_)) => {}
        other => panic!("{:?}", other),
    }
    // Bounded: at most one reconnect per failed attempt but the last.
    assert!(c.reconnect_stats().attempts() <= 3);
    pd.restart_member(0);
    // The channel leaves its reconnect backoff within about a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.get_store(1).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "PD client did not recover"
        );
    }
}

#[test]
fn transport_failures_are_retried_application_answers_are_not() {
    let pd = Server::single();
    pd.add_store(1, "127.0.0.1:20160");
    let c = client(&pd);
    pd.set_store_fault(
        Method::GetStore,
        1,
        Fault::Fail(RpcStatusCode::UNAVAILABLE, "injected".into()),
    );
    assert!(matches!(c.get_store(1), Err(Error::Grpc(_))));
    assert_eq!(pd.get_store_count(1), 4, "retry_max_count attempts");

    pd.set_store_fault(
        Method::GetStore,
        2,
        Fault::Fail(RpcStatusCode::UNKNOWN, "region 7 not found".into()),
    );
    assert!(matches!(c.get_store(2), Err(Error::Grpc(_))));
    assert_eq!(pd.get_store_count(2), 1, "an answer is not retried");

    pd.set_store_fault(
        Method::GetStore,
        3,
        Fault::Fail(
            RpcStatusCode::UNKNOWN,
            "invalid store ID 4, not found".into(),
        ),
    );
    // Not-found about another store id is not our store's verdict.
    assert!(matches!(c.get_store(3), Err(Error::Grpc(_))));
    assert_eq!(pd.get_store_count(3), 1);
}

#[test]
fn reconnects_are_throttled() {
    let pd = Server::single();
    let mut c = cfg(pd.endpoints());
    c.reconnect_interval = ReadableDuration::secs(3600);
    let client = RpcClient::new(&c, None, tikv_util::logger::discard()).unwrap();
    pd.set_fault(
        Method::GetStore,
        Fault::Fail(RpcStatusCode::UNAVAILABLE, "injected".into()),
    );
    assert!(client.get_store(1).is_err());
    let s = client.reconnect_stats();
    assert_eq!(s.attempts(), 1, "only the first reconnect is tried");
    assert_eq!(s.cancel.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn dropped_request_times_out_as_grpc_error() {
    let pd = Server::single();
    let c = client(&pd);
    pd.set_store_fault(Method::GetStore, 1, Fault::Drop);
    assert!(matches!(c.get_store(1), Err(Error::Grpc(_))));
    pd.clear_faults();
}

#[test]
fn cluster_id_mismatch_between_endpoints_is_refused() {
    let a = Server::single();
    let b = Server::single();
    b.set_cluster_id(a.cluster_id() + 1);
    let mut eps = a.endpoints();
    eps.extend(b.endpoints());
    match RpcClient::new(&cfg(eps), None, tikv_util::logger::discard()) {
        Err(Error::Other(e)) => assert!(e.to_string().contains("cluster_id mismatch"), "{}", e),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn cluster_id_changed_under_the_client_is_an_error() {
    let pd = Server::single();
    pd.add_store(1, "127.0.0.1:20160");
    let c = client(&pd);
    pd.set_cluster_id(pd.cluster_id() + 1);
    // PD refuses a request header with another cluster id: FAILED_PRECONDITION, not retried.
    match c.get_store(1) {
        Err(Error::Grpc(grpcio::Error::RpcFailure(s))) => {
            assert_eq!(s.code(), RpcStatusCode::FAILED_PRECONDITION)
        }
        other => panic!("{:?}", other),
    }
    assert_eq!(pd.get_store_count(1), 1);
}

#[test]
fn not_bootstrapped_is_typed() {
    let pd = Server::single();
    pd.set_bootstrapped(false);
    let c = client(&pd);
    assert!(matches!(
        c.get_store(1),
        Err(Error::ClusterNotBootstrapped(_))
    ));
}

#[test]
fn async_get_store_runs_concurrently() {
    let pd = Server::single();
    pd.add_store(1, "127.0.0.1:20160");
    pd.set_store_fault(Method::GetStore, 2, Fault::Delay(Duration::from_secs(30)));
    let env = Arc::new(Environment::new(1));
    let c = RpcClient::new(
        &cfg(pd.endpoints()),
        Some(env),
        tikv_util::logger::discard(),
    )
    .unwrap();
    // The slow call is in flight while the fast one completes.
    let slow = c.get_store_async(2);
    let fast = futures::executor::block_on(c.get_store_async(1)).unwrap();
    assert_eq!(fast.get_id(), 1);
    drop(slow);
    pd.clear_faults();
}

#[test]
fn startup_asks_each_endpoint_for_members_once() {
    let pd = Server::new(3, NotFoundShape::Header);
    let _c = client(&pd);
    assert_eq!(pd.method_count(Method::GetMembers), 3);
}

#[test]
fn joining_a_cluster_alloc_bootstrap_put_and_heartbeat() {
    let pd = Server::single();
    pd.set_bootstrapped(false);
    let c = client(&pd);
    // Ids before bootstrap, increasing.
    let a = c.alloc_id().unwrap();
    let b = c.alloc_id().unwrap();
    assert!(a > 0 && b > a);
    assert!(!c.is_cluster_bootstrapped().unwrap());
    // Not bootstrapped: PutStore answers NOT_BOOTSTRAPPED.
    let mut store = metapb::Store::default();
    store.set_id(a);
    store.set_address("127.0.0.1:20160".into());
    assert!(matches!(
        c.put_store(store.clone()),
        Err(Error::ClusterNotBootstrapped(_))
    ));
    let mut region = metapb::Region::default();
    region.set_id(b);
    c.bootstrap_cluster(store.clone(), region.clone()).unwrap();
    assert!(c.is_cluster_bootstrapped().unwrap());
    // A second bootstrap (another store won the race) is typed.
    assert!(matches!(
        c.bootstrap_cluster(store.clone(), region),
        Err(Error::ClusterBootstrapped(_))
    ));
    c.put_store(store).unwrap();
    let mut stats = kvproto::pdpb::StoreStats::default();
    stats.set_store_id(a);
    stats.set_region_count(3);
    c.store_heartbeat(stats.clone()).unwrap();
    assert_eq!(pd.last_heartbeat(a).unwrap().get_region_count(), 3);
    // Buried: heartbeat and PutStore say StoreTombstone.
    pd.bury(a);
    assert!(matches!(
        c.store_heartbeat(stats),
        Err(Error::StoreTombstone(_))
    ));
    let mut again = metapb::Store::default();
    again.set_id(a);
    again.set_address("127.0.0.1:20160".into());
    assert!(matches!(c.put_store(again), Err(Error::StoreTombstone(_))));
    // PD down: a transport error after the retries, not a hang.
    pd.stop();
    assert!(c.alloc_id().unwrap_err().is_transport());
}
