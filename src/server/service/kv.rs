//! `tikvpb.Tikv` `Raft` and `BatchRaft`: receives messages from other
//! stores and hands them to the router.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{FutureExt, TryStreamExt};
use grpcio::{ClientStreamingSink, RequestStream, RpcContext, RpcStatus, RpcStatusCode};
use kvproto::raft_serverpb::{Done, RaftMessage};
use kvproto::tikvpb::{BatchRaftMessage, Tikv};
use slog::{warn, Logger};

use crate::server::metrics::RAFT_SERVICE_RECV_COUNTER;
use crate::server::raft_extension::RaftExtension;

/// Called with the sender's store id for each received message: evidence
/// that store is alive (wire it to `RaftClient::notify_store_alive`).
pub type StoreAliveHook = Arc<dyn Fn(u64) + Send + Sync>;

struct Inner<E> {
    store_id: u64,
    router: E,
    alive: Option<StoreAliveHook>,
    batch_enabled: bool,
    received: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    max_batch: AtomicU64,
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

    /// Calls `hook(from_store_id)` for every message received.
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

    /// Messages rejected because they were for another store.
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::SeqCst)
    }
}

impl<E: RaftExtension> Inner<E> {
    fn handle(&self, msg: RaftMessage) {
        let to = msg.get_to_peer().get_store_id();
        if to != self.store_id {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            RAFT_SERVICE_RECV_COUNTER
                .with_label_values(&["rejected"])
                .inc();
            warn!(self.logger, "reject raft message for another store";
                "store_id" => self.store_id, "to_store_id" => to, "region_id" => msg.get_region_id());
            return;
        }
        let from = msg.get_from_peer().get_store_id();
        if let Some(hook) = &self.alive {
            if from != 0 {
                hook(from);
            }
        }
        self.received.fetch_add(1, Ordering::SeqCst);
        RAFT_SERVICE_RECV_COUNTER.with_label_values(&["ok"]).inc();
        self.router.feed(msg);
    }
}

/// Ends a client-streaming call: `Done` when the stream ended cleanly,
/// the error otherwise.
async fn finish(sink: ClientStreamingSink<Done>, res: grpcio::Result<()>) {
    let _ = match res {
        Ok(()) => sink.success(Done::default()).await,
        Err(e) => {
            let status = RpcStatus::with_message(RpcStatusCode::UNKNOWN, format!("{:?}", e));
            sink.fail(status).await
        }
    };
}

impl<E: RaftExtension> Tikv for Service<E> {
    fn raft(
        &mut self,
        ctx: RpcContext<'_>,
        mut stream: RequestStream<RaftMessage>,
        sink: ClientStreamingSink<Done>,
    ) {
        let inner = self.inner.clone();
        let f = async move {
            let res = async {
                while let Some(msg) = stream.try_next().await? {
                    inner.handle(msg);
                }
                Ok(())
            }
            .await;
            finish(sink, res).await;
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
            ctx.spawn(sink.fail(status).map(|_| ()).boxed());
            return;
        }
        let f = async move {
            let res = async {
                while let Some(mut batch) = stream.try_next().await? {
                    let n = batch.get_msgs().len() as u64;
                    if n > 0 {
                        inner.batches.fetch_add(1, Ordering::SeqCst);
                        inner.max_batch.fetch_max(n, Ordering::SeqCst);
                    }
                    for msg in batch.take_msgs().into_iter() {
                        inner.handle(msg);
                    }
                }
                Ok(())
            }
            .await;
            finish(sink, res).await;
        };
        ctx.spawn(f.boxed());
    }
}
