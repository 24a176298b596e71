//! Pins the wire bytes of a few messages, computed by hand from the field
//! numbers in pingcap/kvproto, so a wrong field number or type cannot slip in.

use protobuf::Message;

use crate::{eraftpb, metapb, pdpb, raft_serverpb, tikvpb};

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{:02x}", x))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn get_store_request_bytes() {
    let mut req = pdpb::GetStoreRequest::default();
    req.mut_header().set_cluster_id(1);
    req.set_store_id(6365);
    // header (1, len 2: cluster_id (1) = 1), store_id (2) = 6365 = varint dd 31
    assert_eq!(hex(&req.write_to_bytes().unwrap()), "0a 02 08 01 10 dd 31");
}

#[test]
fn tombstone_store_bytes() {
    let mut s = metapb::Store::default();
    s.set_id(6365);
    s.set_address("a:1".to_owned());
    s.set_state(metapb::StoreState::Tombstone);
    s.set_node_state(metapb::NodeState::Removed);
    // id (1), address (2) "a:1", state (3) = 2, node_state (13, tag 0x68) = 3
    let bytes = s.write_to_bytes().unwrap();
    assert_eq!(hex(&bytes), "08 dd 31 12 03 61 3a 31 18 02 68 03");
    let back = metapb::Store::parse_from_bytes(&bytes).unwrap();
    assert_eq!(back, s);
}

#[test]
fn peer_address_field_number() {
    let mut s = metapb::Store::default();
    s.set_peer_address("p".to_owned());
    // peer_address is field 6 (tag 0x32)
    assert_eq!(hex(&s.write_to_bytes().unwrap()), "32 01 70");
}

#[test]
fn response_header_error_bytes() {
    let mut h = pdpb::ResponseHeader::default();
    let mut e = pdpb::Error::default();
    e.set_field_type(pdpb::ErrorType::STORE_TOMBSTONE);
    e.set_message("x".to_owned());
    h.set_error(e);
    // error (2, len 5: type (1) = 3, message (2) "x")
    assert_eq!(hex(&h.write_to_bytes().unwrap()), "12 05 08 03 12 01 78");
}

#[test]
fn raft_message_bytes() {
    let mut m = raft_serverpb::RaftMessage::default();
    m.set_region_id(7);
    m.mut_from_peer().set_id(1);
    m.mut_from_peer().set_store_id(2);
    m.mut_to_peer().set_id(3);
    m.mut_to_peer().set_store_id(4);
    let msg = m.mut_message();
    msg.set_msg_type(eraftpb::MessageType::MsgHeartbeat);
    msg.set_to(3);
    msg.set_from(1);
    msg.set_term(5);
    m.set_is_tombstone(true);
    assert_eq!(
        hex(&m.write_to_bytes().unwrap()),
        "08 07 12 04 08 01 10 02 1a 04 08 03 10 04 22 08 08 08 10 03 18 01 20 05 30 01"
    );
    let mut b = tikvpb::BatchRaftMessage::default();
    let mut one = raft_serverpb::RaftMessage::default();
    one.set_region_id(1);
    b.mut_msgs().push(one);
    assert_eq!(hex(&b.write_to_bytes().unwrap()), "0a 02 08 01");
}

#[test]
fn batch_raft_last_observed_time_is_field_13() {
    let mut b = tikvpb::BatchRaftMessage::default();
    b.set_last_observed_time(1);
    // pingcap/kvproto proto/tikvpb.proto: last_observed_time = 13 (tag 0x68).
    assert_eq!(hex(&b.write_to_bytes().unwrap()), "68 01");
    let mut one = raft_serverpb::RaftMessage::default();
    one.set_region_id(1);
    b.mut_msgs().push(one);
    let bytes = b.write_to_bytes().unwrap();
    assert_eq!(hex(&bytes), "0a 02 08 01 68 01");
    // Bytes as upstream writes them (field 13) decode to our field.
    let back = tikvpb::BatchRaftMessage::parse_from_bytes(&[0x68, 0x96, 0x01]).unwrap();
    assert_eq!(back.get_last_observed_time(), 150);
}

#[test]
fn eraftpb_message_follows_raft_rs() {
    let mut m = eraftpb::Message::default();
    m.set_commit_term(1);
    m.set_priority(2);
    // tikv/raft-rs proto/proto/eraftpb.proto: commit_term = 15 (tag 0x78),
    // priority = 16 (int64, tag 0x80 0x01).
    assert_eq!(hex(&m.write_to_bytes().unwrap()), "78 01 80 01 02");
}

#[test]
fn grpc_method_paths() {
    let pd = include_str!(concat!(env!("OUT_DIR"), "/protos/pdpb_grpc.rs"));
    for m in [
        "GetMembers",
        "GetStore",
        "PutStore",
        "GetAllStores",
        "StoreHeartbeat",
        "AllocID",
    ] {
        assert!(pd.contains(&format!("\"/pdpb.PD/{}\"", m)), "{}", m);
    }
    let tikv = include_str!(concat!(env!("OUT_DIR"), "/protos/tikvpb_grpc.rs"));
    assert!(tikv.contains("\"/tikvpb.Tikv/Raft\""));
    assert!(tikv.contains("\"/tikvpb.Tikv/BatchRaft\""));
}
