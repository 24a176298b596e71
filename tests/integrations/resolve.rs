//! Store address resolution against test_pd, both PD generations.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use grpcio::RpcStatusCode;
use kvproto::metapb;
use test_pd::{Fault, Method, NotFoundShape, Server as PdServer};
use tikv::server::metrics::RESOLVE_STORE_COUNTER;
use tikv::server::resolve::{resolve_blocking, Error, ResolverConfig, StoreAddrResolver};
use tikv::server::{FakeExtension, RecordingExtension};

use super::util::*;

const T: Duration = Duration::from_secs(10);

fn shapes() -> [NotFoundShape; 2] {
    [NotFoundShape::GrpcStatus, NotFoundShape::Header]
}

fn no_ttl() -> ResolverConfig {
    ResolverConfig {
        not_found_ttl: Duration::ZERO,
        refresh_interval: Duration::ZERO,
    }
}

#[test]
fn verdicts_through_a_store_lifecycle() {
    for shape in shapes() {
        let pd = PdServer::new(1, shape);
        pd.add_store(1, "127.0.0.1:20160");
        let ext = RecordingExtension::new();
        let (_w, r) = resolver(&pd, ext.clone(), no_ttl());

        assert_eq!(resolve_blocking(&r, 1, T).unwrap(), "127.0.0.1:20160");
        pd.set_offline(1);
        assert_eq!(
            resolve_blocking(&r, 1, T).unwrap(),
            "127.0.0.1:20160",
            "Offline still resolves"
        );
        pd.bury(1);
        assert!(matches!(
            resolve_blocking(&r, 1, T),
            Err(Error::StoreTombstone(1))
        ));
        assert_eq!(ext.maybe_tombstone_count(1), 0);

        // A removed-and-forgotten store: ambiguous not-found, reported.
        pd.add_store(2, "127.0.0.1:20162");
        assert!(resolve_blocking(&r, 2, T).is_ok());
        pd.bury(2);
        pd.remove_tombstone(2);
        // The resolver learnt nothing about 2 being tombstone (it never saw
        // the Tombstone state), so PD's not-found is what it reports.
        assert!(matches!(
            resolve_blocking(&r, 2, T),
            Err(Error::StoreNotFound(2))
        ));
        assert_eq!(ext.maybe_tombstone_count(2), 1, "{:?}", shape);
    }
}

#[test]
fn tombstone_is_remembered_without_pd_calls() {
    let pd = PdServer::single();
    pd.add_store(1, "127.0.0.1:20160");
    let (_w, r) = resolver(&pd, FakeExtension, no_ttl());
    assert!(resolve_blocking(&r, 1, T).is_ok());
    pd.bury(1);
    let before = RESOLVE_STORE_COUNTER
        .with_label_values(&["tombstone"])
        .get();
    assert!(matches!(
        resolve_blocking(&r, 1, T),
        Err(Error::StoreTombstone(1))
    ));
    let calls = pd.get_store_count(1);
    for _ in 0..5 {
        assert!(matches!(
            resolve_blocking(&r, 1, T),
            Err(Error::StoreTombstone(1))
        ));
    }
    assert_eq!(pd.get_store_count(1), calls, "a tombstone verdict is final");
    assert!(
        RESOLVE_STORE_COUNTER
            .with_label_values(&["tombstone"])
            .get()
            >= before + 6
    );
}

#[test]
fn cached_address_is_not_served_after_tombstone() {
    let pd = PdServer::single();
    pd.add_store(1, "127.0.0.1:20160");
    // Refresh at once so the resolver sees the new state.
    let (_w, r) = resolver(&pd, FakeExtension, no_ttl());
    assert!(resolve_blocking(&r, 1, T).is_ok());
    pd.bury(1);
    assert!(matches!(
        resolve_blocking(&r, 1, T),
        Err(Error::StoreTombstone(1))
    ));
}

#[test]
fn cold_start_not_registered_then_registered() {
    for shape in shapes() {
        let pd = PdServer::new(1, shape);
        let ext = RecordingExtension::new();
        let (_w, r) = resolver(&pd, ext.clone(), no_ttl());
        assert!(matches!(
            resolve_blocking(&r, 3, T),
            Err(Error::StoreNotFound(3))
        ));
        assert_eq!(ext.maybe_tombstone_count(3), 1);
        pd.add_store(3, "127.0.0.1:20163");
        assert_eq!(resolve_blocking(&r, 3, T).unwrap(), "127.0.0.1:20163");
    }
}

#[test]
fn cached_not_found_expires_with_its_ttl() {
    let pd = PdServer::single();
    let cfg = ResolverConfig {
        not_found_ttl: Duration::from_millis(200),
        ..Default::default()
    };
    let (_w, r) = resolver(&pd, FakeExtension, cfg);
    assert!(matches!(
        resolve_blocking(&r, 4, T),
        Err(Error::StoreNotFound(4))
    ));
    assert!(matches!(
        resolve_blocking(&r, 4, T),
        Err(Error::StoreNotFound(4))
    ));
    let first_calls = pd.get_store_count(4);
    pd.add_store(4, "127.0.0.1:20164");
    // Served from cache until the TTL passes, then PD is asked again.
    wait_until(T, "store 4 to resolve after the TTL", || {
        resolve_blocking(&r, 4, T).is_ok()
    });
    assert!(first_calls >= 1);
    assert!(pd.get_store_count(4) > first_calls);
}

#[test]
fn invalidate_forgets_a_cached_not_found() {
    let pd = PdServer::single();
    let cfg = ResolverConfig {
        not_found_ttl: Duration::from_secs(3600),
        ..Default::default()
    };
    let (_w, r) = resolver(&pd, FakeExtension, cfg);
    assert!(matches!(
        resolve_blocking(&r, 5, T),
        Err(Error::StoreNotFound(5))
    ));
    pd.add_store(5, "127.0.0.1:20165");
    assert!(matches!(
        resolve_blocking(&r, 5, T),
        Err(Error::StoreNotFound(5))
    ));
    assert_eq!(pd.get_store_count(5), 1, "the not-found answer is cached");
    r.invalidate(5);
    assert_eq!(resolve_blocking(&r, 5, T).unwrap(), "127.0.0.1:20165");
}

#[test]
fn peer_address_is_preferred() {
    let pd = PdServer::single();
    let mut s = metapb::Store::default();
    s.set_id(1);
    s.set_address("127.0.0.1:20160".into());
    s.set_peer_address("127.0.0.1:20170".into());
    pd.put_store(s);
    let (_w, r) = resolver(&pd, FakeExtension, no_ttl());
    assert_eq!(resolve_blocking(&r, 1, T).unwrap(), "127.0.0.1:20170");
}

#[test]
fn bad_input_is_other() {
    let pd = PdServer::single();
    for (id, addr) in [
        (1u64, ""),
        (2, "127.0.0.1"),
        (3, "127.0.0.1:0"),
        (4, "not an address"),
    ] {
        let mut s = metapb::Store::default();
        s.set_id(id);
        s.set_address(addr.into());
        pd.put_store(s);
    }
    let (_w, r) = resolver(&pd, FakeExtension, no_ttl());
    for id in 1..=4 {
        assert!(
            matches!(resolve_blocking(&r, id, T), Err(Error::Other(_))),
            "store {}",
            id
        );
    }
    // Store id 0 never reaches PD.
    assert!(matches!(resolve_blocking(&r, 0, T), Err(Error::Other(_))));
    assert_eq!(pd.get_store_count(0), 0);
}

#[test]
fn not_found_about_something_else_is_other() {
    let pd = PdServer::single();
    let (_w, r) = resolver(&pd, FakeExtension, no_ttl());
    for (id, msg) in [
        (7u64, "region 7 not found"),
        (8, "leader not found"),
        (9, "invalid store ID 10, not found"),
    ] {
        pd.set_store_fault(
            Method::GetStore,
            id,
            Fault::Fail(RpcStatusCode::UNKNOWN, msg.into()),
        );
        assert!(
            matches!(resolve_blocking(&r, id, T), Err(Error::Other(_))),
            "{}",
            msg
        );
    }
}

#[test]
fn pd_down_then_back() {
    let pd = PdServer::single();
    pd.add_store(1, "127.0.0.1:20160");
    let (_w, r) = resolver(&pd, FakeExtension, no_ttl());
    pd.stop_member(0);
    assert!(matches!(resolve_blocking(&r, 1, T), Err(Error::Other(_))));
    pd.restart_member(0);
    // The channel leaves its reconnect backoff within about a second.
    wait_until(T, "resolution after PD restart", || {
        resolve_blocking(&r, 1, T).ok().as_deref() == Some("127.0.0.1:20160")
    });
}

#[test]
fn leader_change_during_resolution() {
    let pd = PdServer::new(3, NotFoundShape::GrpcStatus);
    pd.add_store(1, "127.0.0.1:20160");
    let (_w, r) = resolver(&pd, FakeExtension, no_ttl());
    assert!(resolve_blocking(&r, 1, T).is_ok());
    // The request reaches the old leader, which answers "not leader"; the
    // client moves to the new leader within the same resolution.
    pd.change_leader(2);
    assert_eq!(resolve_blocking(&r, 1, T).unwrap(), "127.0.0.1:20160");
    assert!(matches!(
        resolve_blocking(&r, 99, T),
        Err(Error::StoreNotFound(99))
    ));
}

#[test]
fn single_flight_for_concurrent_resolves() {
    let pd = PdServer::single();
    // No negative cache: only single flight can merge these.
    let (_w, r) = resolver(&pd, FakeExtension, no_ttl());
    pd.set_store_fault(
        Method::GetStore,
        6365,
        Fault::Delay(Duration::from_millis(200)),
    );
    assert_eq!(resolve_concurrently_not_found(&r, 6365, 16), 16);
    assert_eq!(pd.get_store_count(6365), 1);
}

#[test]
fn negative_cache_merges_sequential_resolves() {
    let pd = PdServer::single();
    let cfg = ResolverConfig {
        not_found_ttl: Duration::from_secs(3600),
        ..Default::default()
    };
    let (_w, r) = resolver(&pd, FakeExtension, cfg);
    for _ in 0..16 {
        assert!(matches!(
            resolve_blocking(&r, 6365, T),
            Err(Error::StoreNotFound(6365))
        ));
    }
    assert_eq!(pd.get_store_count(6365), 1);
}

#[test]
fn no_head_of_line_blocking() {
    let pd = PdServer::single();
    pd.add_store(1, "127.0.0.1:20160");
    // 25 stores whose GetStore never answers, 25 that fail.
    for id in 100..125 {
        pd.set_store_fault(Method::GetStore, id, Fault::Drop);
    }
    for id in 125..150 {
        pd.set_store_fault(
            Method::GetStore,
            id,
            Fault::Fail(RpcStatusCode::INTERNAL, "injected".into()),
        );
    }
    let mut c = pd_client::Config::new(pd.endpoints());
    c.request_timeout = tikv_util::config::ReadableDuration::secs(3600);
    let client =
        Arc::new(pd_client::RpcClient::new(&c, None, tikv_util::logger::discard()).unwrap());
    let w = tikv_util::worker::Worker::new("addr-resolver");
    let r = tikv::server::resolve::new_resolver(client, &w, FakeExtension);

    let stuck_done = Arc::new(AtomicUsize::new(0));
    let failed_done = Arc::new(AtomicUsize::new(0));
    // `resolve` returns at once: issued from a thread of their own, so a
    // resolver that waits on PD fails this test at its deadline instead of
    // hanging it.
    // Releases the stuck calls even when the test fails, so the PD server
    // can shut down.
    struct Release<'a>(&'a PdServer);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.clear_faults();
        }
    }
    let _release = Release(&pd);
    let issued = Arc::new(AtomicUsize::new(0));
    let (r2, n, s, f) = (
        r.clone(),
        issued.clone(),
        stuck_done.clone(),
        failed_done.clone(),
    );
    std::thread::spawn(move || {
        for id in 100..150 {
            let (s, f) = (s.clone(), f.clone());
            r2.resolve(
                id,
                Box::new(move |_| {
                    if id < 125 {
                        s.fetch_add(1, Ordering::SeqCst);
                    } else {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                }),
            )
            .unwrap();
            n.fetch_add(1, Ordering::SeqCst);
        }
    });
    wait_until(T, "resolve() to return for all 50 stores", || {
        issued.load(Ordering::SeqCst) == 50
    });
    wait_until(T, "all 50 GetStore calls to reach PD", || {
        (100..150).all(|id| pd.get_store_count(id) >= 1)
    });
    // The healthy store resolves while 25 resolutions are still stuck.
    assert_eq!(resolve_blocking(&r, 1, T).unwrap(), "127.0.0.1:20160");
    assert_eq!(
        stuck_done.load(Ordering::SeqCst),
        0,
        "stuck resolutions are still pending"
    );
    wait_until(T, "the failing resolutions", || {
        failed_done.load(Ordering::SeqCst) == 25
    });
}
