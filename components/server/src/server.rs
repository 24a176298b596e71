//! Starting and stopping the store (upstream: `components/server/src/
//! server.rs`, `run_tikv`): data dir, PD client, identity, raft service,
//! raft client, status server, registration, heartbeats, traffic.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::{self, Receiver};
use grpcio::Environment;
use pd_client::{PdClient, RpcClient};
use security::SecurityManager;
use slog::{info, Logger};
use tikv::server::resolve::{self, PdStoreAddrResolver, ResolverConfig, StoreAddrResolver};
use tikv::server::{ConnectionBuilder, RaftClient, Server, Service};
use tikv_util::worker::Worker;

use crate::config::TikvConfig;
use crate::ident::DataDir;
use crate::node::{self, HeartbeatState, StoreMeta};
use crate::status_server::{StatusServer, StatusSource};
use crate::synthetic::{self, StoreRouter, Traffic};

type Client = RaftClient<PdStoreAddrResolver, StoreRouter>;

/// Why [`TikvServer::start_with_stop`] did not start a store.
#[derive(Debug)]
pub enum StartError {
    /// Asked to stop while waiting for PD.
    Stopped,
    /// Start-up failed; the message names what failed.
    Failed(String),
}

impl From<String> for StartError {
    fn from(e: String) -> StartError {
        StartError::Failed(e)
    }
}

/// A running store.
pub struct TikvServer {
    /// This store's id.
    pub store_id: u64,
    /// The advertised raft address.
    pub addr: String,
    /// The status server's address, if it runs.
    pub status_addr: Option<String>,
    client: Client,
    raft_server: Server,
    status: Option<StatusServer>,
    traffic: Arc<Mutex<Traffic>>,
    heartbeat: Option<(channel::Sender<()>, std::thread::JoinHandle<()>)>,
    _worker: Worker,
    _data_dir: DataDir,
    logger: Logger,
}

struct Source {
    store_id: u64,
    cluster_id: u64,
    meta: Mutex<StoreMeta>,
    pd: Arc<RpcClient>,
    client: Client,
    traffic: Arc<Mutex<Traffic>>,
    heartbeats: Arc<HeartbeatState>,
    resolver: PdStoreAddrResolver,
}

impl StatusSource for Source {
    fn status(&self) -> serde_json::Value {
        let meta = self.meta.lock().unwrap();
        serde_json::json!({
            "store_id": self.store_id,
            "cluster_id": self.cluster_id,
            "address": meta.address,
            "status_address": meta.status_address,
            "version": node::STORE_VERSION,
            "start_timestamp": meta.start_timestamp,
            "pd_leader": self.pd.leader_addr(),
            "pd_reconnects": self.pd.reconnect_stats().attempts(),
            "store_heartbeats": {
                "sent": self.heartbeats.sent.load(Ordering::SeqCst),
                "failed": self.heartbeats.failed.load(Ordering::SeqCst),
                "pd_says_tombstone": self.heartbeats.tombstone.load(Ordering::SeqCst),
            },
        })
    }

    fn raft_client(&self) -> serde_json::Value {
        let stats = self.client.stats();
        let mut v = serde_json::json!({
            "store_id": self.store_id,
            "pool": self.client.pool_view(),
            "stats": stats,
            "balanced": stats.balanced(),
        });
        v["traffic"] = self.traffic.lock().unwrap().view();
        v
    }

    fn add_peer_store(&self, store_id: u64) -> usize {
        self.traffic.lock().unwrap().add_peer_store(store_id)
    }

    fn resolve(
        &self,
        store_id: u64,
        cb: Box<dyn FnOnce(serde_json::Value) + Send>,
    ) -> Result<(), String> {
        let start = std::time::Instant::now();
        let answer = move |r: resolve::Result<String>| {
            let ms = start.elapsed().as_millis() as u64;
            let (kind, what) = match r {
                Ok(addr) => ("address", addr),
                Err(e @ resolve::Error::StoreNotFound(_)) => ("not_found", e.to_string()),
                Err(e @ resolve::Error::StoreTombstone(_)) => ("tombstone", e.to_string()),
                Err(e) => ("error", e.to_string()),
            };
            serde_json::json!({ "store_id": store_id, kind: what, "elapsed_ms": ms })
        };
        self.resolver
            .resolve(store_id, Box::new(move |r| cb(answer(r))))
            .map_err(|e| e.to_string())
    }
}

fn with_port(host_of: &str, port: u16) -> String {
    let host = host_of.rsplit_once(':').map(|(h, _)| h).unwrap_or(host_of);
    format!("{}:{}", host, port)
}

impl TikvServer {
    /// Starts the store with a validated `cfg`. Errors name what failed.
    pub fn start(cfg: &TikvConfig, logger: Logger) -> Result<TikvServer, String> {
        let never = AtomicBool::new(false);
        Self::start_with_stop(cfg, logger, &never).map_err(|e| match e {
            StartError::Stopped => "stopped while waiting for PD".to_owned(),
            StartError::Failed(e) => e,
        })
    }

    /// As [`start`](Self::start); `stop` set while the store waits for PD
    /// ends the wait with [`StartError::Stopped`], before anything is
    /// written to the data dir (only its lock file exists).
    pub fn start_with_stop(
        cfg: &TikvConfig,
        logger: Logger,
        stop: &AtomicBool,
    ) -> Result<TikvServer, StartError> {
        Self::start_inner(cfg, logger, stop)
    }

    fn start_inner(
        cfg: &TikvConfig,
        logger: Logger,
        stop: &AtomicBool,
    ) -> Result<TikvServer, StartError> {
        tikv::server::metrics::init();
        pd_client::metrics::init();
        let data_dir = DataDir::open(Path::new(&cfg.storage.data_dir))?;
        let env = Arc::new(Environment::new(2));
        let security = Arc::new(SecurityManager::new(&cfg.security)?);
        let pd = Arc::new(
            RpcClient::new_with_stop(
                &cfg.pd,
                Some(env.clone()),
                security.clone(),
                logger.clone(),
                stop,
            )
            .map_err(|e| {
                if matches!(e, pd_client::Error::Stopped) {
                    return StartError::Stopped;
                }
                let hint = match (security.is_tls(), e.is_transport()) {
                    (true, true) => " (with [security] set: does PD serve TLS with a certificate signed by ca-path, and accept ours?)",
                    (false, true) => " (if PD requires TLS, set [security] ca-path, cert-path and key-path)",
                    _ => "",
                };
                StartError::Failed(format!(
                    "cannot connect to PD at {}: {}{}",
                    cfg.pd.endpoints.join(","),
                    e,
                    hint
                ))
            })?,
        );
        let ident = node::ensure_ident(pd.as_ref(), &data_dir, &logger)?;
        let store_id = ident.store_id;

        let (router, inbox) = synthetic::router();
        let worker = Worker::new("addr-resolver");
        let rcfg = ResolverConfig {
            not_found_ttl: cfg.server.store_not_found_cache_ttl.0,
            ..ResolverConfig::default()
        };
        let resolver =
            resolve::new_resolver_with(pd.clone(), &worker, router.clone(), rcfg, logger.clone());
        let client = RaftClient::new(
            store_id,
            ConnectionBuilder::new(
                env.clone(),
                cfg.server.clone(),
                resolver.clone(),
                router.clone(),
            )
            .security(security.clone())
            .logger(logger.clone()),
        );
        let alive = Mutex::new(client.clone());
        let svc = Service::new(store_id, router.clone())
            .with_store_alive_hook(Arc::new(move |s| {
                alive.lock().unwrap().notify_store_alive(s)
            }))
            .with_logger(logger.clone());
        let raft_server = Server::start_with(env, &cfg.server.addr, svc, &security)
            .map_err(|e| format!("cannot bind server.addr {}: {}", cfg.server.addr, e))?;
        let bound_port = raft_server
            .addr()
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(0);
        let addr = if cfg.server.advertise_addr.is_empty() {
            let a = with_port(&cfg.server.addr, bound_port);
            if a.starts_with("0.0.0.0:") || a.starts_with("[::]:") {
                return Err(format!(
                    "server.addr {} listens on every interface: set advertise-addr to the address other stores reach",
                    cfg.server.addr
                )
                .into());
            }
            a
        } else {
            cfg.server.advertise_addr.clone()
        };

        let meta = StoreMeta {
            address: addr.clone(),
            status_address: String::new(),
            labels: cfg
                .server
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            deploy_path: std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.display().to_string()))
                .unwrap_or_default(),
            start_timestamp: node::unix_secs(),
        };
        let traffic = Arc::new(Mutex::new(Traffic::new(store_id, &router)));
        let heartbeats = Arc::new(HeartbeatState::default());
        let source = Arc::new(Source {
            store_id,
            cluster_id: ident.cluster_id,
            meta: Mutex::new(meta.clone()),
            pd: pd.clone(),
            client: client.clone(),
            traffic: traffic.clone(),
            heartbeats: heartbeats.clone(),
            resolver,
        });
        let status = if cfg.server.status_addr.is_empty() {
            None
        } else {
            let s = StatusServer::start(
                &cfg.server.status_addr,
                source.clone(),
                security.clone(),
                logger.clone(),
            )?;
            let a = with_port(&cfg.server.status_addr, s.addr().port());
            source.meta.lock().unwrap().status_address = a;
            Some(s)
        };
        let meta = source.meta.lock().unwrap().clone();
        node::register(pd.as_ref(), meta.to_store(store_id), &data_dir, &logger)?;
        info!(logger, "store registered"; "store_id" => store_id, "address" => &addr,
            "status_address" => &meta.status_address);
        traffic.lock().unwrap().spawn(
            &cfg.raftstore,
            pd.clone(),
            client.clone(),
            inbox,
            logger.clone(),
        );

        let (hb_stop, hb_rx) = channel::bounded::<()>(1);
        let interval = cfg.raftstore.pd_store_heartbeat_tick_interval.0;
        let (pd2, tr2, log2) = (pd.clone(), traffic.clone(), logger.clone());
        let start_ts = meta.start_timestamp;
        let hb = std::thread::Builder::new()
            .name("pd-heartbeat".to_owned())
            .spawn(move || {
                heartbeat_loop(
                    &*pd2,
                    store_id,
                    start_ts,
                    interval,
                    &tr2,
                    &heartbeats,
                    hb_rx,
                    &log2,
                )
            })
            .map_err(|e| format!("cannot start the heartbeat thread: {}", e))?;
        Ok(TikvServer {
            store_id,
            addr,
            status_addr: status.as_ref().map(|_| meta.status_address.clone()),
            client,
            raft_server,
            status,
            traffic,
            heartbeat: Some((hb_stop, hb)),
            _worker: worker,
            _data_dir: data_dir,
            logger,
        })
    }

    /// Stops everything: traffic, heartbeats, the raft client (pending
    /// messages are reported unreachable), the raft service and the status
    /// server. Nothing is deregistered from PD.
    pub fn stop(&mut self) {
        self.traffic.lock().unwrap().stop();
        if let Some((tx, h)) = self.heartbeat.take() {
            let _ = tx.send(());
            let _ = h.join();
        }
        self.client.stop();
        self.raft_server.stop();
        if let Some(mut s) = self.status.take() {
            s.stop();
        }
        let s = self.client.stats();
        info!(self.logger, "tikv-server stopped"; "store_id" => self.store_id,
            "sent" => s.sent, "delivered" => s.delivered, "refused" => s.refused,
            "reported_unreachable" => s.reported_unreachable, "balanced" => s.balanced());
    }
}

#[allow(clippy::too_many_arguments)]
fn heartbeat_loop(
    pd: &dyn PdClient,
    store_id: u64,
    start_ts: i64,
    interval: Duration,
    traffic: &Mutex<Traffic>,
    state: &HeartbeatState,
    stop: Receiver<()>,
    logger: &Logger,
) {
    loop {
        let regions = traffic.lock().unwrap().region_count() as u32;
        node::heartbeat(pd, store_id, regions, start_ts, interval, state, logger);
        match stop.recv_timeout(interval) {
            Err(channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

impl Drop for TikvServer {
    fn drop(&mut self) {
        if self.heartbeat.is_some() {
            self.stop();
        }
    }
}
