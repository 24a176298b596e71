//! Raft messages encoded once, by `send`, and written as raw bytes.
//!
//! The raft client encodes a small `RaftMessage` on the caller's thread,
//! while the message is still in its cache, and queues only the bytes and
//! the two ids a report needs; a large one is queued with its sizes cached
//! (see [`Body`]). The call's sender on the gRPC thread then copies encoded
//! messages into the wire buffer instead of walking each small message's
//! heap (a queue of thousands of messages does not fit any cache, so every
//! field read there was a miss). The size of a queued message is exact and
//! free, and the bytes on the
//! wire are those protobuf would write: a `BatchRaftMessage` is its `msgs`
//! entries (field 1, length-delimited) and `last_observed_time` (field 13,
//! varint), as in pingcap/kvproto `proto/tikvpb.proto`; a `Raft` call writes
//! one `RaftMessage` per write. The tests below decode what we write with
//! the generated types.

use grpcio::{GrpcSlice, Marshaller, Method, MethodType};
use kvproto::raft_serverpb::{Done, RaftMessage};
use protobuf::Message;

/// `BatchRaftMessage.msgs`.
const FIELD_MSGS: u32 = 1;
/// `BatchRaftMessage.last_observed_time`.
const FIELD_LAST_OBSERVED_TIME: u32 = 13;

/// Messages whose encoded size reaches this stay unencoded until the write
/// (see [`Body`]).
pub const ENCODE_BELOW: usize = 1024;

/// A queued message's body.
///
/// A small message is encoded by `send` (its fields are scattered over the
/// heap; the bytes are one copy in cache). A large one is mostly entry or
/// snapshot data that protobuf copies as it is: encoding it at `send` would
/// copy that data twice (into the bytes, then into gRPC's slice), so it is
/// kept as the message with its sizes computed and cached by protobuf
/// (`compute_size`), and written once, straight into the slice, as grpcio's
/// own `pb_ser` does.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// The message, protobuf-encoded.
    Bytes(Vec<u8>),
    /// The message and its encoded size (cached in it by `compute_size`;
    /// never mutated after).
    Message(Box<RaftMessage>, usize),
}

/// One queued `RaftMessage` and what reporting it unreachable needs.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedMessage {
    /// The message's `region_id`.
    pub region_id: u64,
    /// The message's `to_peer.id`.
    pub to_peer_id: u64,
    /// The message.
    pub body: Body,
}

impl EncodedMessage {
    /// Prepares `msg` for the queue: encoded when it is small.
    pub fn encode(msg: RaftMessage) -> EncodedMessage {
        let (region_id, to_peer_id) = (msg.get_region_id(), msg.get_to_peer().get_id());
        let size = msg.compute_size() as usize;
        let body = if size < ENCODE_BELOW {
            // Into a slice of the exact size, as `write_to_bytes` does (a
            // `Vec` stream goes through protobuf's buffer: measurably slower).
            let mut bytes = vec![0; size];
            let mut os = protobuf::CodedOutputStream::bytes(&mut bytes);
            msg.write_to_with_cached_sizes(&mut os)
                .expect("a RaftMessage has no required fields");
            os.check_eof();
            drop(os);
            Body::Bytes(bytes)
        } else {
            Body::Message(Box::new(msg), size)
        };
        EncodedMessage {
            region_id,
            to_peer_id,
            body,
        }
    }

    /// The message's encoded size.
    pub fn len(&self) -> usize {
        match &self.body {
            Body::Bytes(b) => b.len(),
            Body::Message(_, size) => *size,
        }
    }

    /// Whether the message encodes to nothing (a default `RaftMessage`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes this message takes as a `msgs` entry of a batch: tag, length
    /// varint and body.
    pub fn len_in_batch(&self) -> usize {
        let n = self.len();
        tag_len(FIELD_MSGS) + varint_len(n as u64) + n
    }

    /// Writes the message's encoding into `dst`, exactly `len()` bytes.
    fn write_body(&self, dst: &mut [u8]) -> grpcio::Result<()> {
        match &self.body {
            Body::Bytes(b) => {
                dst.copy_from_slice(b);
                Ok(())
            }
            // The cached sizes are the ones `len()` reports: the message
            // writes exactly that many bytes (protobuf's contract, which
            // grpcio's `pb_ser` relies on too); one byte more fails.
            Body::Message(m, _) => m
                .write_to_with_cached_sizes(&mut protobuf::CodedOutputStream::bytes(dst))
                .map_err(|e| codec_error(&format!("cannot encode a raft message: {}", e))),
        }
    }
}

/// A `BatchRaftMessage` of encoded messages.
#[derive(Debug, Default)]
pub struct EncodedBatch {
    /// The batch's messages, in order.
    pub msgs: Vec<EncodedMessage>,
    /// Sender's wall clock at the write, nanoseconds since the Unix epoch.
    pub last_observed_time: u64,
}

impl EncodedBatch {
    /// The batch's encoded size.
    pub fn encoded_len(&self) -> usize {
        let msgs: usize = self.msgs.iter().map(EncodedMessage::len_in_batch).sum();
        let time = if self.last_observed_time == 0 {
            0
        } else {
            tag_len(FIELD_LAST_OBSERVED_TIME) + varint_len(self.last_observed_time)
        };
        msgs + time
    }

    /// Writes the batch into `buf`, which must be exactly
    /// [`encoded_len`](Self::encoded_len) long.
    fn write(&self, buf: &mut [u8]) -> grpcio::Result<()> {
        let mut w = SliceWriter { buf, pos: 0 };
        for m in &self.msgs {
            w.varint(tag(FIELD_MSGS, WIRE_LEN))?;
            w.varint(m.len() as u64)?;
            let dst = w.take(m.len())?;
            m.write_body(dst)?;
        }
        if self.last_observed_time != 0 {
            w.varint(tag(FIELD_LAST_OBSERVED_TIME, WIRE_VARINT))?;
            w.varint(self.last_observed_time)?;
        }
        if w.pos != w.buf.len() {
            return Err(codec_error("batch is shorter than its size"));
        }
        Ok(())
    }
}

const WIRE_VARINT: u64 = 0;
const WIRE_LEN: u64 = 2;

fn tag(field: u32, wire_type: u64) -> u64 {
    (u64::from(field) << 3) | wire_type
}

fn codec_error(what: &str) -> grpcio::Error {
    grpcio::Error::Codec(what.to_owned().into())
}

/// Protobuf's wire primitives into a fixed slice.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl SliceWriter<'_> {
    fn varint(&mut self, mut v: u64) -> grpcio::Result<()> {
        loop {
            let Some(b) = self.buf.get_mut(self.pos) else {
                return Err(codec_error("batch is longer than its size"));
            };
            self.pos += 1;
            if v < 0x80 {
                *b = v as u8;
                return Ok(());
            }
            *b = (v as u8 & 0x7f) | 0x80;
            v >>= 7;
        }
    }

    /// The next `n` bytes, for the caller to fill.
    fn take(&mut self, n: usize) -> grpcio::Result<&mut [u8]> {
        let (start, end) = (self.pos, self.pos + n);
        if end > self.buf.len() {
            return Err(codec_error("batch is longer than its size"));
        }
        self.pos = end;
        Ok(&mut self.buf[start..end])
    }
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn too_large(size: usize) -> grpcio::Error {
    codec_error(&format!("message is too large: {} > {}", size, u32::MAX))
}

/// `size` bytes of `buf` to fill, after checking gRPC's message limit.
fn writable(buf: &mut GrpcSlice, size: usize) -> grpcio::Result<&mut [u8]> {
    if size > u32::MAX as usize {
        return Err(too_large(size));
    }
    // SAFETY: `realloc` hands out `size` uninitialised bytes; every caller
    // fills all of them before gRPC reads the slice (`EncodedBatch::write`
    // fails unless it ends exactly there; `write_body` writes exactly the
    // message's size).
    Ok(unsafe {
        let raw = buf.realloc(size);
        &mut *(raw as *mut [std::mem::MaybeUninit<u8>] as *mut [u8])
    })
}

fn ser_batch(b: &EncodedBatch, buf: &mut GrpcSlice) -> grpcio::Result<()> {
    b.write(writable(buf, b.encoded_len())?)
}

fn ser_message(m: &EncodedMessage, buf: &mut GrpcSlice) -> grpcio::Result<()> {
    m.write_body(writable(buf, m.len())?)
}

// A client never decodes its own requests.
fn de_unused<T>(_: grpcio::MessageReader) -> grpcio::Result<T> {
    Err(codec_error("raft requests are only written by this client"))
}

/// `tikvpb.Tikv/BatchRaft` with encoded messages (the generated method's
/// name and response type; tikvpb.proto).
pub const METHOD_BATCH_RAFT: Method<EncodedBatch, Done> = Method {
    ty: MethodType::ClientStreaming,
    name: "/tikvpb.Tikv/BatchRaft",
    req_mar: Marshaller {
        ser: ser_batch,
        de: de_unused,
    },
    resp_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
};

/// `tikvpb.Tikv/Raft` with encoded messages.
pub const METHOD_RAFT: Method<EncodedMessage, Done> = Method {
    ty: MethodType::ClientStreaming,
    name: "/tikvpb.Tikv/Raft",
    req_mar: Marshaller {
        ser: ser_message,
        de: de_unused,
    },
    resp_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use kvproto::eraftpb::Entry;
    use kvproto::tikvpb::BatchRaftMessage;

    fn msg(region_id: u64, payload: usize) -> RaftMessage {
        let mut m = RaftMessage::default();
        m.set_region_id(region_id);
        m.mut_from_peer().set_id(7);
        m.mut_from_peer().set_store_id(1);
        m.mut_to_peer().set_id(region_id * 10);
        m.mut_to_peer().set_store_id(2);
        m.mut_message().set_commit(region_id);
        let mut e = Entry::default();
        e.set_data(vec![3; payload]);
        m.mut_message().mut_entries().push(e);
        m
    }

    fn ser(b: &EncodedBatch) -> Vec<u8> {
        let mut buf = vec![0; b.encoded_len()];
        b.write(&mut buf).unwrap();
        buf
    }

    #[test]
    fn a_batch_decodes_as_the_generated_batch_raft_message() {
        // Sizes around the one- and two-byte length varints, and an empty
        // message (a default RaftMessage encodes to nothing).
        let msgs = vec![
            msg(1, 0),
            msg(2, 100),
            msg(3, 127),
            msg(4, 20_000),
            RaftMessage::default(),
        ];
        let b = EncodedBatch {
            msgs: msgs.iter().cloned().map(EncodedMessage::encode).collect(),
            last_observed_time: 1_700_000_000_123_456_789,
        };
        let wire = ser(&b);
        let mut expected = BatchRaftMessage::default();
        expected.set_msgs(msgs.clone().into());
        expected.set_last_observed_time(b.last_observed_time);
        assert_eq!(wire, expected.write_to_bytes().unwrap());
        let back = BatchRaftMessage::parse_from_bytes(&wire).unwrap();
        assert_eq!(back.get_msgs(), &msgs[..]);
        assert_eq!(back.get_last_observed_time(), b.last_observed_time);
    }

    #[test]
    fn sizes_are_exact() {
        for payload in [0, 1, 100, 127, 128, 16_383, 16_384, 300_000] {
            let e = EncodedMessage::encode(msg(9, payload));
            let mut one = BatchRaftMessage::default();
            one.mut_msgs().push(msg(9, payload));
            assert_eq!(e.len_in_batch(), one.compute_size() as usize, "{}", payload);
            let b = EncodedBatch {
                msgs: vec![e.clone(), e],
                last_observed_time: 5,
            };
            assert_eq!(ser(&b).len(), b.encoded_len());
        }
        assert_eq!(EncodedBatch::default().encoded_len(), 0);
    }

    #[test]
    fn small_messages_are_encoded_large_ones_kept() {
        let small = EncodedMessage::encode(msg(1, 10));
        assert!(matches!(small.body, Body::Bytes(_)));
        let large = EncodedMessage::encode(msg(1, ENCODE_BELOW));
        assert!(matches!(large.body, Body::Message(_, n) if n >= ENCODE_BELOW));
        // Both write protobuf's bytes, alone and in one batch.
        for m in [msg(1, 10), msg(1, ENCODE_BELOW)] {
            let b = EncodedBatch {
                msgs: vec![EncodedMessage::encode(m.clone())],
                last_observed_time: 0,
            };
            let mut one = BatchRaftMessage::default();
            one.mut_msgs().push(m);
            assert_eq!(ser(&b), one.write_to_bytes().unwrap());
        }
    }

    #[test]
    fn ids_for_reports_are_the_message_s() {
        for payload in [3, ENCODE_BELOW] {
            let e = EncodedMessage::encode(msg(42, payload));
            assert_eq!((e.region_id, e.to_peer_id), (42, 420));
            let mut slice = GrpcSlice::default();
            ser_message(&e, &mut slice).unwrap();
            let back = RaftMessage::parse_from_bytes(slice.as_slice()).unwrap();
            assert_eq!(back, msg(42, payload));
        }
    }

    #[test]
    fn a_write_into_a_short_buffer_fails() {
        let b = EncodedBatch {
            msgs: vec![EncodedMessage::encode(msg(1, 10))],
            last_observed_time: 1,
        };
        let mut short = vec![0; b.encoded_len() - 1];
        assert!(b.write(&mut short).is_err());
        let mut long = vec![0; b.encoded_len() + 1];
        assert!(b.write(&mut long).is_err());
    }
}
