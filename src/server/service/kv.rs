//! `tikvpb.Tikv` `Raft` and `BatchRaft`: receives messages from other
//! stores and hands them to the router.
//!
//! Ends calls the way upstream's raft service does (tikv/tikv
//! `src/server/service/kv.rs`, `raft` and `batch_raft`), so a sender cannot
//! tell us from an unpatched store:
//! - the call never answers `Done`: when the sender closes its side, the call
//!   fails with 2-UNKNOWN and an empty message; a read error fails it with
//!   2-UNKNOWN and the error's Debug text;
//! - a message whose `to_peer.store_id` is not ours fails the call with
//!   2-UNKNOWN `RaftServer(StoreNotMatch { to_store_id: .., my_store_id: .. })`
//!   and nothing after it is fed, so the sender resolves the address again;
//! - the `source_store_id` call header (decimal) is counted per source store
//!   and is evidence that store is alive;
//! - `last_observed_time` of each batch feeds the receive-delay histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{FutureExt, TryStreamExt};
use grpcio::{ClientStreamingSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode};
use kvproto::raft_serverpb::{Done, RaftMessage};
use kvproto::tikvpb::{BatchRaftMessage, Tikv};
use slog::{info, warn, Logger};

use crate::server::metrics::{
    MESSAGE_RECV_BY_STORE, RAFT_MESSAGE_DURATION_VEC, RAFT_SERVICE_RECV_COUNTER,
    RAFT_SERVICE_RECV_OK,
};
use crate::server::raft_client::MetadataSourceStoreId;
use crate::server::raft_extension::RaftExtension;

/// Called with a store id whenever that store shows signs of life: a
/// message from it, or a call carrying its `source_store_id` (wire it to
/// `RaftClient::notify_store_alive`).
pub type StoreAliveHook = Arc<dyn Fn(u64) + Send + Sync>;

/// A message reached a store other than its `to_peer.store_id` (upstream:
/// `raftstore::Error::StoreNotMatch`). The receiver fails the call with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreNotMatch {
    /// The store the message was for.
    pub to_store_id: u64,
    /// The store that received it.
    pub my_store_id: u64,
}

impl StoreNotMatch {
    /// The status upstream's service fails the call with: 2-UNKNOWN and the
    /// Debug text of `server::Error::RaftServer(raftstore::Error::StoreNotMatch)`.
    pub fn to_status(self) -> RpcStatus {
        RpcStatus::with_message(
            RpcStatusCode::UNKNOWN,
            format!(
                "RaftServer(StoreNotMatch {{ to_store_id: {}, my_store_id: {} }})",
                self.to_store_id, self.my_store_id
            ),
        )
    }

    /// Recognises the status a call was failed with as store-not-match:
    /// 2-UNKNOWN whose message carries exactly upstream's
    /// `StoreNotMatch { to_store_id: <n>, my_store_id: <n> }` (whatever wraps
    /// it). Any other code or text is not.
    pub fn from_status(status: &RpcStatus) -> Option<StoreNotMatch> {
        if status.code() != RpcStatusCode::UNKNOWN {
            return None;
        }
        let msg = status.message();
        let rest = &msg[msg.find("StoreNotMatch { to_store_id: ")? + 29..];
        let (to, rest) = rest.split_once(", my_store_id: ")?;
        let (mine, _) = rest.split_once(" }")?;
        let num = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        Some(StoreNotMatch {
            to_store_id: num(to)?,
            my_store_id: num(mine)?,
        })
    }
}

struct Inner<E> {
    store_id: u64,
    router: E,
    alive: Option<StoreAliveHook>,
    batch_enabled: bool,
    received: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    max_batch: AtomicU64,
    calls: AtomicU64,
    logger: Logger,
}

/// The raft service of one store.
pub struct Service<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for Service<E> {
    fn clone(&self) -> Self {
        Service {
            inner: self.inner.clone(),
        }
    }
}

impl<E: RaftExtension> Service<E> {
    /// A service for store `store_id` feeding `router`.
    pub fn new(store_id: u64, router: E) -> Self {
        Service {
            inner: Arc::new(Inner {
                store_id,
                router,
                alive: None,
                batch_enabled: true,
                received: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                batches: AtomicU64::new(0),
                max_batch: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                logger: tikv_util::logger::discard(),
            }),
        }
    }

    fn edit(self, f: impl FnOnce(&mut Inner<E>)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("configure the raft service before sharing it"));
        f(&mut inner);
        Service {
            inner: Arc::new(inner),
        }
    }

    /// Calls `hook(store_id)` on every sign of life of another store.
    pub fn with_store_alive_hook(self, hook: StoreAliveHook) -> Self {
        self.edit(|i| i.alive = Some(hook))
    }

    /// Answers `BatchRaft` with UNIMPLEMENTED, like a peer that predates it.
    pub fn without_batch_raft(self) -> Self {
        self.edit(|i| i.batch_enabled = false)
    }

    /// Logs to `logger`.
    pub fn with_logger(self, logger: Logger) -> Self {
        self.edit(|i| i.logger = logger)
    }

    /// Messages handed to the router.
    pub fn received(&self) -> u64 {
        self.inner.received.load(Ordering::SeqCst)
    }

    /// Non-empty `BatchRaft` batches received.
    pub fn batches(&self) -> u64 {
        self.inner.batches.load(Ordering::SeqCst)
    }

    /// The largest `BatchRaft` batch received, in messages.
    pub fn max_batch(&self) -> u64 {
        self.inner.max_batch.load(Ordering::SeqCst)
    }

    /// Calls failed because a message was for another store.
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::SeqCst)
    }

    /// `Raft` and `BatchRaft` calls opened.
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }
}

/// The `source_store_id` header of a call. A malformed value is an error
/// (upstream would panic on it).
fn source_store_id(ctx: &RpcContext<'_>) -> Result<Option<u64>, RpcStatus> {
    for (key, value) in ctx.request_headers().iter() {
        if key == MetadataSourceStoreId::KEY {
            return MetadataSourceStoreId::parse(value)
                .map(Some)
                .ok_or_else(|| {
                    RpcStatus::with_message(
                        RpcStatusCode::INVALID_ARGUMENT,
                        format!(
                            "invalid {} header {:?}",
                            MetadataSourceStoreId::KEY,
                            String::from_utf8_lossy(value)
                        ),
                    )
                });
        }
    }
    Ok(None)
}

/// Why a call's read loop stopped early.
enum CallError {
    StoreNotMatch(StoreNotMatch),
    Grpc(grpcio::Error),
}

impl<E: RaftExtension> Inner<E> {
    /// Logs and counts the opening of a call, and takes its
    /// `source_store_id` as evidence of life; returns that store id.
    fn open_call(&self, ctx: &RpcContext<'_>, method: &str) -> Result<Option<u64>, RpcStatus> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let source = source_store_id(ctx)?;
        info!(self.logger, "raft RPC is called, new gRPC stream established";
            "method" => method, "store_id" => self.store_id, "source_store_id" => ?source);
        if let (Some(hook), Some(from)) = (&self.alive, source) {
            if from != 0 {
                hook(from);
            }
        }
        Ok(source)
    }

    fn handle(&self, msg: RaftMessage) -> Result<(), StoreNotMatch> {
        if !self.is_for_me(&msg) {
            let to = msg.get_to_peer().get_store_id();
            self.rejected.fetch_add(1, Ordering::SeqCst);
            RAFT_SERVICE_RECV_COUNTER
                .with_label_values(&["rejected"])
                .inc();
            return Err(StoreNotMatch {
                to_store_id: to,
                my_store_id: self.store_id,
            });
        }
        let from = msg.get_from_peer().get_store_id();
        if let Some(hook) = &self.alive {
            if from != 0 {
                hook(from);
            }
        }
        self.router.feed(msg);
        Ok(())
    }

    /// Whether `msg` is for this store (else it fails the call).
    fn is_for_me(&self, msg: &RaftMessage) -> bool {
        msg.get_to_peer().get_store_id() == self.store_id
    }

    /// Counts `n` messages handed to the router, in the service's totals
    /// and in `source`'s series. `BatchRaft` counts once per batch, as
    /// upstream's service does (tikv/tikv `src/server/service/kv.rs`,
    /// `inc_by` of the batch's length): four streams counting every message
    /// into the same shared counters made their cache lines bounce between
    /// the receiving threads.
    fn count_received(&self, n: u64, source: Option<&prometheus::IntCounter>) {
        if n == 0 {
            return;
        }
        self.received.fetch_add(n, Ordering::SeqCst);
        RAFT_SERVICE_RECV_OK.inc_by(n);
        if let Some(c) = source {
            c.inc_by(n);
        }
    }

    /// Fails the call as upstream does, whatever ended it.
    async fn finish(&self, sink: ClientStreamingSink<Done>, res: Result<(), CallError>) {
        let status = match res {
            Ok(()) => RpcStatus::new(RpcStatusCode::UNKNOWN),
            Err(CallError::StoreNotMatch(e)) => {
                warn!(self.logger, "raft message for another store, fail the call";
                    "to_store_id" => e.to_store_id, "my_store_id" => e.my_store_id);
                e.to_status()
            }
            Err(CallError::Grpc(e)) => {
                let msg = format!("{:?}", e);
                warn!(self.logger, "dispatch raft msg from gRPC to raftstore fail";
                    "store_id" => self.store_id, "err" => &msg);
                RpcStatus::with_message(RpcStatusCode::UNKNOWN, msg)
            }
        };
        let _ = sink.fail(status).await;
    }
}

/// Fails a call without reading it. The request stream is kept until the
/// status is sent: dropping it first cancels the call, and the sender would
/// see CANCELLED instead of `status` (grpcio's default handler does that).
fn refuse<T: Send + 'static>(
    ctx: &RpcContext<'_>,
    stream: RequestStream<T>,
    sink: ClientStreamingSink<Done>,
    status: RpcStatus,
) {
    ctx.spawn(
        async move {
            let _ = sink.fail(status).await;
            drop(stream);
        }
        .boxed(),
    );
}

fn source_counter(source: Option<u64>) -> Option<prometheus::IntCounter> {
    source.map(|s| MESSAGE_RECV_BY_STORE.with_label_values(&[&s.to_string()]))
}

impl<E: RaftExtension> Tikv for Service<E> {
    fn raft(
        &mut self,
        ctx: RpcContext<'_>,
        mut stream: RequestStream<RaftMessage>,
        sink: ClientStreamingSink<Done>,
    ) {
        let inner = self.inner.clone();
        let source = match inner.open_call(&ctx, "raft") {
            Ok(s) => s,
            Err(status) => return refuse(&ctx, stream, sink, status),
        };
        let f = async move {
            let counter = source_counter(source);
            let res = async {
                while let Some(msg) = stream.try_next().await.map_err(CallError::Grpc)? {
                    if inner.is_for_me(&msg) {
                        inner.count_received(1, counter.as_ref());
                    }
                    inner.handle(msg).map_err(CallError::StoreNotMatch)?;
                }
                Ok(())
            }
            .await;
            inner.finish(sink, res).await;
        };
        ctx.spawn(f.boxed());
    }

    fn batch_raft(
        &mut self,
        ctx: RpcContext<'_>,
        mut stream: RequestStream<BatchRaftMessage>,
        sink: ClientStreamingSink<Done>,
    ) {
        let inner = self.inner.clone();
        if !inner.batch_enabled {
            let status = RpcStatus::with_message(
                RpcStatusCode::UNIMPLEMENTED,
                "BatchRaft is not implemented".to_owned(),
            );
            return refuse(&ctx, stream, sink, status);
        }
        let source = match inner.open_call(&ctx, "batch_raft") {
            Ok(s) => s,
            Err(status) => return refuse(&ctx, stream, sink, status),
        };
        let f = async move {
            let counter = source_counter(source);
            let delay = RAFT_MESSAGE_DURATION_VEC.with_label_values(&["receive_delay"]);
            let res = async {
                while let Some(mut batch) = stream.try_next().await.map_err(CallError::Grpc)? {
                    let sent_at = batch.get_last_observed_time();
                    delay.observe(tikv_util::unix_nanos_now().saturating_sub(sent_at) as f64 / 1e9);
                    let n = batch.get_msgs().len() as u64;
                    if n > 0 {
                        inner.batches.fetch_add(1, Ordering::SeqCst);
                        inner.max_batch.fetch_max(n, Ordering::SeqCst);
                    }
                    // Counted before the router sees them: the messages
                    // up to the first one for another store, which ends
                    // the call.
                    let msgs = batch.take_msgs();
                    let handed = msgs.iter().take_while(|m| inner.is_for_me(m)).count();
                    inner.count_received(handed as u64, counter.as_ref());
                    for msg in msgs {
                        inner.handle(msg).map_err(CallError::StoreNotMatch)?;
                    }
                }
                Ok(())
            }
            .await;
            inner.finish(sink, res).await;
        };
        ctx.spawn(f.boxed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: RpcStatusCode, msg: &str) -> RpcStatus {
        RpcStatus::with_message(code, msg.to_owned())
    }

    #[test]
    fn store_not_match_status_round_trips() {
        let e = StoreNotMatch {
            to_store_id: 3,
            my_store_id: 7,
        };
        let s = e.to_status();
        assert_eq!(s.code(), RpcStatusCode::UNKNOWN);
        // Upstream's exact text (server::Error::RaftServer Debug).
        assert_eq!(
            s.message(),
            "RaftServer(StoreNotMatch { to_store_id: 3, my_store_id: 7 })"
        );
        assert_eq!(StoreNotMatch::from_status(&s), Some(e));
    }

    #[test]
    fn other_statuses_are_not_store_not_match() {
        let text = "RaftServer(StoreNotMatch { to_store_id: 3, my_store_id: 7 })";
        let cases = [
            // The right text with another code.
            status(RpcStatusCode::UNAVAILABLE, text),
            status(RpcStatusCode::INVALID_ARGUMENT, text),
            // Upstream's clean end: UNKNOWN, empty.
            status(RpcStatusCode::UNKNOWN, ""),
            // Things that merely mention a mismatch or "not found".
            status(RpcStatusCode::UNKNOWN, "store not match"),
            status(RpcStatusCode::UNKNOWN, "region 3 not found"),
            status(RpcStatusCode::UNKNOWN, "StoreNotMatch"),
            status(
                RpcStatusCode::UNKNOWN,
                "StoreNotMatch { to_store_id: x, my_store_id: 7 }",
            ),
            status(
                RpcStatusCode::UNKNOWN,
                "StoreNotMatch { to_store_id: 3, my_store_id:  }",
            ),
            status(
                RpcStatusCode::UNKNOWN,
                "StoreNotMatch { to_store_id: 3, my_store_id: 99999999999999999999 }",
            ),
        ];
        for s in cases {
            assert_eq!(StoreNotMatch::from_status(&s), None, "{:?}", s);
        }
    }
}
