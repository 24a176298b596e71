//! The `pdpb.PD` service of one member.

use std::sync::Arc;

use futures::FutureExt;
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
use kvproto::metapb;
use kvproto::pdpb::*;

use crate::state::{Cluster, Fault, Method, NotFoundShape};

#[derive(Clone)]
pub(crate) struct PdService {
    idx: usize,
    cluster: Arc<Cluster>,
}

enum Answer<T> {
    Ok(T),
    Status(RpcStatusCode, String),
}

fn header(cluster_id: u64) -> ResponseHeader {
    let mut h = ResponseHeader::default();
    h.set_cluster_id(cluster_id);
    h
}

fn err_header(cluster_id: u64, t: ErrorType, msg: String) -> ResponseHeader {
    let mut h = header(cluster_id);
    let mut e = Error::default();
    e.set_field_type(t);
    e.set_message(msg);
    h.set_error(e);
    h
}

/// PD's answer to PutStore and StoreHeartbeat from a removed store
/// (tikv/pd server/grpc_service.go `checkStore`).
fn tombstone_header(cluster_id: u64) -> ResponseHeader {
    err_header(
        cluster_id,
        ErrorType::STORE_TOMBSTONE,
        "store is tombstone".to_owned(),
    )
}

impl PdService {
    pub(crate) fn new(idx: usize, cluster: Arc<Cluster>) -> PdService {
        PdService { idx, cluster }
    }

    /// Leadership and cluster id checks PD makes before any cluster request.
    fn precheck(&self, req_header: &RequestHeader) -> Option<(RpcStatusCode, String)> {
        if self.cluster.leader() != self.idx {
            return Some((RpcStatusCode::UNAVAILABLE, "not leader".to_owned()));
        }
        let want = self.cluster.cluster_id();
        if req_header.get_cluster_id() != want {
            return Some((
                RpcStatusCode::FAILED_PRECONDITION,
                format!(
                    "mismatch cluster id, need {} but got {}",
                    want,
                    req_header.get_cluster_id()
                ),
            ));
        }
        None
    }

    /// Counts the call, applies faults and sends the answer.
    fn reply<T: Send + 'static>(
        &self,
        ctx: &RpcContext<'_>,
        method: Method,
        store: Option<u64>,
        sink: UnarySink<T>,
        answer: impl FnOnce() -> Answer<T>,
    ) {
        let fault = self.cluster.on_call(method, store);
        let (delay, answer) = match fault {
            Some(Fault::Drop) => {
                self.cluster.hold(Box::new(sink));
                return;
            }
            Some(Fault::Fail(code, msg)) => (None, Answer::Status(code, msg)),
            Some(Fault::Delay(d)) => (Some(d), answer()),
            None => (None, answer()),
        };
        let f = async move {
            if let Some(d) = delay {
                tikv_util::timer::sleep(d).await;
            }
            let _ = match answer {
                Answer::Ok(r) => sink.success(r).await,
                Answer::Status(c, m) => sink.fail(RpcStatus::with_message(c, m)).await,
            };
        };
        ctx.spawn(f.boxed());
    }

    fn not_bootstrapped(&self) -> Option<ResponseHeader> {
        if self.cluster.bootstrapped() {
            None
        } else {
            Some(err_header(
                self.cluster.cluster_id(),
                ErrorType::NOT_BOOTSTRAPPED,
                "cluster is not bootstrapped".to_owned(),
            ))
        }
    }
}

macro_rules! guarded {
    ($self:ident, $req:ident, $resp:ty) => {{
        if let Some((c, m)) = $self.precheck($req.get_header()) {
            return Answer::Status(c, m);
        }
        if let Some(h) = $self.not_bootstrapped() {
            let mut r = <$resp>::default();
            r.set_header(h);
            return Answer::Ok(r);
        }
    }};
}

impl Pd for PdService {
    fn get_members(
        &mut self,
        ctx: RpcContext<'_>,
        _req: GetMembersRequest,
        sink: UnarySink<GetMembersResponse>,
    ) {
        let cluster = self.cluster.clone();
        self.reply(&ctx, Method::GetMembers, None, sink, move || {
            let (members, leader) = cluster.members();
            let mut r = GetMembersResponse::default();
            r.set_header(header(cluster.cluster_id()));
            if let Some(l) = members.get(leader) {
                r.set_leader(l.clone());
                r.set_etcd_leader(l.clone());
            }
            r.set_members(members.into());
            Answer::Ok(r)
        });
    }

    fn bootstrap(
        &mut self,
        ctx: RpcContext<'_>,
        mut req: BootstrapRequest,
        sink: UnarySink<BootstrapResponse>,
    ) {
        let this = self.clone();
        self.reply(&ctx, Method::Bootstrap, None, sink, move || {
            if let Some((c, m)) = this.precheck(req.get_header()) {
                return Answer::Status(c, m);
            }
            let cid = this.cluster.cluster_id();
            let mut r = BootstrapResponse::default();
            if this.cluster.bootstrapped() {
                r.set_header(err_header(
                    cid,
                    ErrorType::ALREADY_BOOTSTRAPPED,
                    format!("cluster {} is already bootstrapped", cid),
                ));
            } else {
                this.cluster.put_store(req.take_store());
                this.cluster.set_bootstrapped(true);
                r.set_header(header(cid));
            }
            Answer::Ok(r)
        });
    }

    fn is_bootstrapped(
        &mut self,
        ctx: RpcContext<'_>,
        req: IsBootstrappedRequest,
        sink: UnarySink<IsBootstrappedResponse>,
    ) {
        let this = self.clone();
        self.reply(&ctx, Method::IsBootstrapped, None, sink, move || {
            if let Some((c, m)) = this.precheck(req.get_header()) {
                return Answer::Status(c, m);
            }
            let mut r = IsBootstrappedResponse::default();
            r.set_header(header(this.cluster.cluster_id()));
            r.set_bootstrapped(this.cluster.bootstrapped());
            Answer::Ok(r)
        });
    }

    fn alloc_id(
        &mut self,
        ctx: RpcContext<'_>,
        req: AllocIDRequest,
        sink: UnarySink<AllocIDResponse>,
    ) {
        let this = self.clone();
        self.reply(&ctx, Method::AllocId, None, sink, move || {
            // PD allocates ids before the cluster is bootstrapped (tikv/pd
            // server/grpc_service.go AllocID checks no bootstrap): a first
            // store needs its id to bootstrap.
            if let Some((c, m)) = this.precheck(req.get_header()) {
                return Answer::Status(c, m);
            }
            let mut r = AllocIDResponse::default();
            r.set_header(header(this.cluster.cluster_id()));
            r.set_id(this.cluster.alloc_id());
            Answer::Ok(r)
        });
    }

    fn get_store(
        &mut self,
        ctx: RpcContext<'_>,
        req: GetStoreRequest,
        sink: UnarySink<GetStoreResponse>,
    ) {
        let this = self.clone();
        let id = req.get_store_id();
        self.reply(&ctx, Method::GetStore, Some(id), sink, move || {
            guarded!(this, req, GetStoreResponse);
            let cid = this.cluster.cluster_id();
            let missing = |msg: String| match this.cluster.shape() {
                NotFoundShape::GrpcStatus => Answer::Status(RpcStatusCode::UNKNOWN, msg),
                NotFoundShape::Header => {
                    let mut r = GetStoreResponse::default();
                    r.set_header(err_header(cid, ErrorType::UNKNOWN, msg));
                    Answer::Ok(r)
                }
            };
            // PD (tikv/pd server/grpc_service.go GetStore) has no special
            // case for id 0: it is just another id it does not know.
            match this.cluster.get_store(id) {
                Some(store) => {
                    let mut r = GetStoreResponse::default();
                    r.set_header(header(cid));
                    r.set_store(store);
                    Answer::Ok(r)
                }
                None => missing(format!("invalid store ID {}, not found", id)),
            }
        });
    }

    fn put_store(
        &mut self,
        ctx: RpcContext<'_>,
        mut req: PutStoreRequest,
        sink: UnarySink<PutStoreResponse>,
    ) {
        let this = self.clone();
        let id = req.get_store().get_id();
        self.reply(&ctx, Method::PutStore, Some(id), sink, move || {
            guarded!(this, req, PutStoreResponse);
            let cid = this.cluster.cluster_id();
            let mut r = PutStoreResponse::default();
            let store = req.take_store();
            if id == 0 || store.get_address().is_empty() {
                r.set_header(err_header(
                    cid,
                    ErrorType::UNKNOWN,
                    format!("invalid put store {:?}", store),
                ));
                return Answer::Ok(r);
            }
            let old = this.cluster.get_store(id);
            if let Some(old) = &old {
                if old.get_state() == metapb::StoreState::Tombstone {
                    r.set_header(tombstone_header(cid));
                    return Answer::Ok(r);
                }
            }
            if let Some(msg) = this.cluster.address_conflict(&store) {
                r.set_header(err_header(cid, ErrorType::UNKNOWN, msg));
                return Answer::Ok(r);
            }
            // A new store starts Up and Preparing (PD moves it to Serving
            // later); a known one keeps its states, as PD's PutMetaStore does.
            let mut store = store;
            match old {
                Some(old) => {
                    store.set_state(old.get_state());
                    store.set_node_state(old.get_node_state());
                }
                None => {
                    store.set_state(metapb::StoreState::Up);
                    store.set_node_state(metapb::NodeState::Preparing);
                }
            }
            this.cluster.put_store(store);
            r.set_header(header(cid));
            Answer::Ok(r)
        });
    }

    fn get_all_stores(
        &mut self,
        ctx: RpcContext<'_>,
        req: GetAllStoresRequest,
        sink: UnarySink<GetAllStoresResponse>,
    ) {
        let this = self.clone();
        self.reply(&ctx, Method::GetAllStores, None, sink, move || {
            guarded!(this, req, GetAllStoresResponse);
            let exclude = req.get_exclude_tombstone_stores();
            let stores: Vec<_> = this
                .cluster
                .all_stores()
                .into_iter()
                .filter(|s| !exclude || s.get_state() != metapb::StoreState::Tombstone)
                .collect();
            let mut r = GetAllStoresResponse::default();
            r.set_header(header(this.cluster.cluster_id()));
            r.set_stores(stores.into());
            Answer::Ok(r)
        });
    }

    fn store_heartbeat(
        &mut self,
        ctx: RpcContext<'_>,
        req: StoreHeartbeatRequest,
        sink: UnarySink<StoreHeartbeatResponse>,
    ) {
        let this = self.clone();
        let id = req.get_stats().get_store_id();
        self.reply(&ctx, Method::StoreHeartbeat, Some(id), sink, move || {
            guarded!(this, req, StoreHeartbeatResponse);
            let cid = this.cluster.cluster_id();
            let mut r = StoreHeartbeatResponse::default();
            match this.cluster.get_store(id) {
                Some(s) if s.get_state() == metapb::StoreState::Tombstone => {
                    r.set_header(tombstone_header(cid));
                }
                Some(_) => {
                    this.cluster.on_heartbeat(req.get_stats().clone());
                    r.set_header(header(cid))
                }
                None => r.set_header(err_header(
                    cid,
                    ErrorType::UNKNOWN,
                    format!("store {} not found", id),
                )),
            }
            Answer::Ok(r)
        });
    }
}
