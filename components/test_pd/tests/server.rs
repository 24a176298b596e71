//! test_pd answers as PD does, checked with the raw generated gRPC client.

use std::sync::Arc;

use grpcio::{ChannelBuilder, Environment, RpcStatusCode};
use kvproto::metapb;
use kvproto::pdpb::*;
use test_pd::{Method, NotFoundShape, Server};

fn raw(ep: &str) -> PdClient {
    PdClient::new(ChannelBuilder::new(Arc::new(Environment::new(1))).connect(ep))
}

fn header(cluster_id: u64) -> RequestHeader {
    let mut h = RequestHeader::default();
    h.set_cluster_id(cluster_id);
    h
}

fn status_code(e: grpcio::Error) -> RpcStatusCode {
    match e {
        grpcio::Error::RpcFailure(s) => s.code(),
        e => panic!("{:?}", e),
    }
}

#[test]
fn members_and_leadership() {
    let pd = Server::new(3, NotFoundShape::Header);
    let eps = pd.endpoints();
    let mut req = GetMembersRequest::default();
    req.set_header(header(0));
    let resp = raw(&eps[1]).get_members(&req).unwrap();
    assert_eq!(resp.get_members().len(), 3);
    assert_eq!(
        resp.get_leader().get_client_urls()[0],
        format!("http://{}", eps[0])
    );
    assert_eq!(resp.get_header().get_cluster_id(), pd.cluster_id());

    // A follower refuses cluster requests with UNAVAILABLE "not leader".
    let mut g = GetStoreRequest::default();
    g.set_header(header(pd.cluster_id()));
    g.set_store_id(1);
    assert_eq!(
        status_code(raw(&eps[1]).get_store(&g).unwrap_err()),
        RpcStatusCode::UNAVAILABLE
    );
    pd.change_leader(1);
    assert_eq!(pd.leader(), 1);
    let resp = raw(&eps[1]).get_store(&g).unwrap();
    assert_eq!(
        resp.get_header().get_error().get_message(),
        "invalid store ID 1, not found"
    );
    assert_eq!(pd.get_store_count(1), 2);
    assert_eq!(pd.method_count(Method::GetMembers), 1);
}

#[test]
fn old_pd_answers_not_found_with_status_unknown() {
    let pd = Server::new(1, NotFoundShape::GrpcStatus);
    let mut g = GetStoreRequest::default();
    g.set_header(header(pd.cluster_id()));
    g.set_store_id(6365);
    match raw(&pd.endpoints()[0]).get_store(&g).unwrap_err() {
        grpcio::Error::RpcFailure(s) => {
            assert_eq!(s.code(), RpcStatusCode::UNKNOWN);
            assert_eq!(s.message(), "invalid store ID 6365, not found");
        }
        e => panic!("{:?}", e),
    }
}

#[test]
fn wrong_cluster_id_is_refused() {
    let pd = Server::single();
    let mut g = GetStoreRequest::default();
    g.set_header(header(pd.cluster_id() + 1));
    g.set_store_id(1);
    let code = status_code(raw(&pd.endpoints()[0]).get_store(&g).unwrap_err());
    assert_eq!(code, RpcStatusCode::FAILED_PRECONDITION);
}

#[test]
fn heartbeat_alloc_and_bootstrap() {
    let pd = Server::single();
    let c = raw(&pd.endpoints()[0]);
    let cid = pd.cluster_id();
    pd.add_store(1, "127.0.0.1:20160");

    let mut hb = StoreHeartbeatRequest::default();
    hb.set_header(header(cid));
    hb.mut_stats().set_store_id(1);
    assert!(!c.store_heartbeat(&hb).unwrap().get_header().has_error());
    pd.bury(1);
    let r = c.store_heartbeat(&hb).unwrap();
    assert_eq!(
        r.get_header().get_error().get_field_type(),
        ErrorType::STORE_TOMBSTONE
    );

    let mut a = AllocIDRequest::default();
    a.set_header(header(cid));
    let x = c.alloc_id(&a).unwrap().get_id();
    let y = c.alloc_id(&a).unwrap().get_id();
    assert!(y > x);

    let mut ib = IsBootstrappedRequest::default();
    ib.set_header(header(cid));
    assert!(c.is_bootstrapped(&ib).unwrap().get_bootstrapped());
    let mut b = BootstrapRequest::default();
    b.set_header(header(cid));
    b.mut_store().set_id(2);
    b.mut_store().set_address("127.0.0.1:20162".into());
    let r = c.bootstrap(&b).unwrap();
    assert_eq!(
        r.get_header().get_error().get_field_type(),
        ErrorType::ALREADY_BOOTSTRAPPED
    );

    pd.set_bootstrapped(false);
    assert!(!c.is_bootstrapped(&ib).unwrap().get_bootstrapped());
    let mut g = GetStoreRequest::default();
    g.set_header(header(cid));
    g.set_store_id(1);
    let r = c.get_store(&g).unwrap();
    assert_eq!(
        r.get_header().get_error().get_field_type(),
        ErrorType::NOT_BOOTSTRAPPED
    );
    // PD hands out ids before bootstrap: the first store needs one.
    let z = c.alloc_id(&a).unwrap();
    assert!(!z.get_header().has_error());
    assert!(z.get_id() > y);
    assert!(!c.bootstrap(&b).unwrap().get_header().has_error());
    assert!(c.is_bootstrapped(&ib).unwrap().get_bootstrapped());
    assert_eq!(pd.get_store(2).unwrap().get_address(), "127.0.0.1:20162");
}

#[test]
fn put_store_rules() {
    let pd = Server::single();
    let c = raw(&pd.endpoints()[0]);
    let mut p = PutStoreRequest::default();
    p.set_header(header(pd.cluster_id()));
    p.mut_store().set_id(3);
    let r = c.put_store(&p).unwrap();
    assert_eq!(
        r.get_header().get_error().get_field_type(),
        ErrorType::UNKNOWN,
        "empty address"
    );
    p.mut_store().set_address("127.0.0.1:20163".into());
    assert!(!c.put_store(&p).unwrap().get_header().has_error());
    pd.bury(3);
    let r = c.put_store(&p).unwrap();
    assert_eq!(
        r.get_header().get_error().get_field_type(),
        ErrorType::STORE_TOMBSTONE
    );
    assert!(!pd.remove_tombstone(99), "unknown store");
    assert!(pd.remove_tombstone(3));
    assert!(pd.get_store(3).is_none());

    let mut all = GetAllStoresRequest::default();
    all.set_header(header(pd.cluster_id()));
    assert_eq!(c.get_all_stores(&all).unwrap().get_stores().len(), 0);
}

#[test]
fn stopped_member_refuses_and_restarts_on_its_port() {
    let pd = Server::single();
    let ep = pd.endpoints()[0].clone();
    pd.stop_member(0);
    let mut req = GetMembersRequest::default();
    req.set_header(header(0));
    assert_eq!(
        status_code(raw(&ep).get_members(&req).unwrap_err()),
        RpcStatusCode::UNAVAILABLE
    );
    pd.restart_member(0);
    assert_eq!(pd.endpoints()[0], ep);
    assert_eq!(raw(&ep).get_members(&req).unwrap().get_members().len(), 1);
}

/// The texts and states of tikv/pd server/grpc_service.go: GetStore has no
/// special case for id 0; PutStore and StoreHeartbeat from a removed store
/// get `checkStore`'s STORE_TOMBSTONE "store is tombstone"; a new store
/// starts Preparing.
#[test]
fn answers_with_pds_texts() {
    let pd = Server::new(1, NotFoundShape::Header);
    let c = raw(&pd.endpoints()[0]);
    let cid = pd.cluster_id();

    let mut g = GetStoreRequest::default();
    g.set_header(header(cid));
    g.set_store_id(0);
    let e = c.get_store(&g).unwrap().take_header().take_error();
    assert_eq!(e.get_field_type(), ErrorType::UNKNOWN);
    assert_eq!(e.get_message(), "invalid store ID 0, not found");

    let mut s = kvproto::metapb::Store::default();
    s.set_id(8);
    s.set_address("127.0.0.1:20168".into());
    let mut put = PutStoreRequest::default();
    put.set_header(header(cid));
    put.set_store(s.clone());
    assert!(!c.put_store(&put).unwrap().get_header().has_error());
    let stored = pd.get_store(8).unwrap();
    assert_eq!(stored.get_state(), kvproto::metapb::StoreState::Up);
    assert_eq!(
        stored.get_node_state(),
        kvproto::metapb::NodeState::Preparing
    );

    pd.bury(8);
    let e = c.put_store(&put).unwrap().take_header().take_error();
    assert_eq!(
        (e.get_field_type(), e.get_message()),
        (ErrorType::STORE_TOMBSTONE, "store is tombstone")
    );
    let mut hb = StoreHeartbeatRequest::default();
    hb.set_header(header(cid));
    hb.mut_stats().set_store_id(8);
    let e = c.store_heartbeat(&hb).unwrap().take_header().take_error();
    assert_eq!(
        (e.get_field_type(), e.get_message()),
        (ErrorType::STORE_TOMBSTONE, "store is tombstone")
    );
    // A re-registration of a removed store does not revive it.
    assert_eq!(
        pd.get_store(8).unwrap().get_state(),
        kvproto::metapb::StoreState::Tombstone
    );
}

/// remove-tombstone forgets Tombstone stores only: Up and Offline stores
/// stay known and keep answering GetStore.
#[test]
fn remove_tombstone_forgets_only_tombstones() {
    let pd = Server::single();
    pd.add_store(1, "127.0.0.1:20161");
    pd.add_store(2, "127.0.0.1:20162");
    pd.add_store(3, "127.0.0.1:20163");
    pd.set_offline(2);
    pd.bury(3);
    assert!(!pd.remove_tombstone(1), "an Up store is not forgotten");
    assert!(!pd.remove_tombstone(2), "an Offline store is not forgotten");
    assert_eq!(pd.remove_all_tombstones(), vec![3]);
    assert_eq!(
        pd.get_store(1).map(|s| s.get_state()),
        Some(metapb::StoreState::Up)
    );
    assert_eq!(
        pd.get_store(2).map(|s| s.get_state()),
        Some(metapb::StoreState::Offline)
    );
    assert!(pd.get_store(3).is_none());
    let c = raw(&pd.endpoints()[0]);
    let mut all = GetAllStoresRequest::default();
    all.set_header(header(pd.cluster_id()));
    let ids: Vec<u64> = c
        .get_all_stores(&all)
        .unwrap()
        .get_stores()
        .iter()
        .map(|s| s.get_id())
        .collect();
    let mut ids = ids;
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
}
