//! An embedded PD for tests and the drill: a real grpcio server implementing
//! the PD methods TiKV's store resolution uses, with PD's answers (both
//! generations' shape of "invalid store ID N, not found"), several members
//! with one leader, an administration API, fault injection and per-method,
//! per-store request counters.

#![deny(missing_docs)]

mod service;
mod state;

pub use crate::state::{Fault, Method, NotFoundShape};

use std::sync::{Arc, Mutex};

use grpcio::{ChannelBuilder, Environment, Server as GrpcServer, ServerBuilder};
use kvproto::metapb;
use security::SecurityManager;

use crate::service::PdService;
use crate::state::Cluster;

struct Member {
    name: String,
    id: u64,
    host: String,
    port: u16,
    server: Option<GrpcServer>,
}

/// A running embedded PD cluster of one or more members on loopback.
pub struct Server {
    env: Arc<Environment>,
    security: Arc<SecurityManager>,
    cluster: Arc<Cluster>,
    members: Mutex<Vec<Member>>,
}

fn start_member(
    env: &Arc<Environment>,
    security: &Arc<SecurityManager>,
    cluster: &Arc<Cluster>,
    idx: usize,
    host: &str,
    port: u16,
) -> Result<(GrpcServer, u16), String> {
    let svc = PdService::new(idx, cluster.clone());
    // No SO_REUSEPORT: a second PD on a taken port must fail to bind.
    let args = ChannelBuilder::new(env.clone())
        .reuse_port(false)
        .build_args();
    let builder = ServerBuilder::new(env.clone())
        .channel_args(args)
        .register_service(kvproto::pdpb::create_pd(svc));
    let mut server = security
        .bind(builder)
        .build()
        .map_err(|e| format!("build PD server: {}", e))?;
    let port = server
        .add_listening_port(format!("{}:{}", host, port), security.server_credentials())
        .map_err(|e| format!("bind PD member on {}:{}: {}", host, port, e))?;
    server.start();
    Ok((server, port))
}

impl Server {
    /// Starts `count` members (at least 1) answering "not found" in `shape`.
    /// Member 0 is the leader. The cluster is bootstrapped.
    pub fn new(count: usize, shape: NotFoundShape) -> Server {
        assert!(count >= 1, "a PD cluster needs at least one member");
        let addrs = vec!["127.0.0.1:0".to_owned(); count];
        Server::start_on(&addrs, shape).expect("start test PD")
    }

    /// Starts one member per `host:port` (port 0 picks a free one).
    /// Member 0 is the leader. The cluster is bootstrapped; call
    /// `set_bootstrapped(false)` for a fresh cluster a store bootstraps.
    pub fn start_on(addrs: &[String], shape: NotFoundShape) -> Result<Server, String> {
        Server::start_with_security(addrs, shape, SecurityManager::plaintext())
    }

    /// As [`start_on`](Self::start_on), serving with `security` (mutual
    /// TLS and `cert-allowed-cn` when configured).
    pub fn start_with_security(
        addrs: &[String],
        shape: NotFoundShape,
        security: Arc<SecurityManager>,
    ) -> Result<Server, String> {
        if addrs.is_empty() {
            return Err("a PD cluster needs at least one member".to_owned());
        }
        let env = Arc::new(Environment::new(2));
        let cluster = Arc::new(Cluster::new(shape));
        let mut members = Vec::new();
        for (idx, addr) in addrs.iter().enumerate() {
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| format!("invalid PD member address {:?}, want host:port", addr))?;
            let (server, port) = start_member(&env, &security, &cluster, idx, host, port)?;
            members.push(Member {
                name: format!("pd-{}", idx),
                id: 100 + idx as u64,
                host: host.to_owned(),
                port,
                server: Some(server),
            });
        }
        let s = Server {
            env,
            security,
            cluster,
            members: Mutex::new(members),
        };
        s.publish_members();
        Ok(s)
    }

    /// One member, newer PD's header-error shape.
    pub fn single() -> Server {
        Server::new(1, NotFoundShape::Header)
    }

    fn publish_members(&self) {
        let ms = self.members.lock().unwrap();
        let list = ms
            .iter()
            .map(|m| {
                let mut pm = kvproto::pdpb::Member::default();
                pm.set_name(m.name.clone());
                pm.set_member_id(m.id);
                let scheme = if self.security.is_tls() {
                    "https"
                } else {
                    "http"
                };
                let url = format!("{}://{}:{}", scheme, m.host, m.port);
                pm.set_client_urls(vec![url.clone()].into());
                pm.set_peer_urls(vec![url].into());
                pm
            })
            .collect();
        self.cluster.set_members(list);
    }

    /// The members' endpoints, `host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .lock()
            .unwrap()
            .iter()
            .map(|m| format!("{}:{}", m.host, m.port))
            .collect()
    }

    /// The cluster id every member reports.
    pub fn cluster_id(&self) -> u64 {
        self.cluster.cluster_id()
    }

    /// Sets the cluster id (before clients connect), e.g. to build two
    /// clusters that must not be mixed.
    pub fn set_cluster_id(&self, id: u64) {
        self.cluster.set_cluster_id(id);
    }

    /// Makes member `idx` the leader.
    pub fn change_leader(&self, idx: usize) {
        assert!(idx < self.members.lock().unwrap().len());
        self.cluster.set_leader(idx);
    }

    /// The index of the leader member.
    pub fn leader(&self) -> usize {
        self.cluster.leader()
    }

    /// Stops member `idx`'s gRPC server (its port refuses connections).
    pub fn stop_member(&self, idx: usize) {
        let server = self.members.lock().unwrap()[idx].server.take();
        if let Some(mut s) = server {
            let f = s.shutdown();
            s.cancel_all_calls();
            let _ = futures::executor::block_on(f);
        }
    }

    /// Restarts a stopped member on its old port.
    pub fn restart_member(&self, idx: usize) {
        let mut ms = self.members.lock().unwrap();
        if ms[idx].server.is_none() {
            let (server, port) = start_member(
                &self.env,
                &self.security,
                &self.cluster,
                idx,
                &ms[idx].host,
                ms[idx].port,
            )
            .expect("restart PD member");
            assert_eq!(port, ms[idx].port, "PD member must come back on its port");
            ms[idx].server = Some(server);
        }
    }

    /// Stops every member.
    pub fn stop(&self) {
        let n = self.members.lock().unwrap().len();
        for i in 0..n {
            self.stop_member(i);
        }
    }

    /// Registers an Up store at `address`. Panics when PD would refuse it
    /// (another store that is neither Tombstone nor physically destroyed
    /// holds the address), so no test runs a sequence a real PD refuses.
    pub fn add_store(&self, id: u64, address: &str) {
        let mut s = metapb::Store::default();
        s.set_id(id);
        s.set_address(address.to_owned());
        if let Some(msg) = self.cluster.address_conflict(&s) {
            panic!("test PD refuses store {} as PD would: {}", id, msg);
        }
        self.put_store(s);
    }

    /// PD's refusal of `store`'s address or peer address, if any (the check
    /// PutStore makes).
    pub fn address_conflict(&self, store: &metapb::Store) -> Option<String> {
        self.cluster.address_conflict(store)
    }

    /// PD's `RemoveStore(id, physically_destroyed)` (tikv/pd
    /// `server/cluster/cluster.go`; `DELETE /pd/api/v1/store/{id}[?force]`):
    /// the store goes Offline, flagged physically destroyed when asked; it
    /// is buried later, once its regions are gone. Errors carry PD's texts.
    pub fn remove_store(&self, id: u64, physically_destroyed: bool) -> Result<(), String> {
        let s = self
            .cluster
            .get_store(id)
            .ok_or_else(|| format!("[PD:core:ErrStoreNotFound]store {} not found", id))?;
        if s.get_state() == metapb::StoreState::Offline
            && s.get_physically_destroyed() == physically_destroyed
        {
            return Ok(());
        }
        if s.get_state() == metapb::StoreState::Tombstone {
            return Err(format!(
                "[PD:core:ErrStoreRemoved]store {} has been removed",
                id
            ));
        }
        if s.get_physically_destroyed() {
            return Err(format!(
                "[PD:core:ErrStoreDestroyed]store {} has been physically destroyed",
                id
            ));
        }
        self.set_store_state(id, metapb::StoreState::Offline);
        self.cluster
            .update_store(id, |s| s.set_physically_destroyed(physically_destroyed));
        Ok(())
    }

    /// Registers or replaces a store's meta as given (no validation: tests
    /// use it to plant malformed meta).
    pub fn put_store(&self, store: metapb::Store) {
        self.cluster.put_store(store);
    }

    /// The store's meta, if PD knows it.
    pub fn get_store(&self, id: u64) -> Option<metapb::Store> {
        self.cluster.get_store(id)
    }

    /// Changes a known store's address (as its PutStore would; panics when
    /// PD would refuse it, as [`add_store`](Self::add_store)).
    pub fn set_store_address(&self, id: u64, address: &str) {
        if let Some(mut s) = self.cluster.get_store(id) {
            s.set_address(address.to_owned());
            if let Some(msg) = self.cluster.address_conflict(&s) {
                panic!(
                    "test PD refuses store {}'s address as PD would: {}",
                    id, msg
                );
            }
        }
        self.cluster
            .update_store(id, |s| s.set_address(address.to_owned()));
    }

    /// Marks a store Offline (being decommissioned).
    pub fn set_offline(&self, id: u64) {
        let known = self.set_store_state(id, metapb::StoreState::Offline);
        assert!(known, "test PD does not know store {}", id);
    }

    /// Marks a store Tombstone (node_state Removed), as PD does once every
    /// region has left it.
    pub fn bury(&self, id: u64) {
        let known = self.set_store_state(id, metapb::StoreState::Tombstone);
        assert!(known, "test PD does not know store {}", id);
    }

    /// `pd-ctl store remove-tombstone`: forgets a Tombstone store, after
    /// which GetStore answers "invalid store ID N, not found". Returns false
    /// when the store is unknown or not Tombstone.
    pub fn remove_tombstone(&self, id: u64) -> bool {
        self.cluster.remove_tombstone(id)
    }

    /// Every store PD knows, by id (Tombstone ones included).
    pub fn all_stores(&self) -> Vec<metapb::Store> {
        self.cluster.all_stores()
    }

    /// Sets a known store's state (and the matching node state); false when
    /// PD does not know the store.
    pub fn set_store_state(&self, id: u64, state: metapb::StoreState) -> bool {
        if self.cluster.get_store(id).is_none() {
            return false;
        }
        self.cluster.update_store(id, |s| {
            s.set_state(state);
            s.set_node_state(match state {
                metapb::StoreState::Up => metapb::NodeState::Serving,
                metapb::StoreState::Offline => metapb::NodeState::Removing,
                metapb::StoreState::Tombstone => metapb::NodeState::Removed,
            });
        });
        true
    }

    /// `pd-ctl store remove-tombstone`: forgets every Tombstone store and
    /// returns their ids.
    pub fn remove_all_tombstones(&self) -> Vec<u64> {
        // `remove_tombstone` is the one place that decides what may be
        // forgotten: it refuses stores that are not Tombstone.
        let ids: Vec<u64> = self
            .cluster
            .all_stores()
            .iter()
            .map(|s| s.get_id())
            .collect();
        ids.into_iter()
            .filter(|id| self.cluster.remove_tombstone(*id))
            .collect()
    }

    /// The stats of the store's last heartbeat, if it sent one.
    pub fn last_heartbeat(&self, id: u64) -> Option<kvproto::pdpb::StoreStats> {
        self.cluster.last_heartbeat(id)
    }

    /// Every per-store counter: (method, store id, calls).
    pub fn store_counts(&self) -> Vec<(Method, u64, u64)> {
        self.cluster.store_counts()
    }

    /// The not-found answer shape of this cluster.
    pub fn not_found_shape(&self) -> NotFoundShape {
        self.cluster.shape()
    }

    /// Injects `fault` for every call of `method`.
    pub fn set_fault(&self, method: Method, fault: Fault) {
        self.cluster.set_fault(method, None, fault);
    }

    /// Injects `fault` for `method` calls about store `store_id` only.
    pub fn set_store_fault(&self, method: Method, store_id: u64, fault: Fault) {
        self.cluster.set_fault(method, Some(store_id), fault);
    }

    /// Removes every injected fault and releases dropped calls.
    pub fn clear_faults(&self) {
        self.cluster.clear_faults();
    }

    /// Sets whether the cluster is bootstrapped.
    pub fn set_bootstrapped(&self, b: bool) {
        self.cluster.set_bootstrapped(b);
    }

    /// How many `method` calls all members received.
    pub fn method_count(&self, method: Method) -> u64 {
        self.cluster.count(method, None)
    }

    /// How many `method` calls about `store_id` all members received.
    pub fn store_count(&self, method: Method, store_id: u64) -> u64 {
        self.cluster.count(method, Some(store_id))
    }

    /// GetStore calls for `store_id`: the load a resolver puts on PD.
    pub fn get_store_count(&self, store_id: u64) -> u64 {
        self.store_count(Method::GetStore, store_id)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.clear_faults();
        self.stop();
    }
}
