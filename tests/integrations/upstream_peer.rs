//! A raft receiver that behaves as an unpatched upstream TiKV store, written
//! apart from our own service so a client test cannot pass merely because
//! both ends share our assumptions.
//!
//! Behaviour read from tikv/tikv master, `src/server/service/kv.rs`
//! (`raft`, `batch_raft`, `handle_raft_message`):
//! - the call never answers `Done`: a clean end of the client's stream fails
//!   it with 2-UNKNOWN and an empty message; an error fails it with 2-UNKNOWN
//!   and `format!("{:?}", server::Error)`;
//! - a message whose `to_peer.store_id` is not the store's own fails the call
//!   with `server::Error::RaftServer(raftstore::Error::StoreNotMatch {..})`,
//!   and nothing after it in the call is fed;
//! - the `source_store_id` header is read at call start.
//!
//! Options model the other upstream peers a rolling upgrade meets: a store
//! that predates `BatchRaft` (the method is not registered at all, so gRPC
//! itself answers UNIMPLEMENTED), builds that refuse a call without
//! `source_store_id` (INVALID_ARGUMENT "missing source store id"), and a
//! store that accepts connections but fails every call.

use std::sync::{Arc, Mutex};

use futures::{FutureExt, TryStreamExt};
use grpcio::{
    ChannelBuilder, ClientStreamingSink, Environment, Marshaller, Method, MethodType,
    RequestStream, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder, ServiceBuilder,
};
use kvproto::raft_serverpb::{Done, RaftMessage};
use kvproto::tikvpb::BatchRaftMessage;
use security::SecurityManager;
use tikv::server::{RaftExtension, RecordingExtension};

const RAFT: Method<RaftMessage, Done> = Method {
    ty: MethodType::ClientStreaming,
    name: "/tikvpb.Tikv/Raft",
    req_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
    resp_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
};

const BATCH_RAFT: Method<BatchRaftMessage, Done> = Method {
    ty: MethodType::ClientStreaming,
    name: "/tikvpb.Tikv/BatchRaft",
    req_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
    resp_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
};

/// Upstream's `raftstore::Error`, the variant the service returns; the
/// derived Debug gives upstream's text.
#[derive(Debug)]
#[allow(dead_code)]
enum RaftStoreError {
    StoreNotMatch { to_store_id: u64, my_store_id: u64 },
}

/// Upstream's `server::Error`, the variants a raft call can end with.
#[derive(Debug)]
#[allow(dead_code)]
enum ServerError {
    Grpc(grpcio::Error),
    RaftServer(RaftStoreError),
}

/// How the peer behaves.
#[derive(Clone, Debug, Default)]
pub struct PeerOptions {
    /// The peer predates `BatchRaft`: the method is not registered.
    pub no_batch_raft: bool,
    /// `BatchRaft` is registered with grpcio's default handler
    /// (`unimplemented_call!`): it drops the request and fails the call
    /// UNIMPLEMENTED, so the sender may see CANCELLED instead.
    pub batch_raft_by_default: bool,
    /// Cancel the first N `BatchRaft` calls without reading them (the
    /// sender sees CANCELLED), then answer UNIMPLEMENTED: the race of a
    /// refusing peer, made deterministic.
    pub cancel_first_batch_calls: u64,
    /// Refuse a call without `source_store_id`.
    pub require_source_store_id: bool,
    /// Accept connections, fail every call at once.
    pub fail_every_call: bool,
    /// `BatchRaft` reads the call's first batch, feeds none of it and then
    /// fails the call UNIMPLEMENTED: a refusal that comes only once data
    /// arrives (a peer behind a proxy that opens the upstream call lazily),
    /// so the client may have had the call open for a while before its
    /// first write.
    pub unimplemented_after_first_batch: bool,
    /// Serve `[security]` as an upstream store does (tikv/tikv
    /// components/security `bind`: mutual TLS, `cert-allowed-cn` checked
    /// on every call, UNAUTHENTICATED otherwise); plaintext when `None`.
    pub security: Option<Arc<SecurityManager>>,
}

#[derive(Default)]
struct Counters {
    calls: u64,
    batches: u64,
    max_batch: u64,
    rejected: u64,
    cancelled: u64,
    raft_calls: u64,
    sources: Vec<Option<u64>>,
    observed: Vec<u64>,
}

#[derive(Clone)]
struct Peer {
    store_id: u64,
    opts: PeerOptions,
    ext: RecordingExtension,
    counters: Arc<Mutex<Counters>>,
}

impl Peer {
    /// Opens a call: records it, returns the status to refuse it with, if any.
    fn open(&self, ctx: &RpcContext<'_>) -> Option<RpcStatus> {
        let source = ctx
            .request_headers()
            .iter()
            .find(|(k, _)| *k == "source_store_id")
            .map(|(_, v)| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap());
        {
            let mut c = self.counters.lock().unwrap();
            c.calls += 1;
            c.sources.push(source);
        }
        if self.opts.require_source_store_id && source.is_none() {
            return Some(RpcStatus::with_message(
                RpcStatusCode::INVALID_ARGUMENT,
                "missing source store id".to_owned(),
            ));
        }
        if self.opts.fail_every_call {
            let e = ServerError::Grpc(grpcio::Error::RemoteStopped);
            return Some(RpcStatus::with_message(
                RpcStatusCode::UNKNOWN,
                format!("{:?}", e),
            ));
        }
        None
    }

    /// `handle_raft_message`: store check, then feed.
    fn handle(&self, msg: RaftMessage) -> Result<(), ServerError> {
        let to_store_id = msg.get_to_peer().get_store_id();
        if to_store_id != self.store_id {
            self.counters.lock().unwrap().rejected += 1;
            return Err(ServerError::RaftServer(RaftStoreError::StoreNotMatch {
                to_store_id,
                my_store_id: self.store_id,
            }));
        }
        self.ext.feed(msg);
        Ok(())
    }

    /// How upstream ends every raft call.
    async fn end(sink: ClientStreamingSink<Done>, res: Result<(), ServerError>) {
        let status = match res {
            Err(e) => RpcStatus::with_message(RpcStatusCode::UNKNOWN, format!("{:?}", e)),
            Ok(()) => RpcStatus::new(RpcStatusCode::UNKNOWN),
        };
        let _ = sink.fail(status).await;
    }

    /// Fails a call without reading it; the request is kept until the
    /// status is sent (dropping it first would cancel the call).
    fn refuse<T: Send + 'static>(
        ctx: &RpcContext<'_>,
        stream: RequestStream<T>,
        sink: ClientStreamingSink<Done>,
        status: RpcStatus,
    ) {
        ctx.spawn(async move {
            let _ = sink.fail(status).await;
            drop(stream);
        });
    }

    fn raft(
        &self,
        ctx: RpcContext<'_>,
        mut stream: RequestStream<RaftMessage>,
        sink: ClientStreamingSink<Done>,
    ) {
        self.counters.lock().unwrap().raft_calls += 1;
        if let Some(status) = self.open(&ctx) {
            return Peer::refuse(&ctx, stream, sink, status);
        }
        let peer = self.clone();
        ctx.spawn(async move {
            let res = async {
                while let Some(msg) = stream.try_next().await.map_err(ServerError::Grpc)? {
                    peer.handle(msg)?;
                }
                Ok(())
            }
            .await;
            Peer::end(sink, res).await;
        });
    }

    fn batch_raft(
        &self,
        ctx: RpcContext<'_>,
        mut stream: RequestStream<BatchRaftMessage>,
        sink: ClientStreamingSink<Done>,
    ) {
        if self.opts.batch_raft_by_default {
            // What grpcio's `unimplemented_call!` does: the request is
            // dropped when the handler returns.
            self.counters.lock().unwrap().calls += 1;
            ctx.spawn(
                sink.fail(RpcStatus::new(RpcStatusCode::UNIMPLEMENTED))
                    .map(|_| ()),
            );
            return;
        }
        if self.opts.cancel_first_batch_calls > 0 {
            let mut c = self.counters.lock().unwrap();
            c.calls += 1;
            if c.cancelled < self.opts.cancel_first_batch_calls {
                c.cancelled += 1;
                // Dropping both halves unanswered cancels the call.
                drop((stream, sink));
                return;
            }
            drop(c);
            let status = RpcStatus::new(RpcStatusCode::UNIMPLEMENTED);
            return Peer::refuse(&ctx, stream, sink, status);
        }
        if let Some(status) = self.open(&ctx) {
            return Peer::refuse(&ctx, stream, sink, status);
        }
        if self.opts.unimplemented_after_first_batch {
            ctx.spawn(async move {
                let _ = stream.try_next().await;
                let _ = sink
                    .fail(RpcStatus::new(RpcStatusCode::UNIMPLEMENTED))
                    .await;
                drop(stream);
            });
            return;
        }
        let peer = self.clone();
        ctx.spawn(async move {
            let res = async {
                while let Some(mut batch) = stream.try_next().await.map_err(ServerError::Grpc)? {
                    let n = batch.get_msgs().len() as u64;
                    {
                        let mut c = peer.counters.lock().unwrap();
                        c.observed.push(batch.get_last_observed_time());
                        if n > 0 {
                            c.batches += 1;
                            c.max_batch = c.max_batch.max(n);
                        }
                    }
                    for msg in batch.take_msgs().into_iter() {
                        peer.handle(msg)?;
                    }
                }
                Ok(())
            }
            .await;
            Peer::end(sink, res).await;
        });
    }
}

/// A running upstream-like store.
pub struct UpstreamPeer {
    peer: Peer,
    server: Option<Server>,
    addr: String,
}

impl UpstreamPeer {
    /// Serves store `store_id`'s raft service on `addr` (port 0: any),
    /// feeding `ext`.
    pub fn start(store_id: u64, addr: &str, opts: PeerOptions, ext: RecordingExtension) -> Self {
        let (no_batch_raft, security) = (opts.no_batch_raft, opts.security.clone());
        let peer = Peer {
            store_id,
            opts,
            ext,
            counters: Arc::default(),
        };
        let p = peer.clone();
        let mut svc = ServiceBuilder::new()
            .add_client_streaming_handler(&RAFT, move |ctx, req, sink| p.raft(ctx, req, sink));
        if !no_batch_raft {
            let p = peer.clone();
            svc = svc.add_client_streaming_handler(&BATCH_RAFT, move |ctx, req, sink| {
                p.batch_raft(ctx, req, sink)
            });
        }
        let sec = security.unwrap_or_else(SecurityManager::plaintext);
        // Upstream's server arguments (tikv/tikv `src/server/server.rs`):
        // `grpc-concurrent-stream` (1024) streams per connection and no
        // limit on a received message's length.
        let env = Arc::new(Environment::new(2));
        let args = ChannelBuilder::new(env.clone())
            .max_concurrent_stream(1024)
            .max_receive_message_len(-1)
            .build_args();
        let builder = ServerBuilder::new(env)
            .channel_args(args)
            .register_service(svc.build());
        let mut server = sec.bind(builder).build().unwrap();
        let port = server
            .add_listening_port(addr, sec.server_credentials())
            .unwrap();
        server.start();
        let host = addr.rsplit_once(':').unwrap().0;
        UpstreamPeer {
            peer,
            server: Some(server),
            addr: format!("{}:{}", host, port),
        }
    }

    /// The bound address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Non-empty `BatchRaft` batches read.
    pub fn batches(&self) -> u64 {
        self.peer.counters.lock().unwrap().batches
    }

    /// The largest batch read.
    pub fn max_batch(&self) -> u64 {
        self.peer.counters.lock().unwrap().max_batch
    }

    /// Calls failed with store-not-match.
    pub fn rejected(&self) -> u64 {
        self.peer.counters.lock().unwrap().rejected
    }

    /// Calls opened.
    pub fn calls(&self) -> u64 {
        self.peer.counters.lock().unwrap().calls
    }

    /// The `source_store_id` of every call, in order.
    pub fn sources(&self) -> Vec<Option<u64>> {
        self.peer.counters.lock().unwrap().sources.clone()
    }

    /// `BatchRaft` calls cancelled unread.
    pub fn cancelled(&self) -> u64 {
        self.peer.counters.lock().unwrap().cancelled
    }

    /// `Raft` calls opened.
    pub fn raft_calls(&self) -> u64 {
        self.peer.counters.lock().unwrap().raft_calls
    }

    /// `last_observed_time` of every batch read, in order.
    pub fn observed_times(&self) -> Vec<u64> {
        self.peer.counters.lock().unwrap().observed.clone()
    }

    /// Stops serving: open calls are cancelled.
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let f = s.shutdown();
            s.cancel_all_calls();
            let _ = futures::executor::block_on(f);
        }
    }
}

impl Drop for UpstreamPeer {
    fn drop(&mut self) {
        self.stop();
    }
}
