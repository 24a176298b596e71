//! `RpcClient`: the PD client over grpcio.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use grpcio::{CallOption, ChannelBuilder, ClientUnaryReceiver, Environment};
use kvproto::metapb;
use kvproto::pdpb::{self, GetMembersRequest, GetMembersResponse};
use security::SecurityManager;
use slog::{debug, info, warn, Logger};

use crate::config::Config;
use crate::errors::{other, Error, Result};
use crate::metrics::*;
use crate::util::{check_resp_header, classify_get_store, is_retryable, normalize_endpoint};
use crate::{PdClient, PdFuture};

/// How often a start-up wait for PD looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Counters of reconnect attempts, readable by tests.
#[derive(Default, Debug)]
pub struct ReconnectStats {
    /// Reconnects started.
    pub try_connect: AtomicU64,
    /// Reconnects refused because the last one was too recent.
    pub cancel: AtomicU64,
    /// Reconnects that found and connected to a leader.
    pub success: AtomicU64,
    /// Reconnects that failed.
    pub failure: AtomicU64,
}

impl ReconnectStats {
    /// Attempts actually made (`try_connect`).
    pub fn attempts(&self) -> u64 {
        self.try_connect.load(Ordering::SeqCst)
    }
}

struct Leader {
    client: pdpb::PdClient,
    members: GetMembersResponse,
    target: String,
    last_try_reconnect: Option<Instant>,
}

struct Shared {
    env: Connector,
    cfg: Config,
    endpoints: Vec<String>,
    cluster_id: u64,
    leader: RwLock<Leader>,
    stats: ReconnectStats,
    logger: Logger,
}

/// The PD client: discovers the leader, keeps one channel to it, reconnects
/// (throttled) when transport or leadership fails.
#[derive(Clone)]
pub struct RpcClient {
    shared: Arc<Shared>,
}

fn header(cluster_id: u64) -> pdpb::RequestHeader {
    let mut h = pdpb::RequestHeader::default();
    h.set_cluster_id(cluster_id);
    h
}

fn call_opt(cfg: &Config) -> CallOption {
    CallOption::default().timeout(cfg.request_timeout.0)
}

/// What a PD channel is made with: the gRPC environment and `[security]`.
struct Connector {
    env: Arc<Environment>,
    security: Arc<SecurityManager>,
}

fn connect(env: &Connector, addr: &str) -> pdpb::PdClient {
    let cb = ChannelBuilder::new(env.env.clone())
        .max_reconnect_backoff(std::time::Duration::from_secs(1));
    pdpb::PdClient::new(env.security.connect(cb, addr))
}

async fn get_members(
    env: &Connector,
    cfg: &Config,
    addr: &str,
) -> Result<(pdpb::PdClient, GetMembersResponse)> {
    let client = connect(env, addr);
    let mut req = GetMembersRequest::default();
    req.set_header(header(0));
    let resp = client.get_members_async_opt(&req, call_opt(cfg))?.await?;
    check_resp_header(resp.get_header(), 0, None)?;
    Ok((client, resp))
}

/// The leader named in `members`: its address and a client for it, reusing
/// `probe` (the channel the members came from) when that is the leader.
fn leader_client(
    env: &Connector,
    members: &GetMembersResponse,
    probe: (&str, pdpb::PdClient),
) -> Result<(pdpb::PdClient, String)> {
    let urls = members.get_leader().get_client_urls();
    let mut last_err = other(format!("PD at {} reports no leader", probe.0));
    for url in urls {
        match normalize_endpoint(url) {
            Ok(target) if target == probe.0 => return Ok((probe.1, target)),
            Ok(target) => return Ok((connect(env, &target), target)),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// Asks each candidate for the members and connects to the leader.
async fn connect_leader(
    env: &Connector,
    cfg: &Config,
    candidates: &[String],
    cluster_id: u64,
    logger: &Logger,
) -> Result<(pdpb::PdClient, GetMembersResponse, String)> {
    let mut last_err = other("no PD endpoint answered");
    for addr in candidates {
        let (probe, members) = match get_members(env, cfg, addr).await {
            Ok(r) => r,
            Err(e) => {
                warn!(logger, "failed to get PD members"; "endpoint" => addr, "err" => %e);
                last_err = e;
                continue;
            }
        };
        let got = members.get_header().get_cluster_id();
        if cluster_id != 0 && got != cluster_id {
            last_err = other(format!(
                "PD response cluster_id mismatch, want {}, got {} from {}",
                cluster_id, got, addr
            ));
            warn!(logger, "PD cluster id mismatch"; "endpoint" => addr, "want" => cluster_id, "got" => got);
            continue;
        }
        match leader_client(env, &members, (addr, probe)) {
            Ok((client, target)) => return Ok((client, members, target)),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

impl Shared {
    fn candidates(&self) -> Vec<String> {
        let mut c = self.endpoints.clone();
        let leader = self.leader.read().unwrap();
        for m in leader.members.get_members() {
            for url in m.get_client_urls() {
                if let Ok(u) = normalize_endpoint(url) {
                    if !c.contains(&u) {
                        c.push(u);
                    }
                }
            }
        }
        c
    }

    /// Reconnects to the current leader, at most once per reconnect interval.
    async fn reconnect(&self) -> Result<()> {
        {
            let mut l = self.leader.write().unwrap();
            let now = Instant::now();
            if let Some(t) = l.last_try_reconnect {
                if now.saturating_duration_since(t) < self.cfg.reconnect_interval.0 {
                    self.stats.cancel.fetch_add(1, Ordering::SeqCst);
                    PD_RECONNECT_COUNTER_VEC
                        .with_label_values(&["cancel"])
                        .inc();
                    return Err(other("cancel reconnection due to too small interval"));
                }
            }
            l.last_try_reconnect = Some(now);
        }
        self.stats.try_connect.fetch_add(1, Ordering::SeqCst);
        PD_RECONNECT_COUNTER_VEC
            .with_label_values(&["try_connect"])
            .inc();
        let candidates = self.candidates();
        match connect_leader(
            &self.env,
            &self.cfg,
            &candidates,
            self.cluster_id,
            &self.logger,
        )
        .await
        {
            Ok((client, members, target)) => {
                let mut l = self.leader.write().unwrap();
                if l.target != target {
                    info!(self.logger, "connected to PD leader"; "endpoint" => &target, "previous" => &l.target);
                }
                l.client = client;
                l.members = members;
                l.target = target;
                self.stats.success.fetch_add(1, Ordering::SeqCst);
                PD_RECONNECT_COUNTER_VEC
                    .with_label_values(&["success"])
                    .inc();
                Ok(())
            }
            Err(e) => {
                self.stats.failure.fetch_add(1, Ordering::SeqCst);
                PD_RECONNECT_COUNTER_VEC
                    .with_label_values(&["failure"])
                    .inc();
                Err(e)
            }
        }
    }

    /// Runs `f` against the leader; retries transport and leadership
    /// failures with a throttled reconnect, returns anything else at once.
    async fn request<Resp, F>(self: Arc<Self>, method: &'static str, f: F) -> Result<Resp>
    where
        Resp: Unpin,
        F: Fn(&pdpb::PdClient, CallOption) -> grpcio::Result<ClientUnaryReceiver<Resp>>,
    {
        let start = Instant::now();
        let mut attempt = 0;
        let res = loop {
            attempt += 1;
            let client = self.leader.read().unwrap().client.clone();
            let r = match f(&client, call_opt(&self.cfg)) {
                Ok(rx) => rx.await,
                Err(e) => Err(e),
            };
            match r {
                Ok(resp) => break Ok(resp),
                Err(e) if is_retryable(&e) && attempt < self.cfg.request_attempts() => {
                    warn!(self.logger, "PD request failed, will retry";
                        "method" => method, "attempt" => attempt, "err" => %e);
                    if let Err(re) = self.reconnect().await {
                        warn!(self.logger, "reconnect PD failed"; "err" => %re);
                    }
                    tikv_util::timer::sleep(self.cfg.retry_interval.0).await;
                }
                Err(e) => break Err(e),
            }
        };
        PD_REQUEST_HISTOGRAM_VEC
            .with_label_values(&[method])
            .observe(start.elapsed().as_secs_f64());
        res.map_err(Error::Grpc)
    }
}

fn observe<T>(method: &str, r: Result<T>) -> Result<T> {
    if let Err(e) = &r {
        PD_REQUEST_FAILURE_COUNTER_VEC
            .with_label_values(&[method, e.kind()])
            .inc();
    }
    r
}

/// One round of startup discovery: every endpoint asked for the members.
async fn discover(
    env: &Connector,
    cfg: &Config,
    endpoints: &[String],
    logger: &Logger,
) -> Result<(u64, pdpb::PdClient, GetMembersResponse, String)> {
    // Every answering endpoint must agree on the cluster id; the
    // first answer names the leader.
    let mut first: Option<(String, pdpb::PdClient, GetMembersResponse)> = None;
    let mut last_err = other("no PD endpoint answered");
    for ep in endpoints {
        match get_members(env, cfg, ep).await {
            Ok((probe, m)) => match &first {
                None => first = Some((ep.clone(), probe, m)),
                Some((_, _, f)) => {
                    let (want, got) = (
                        f.get_header().get_cluster_id(),
                        m.get_header().get_cluster_id(),
                    );
                    if want != got {
                        return Err(other(format!(
                            "PD response cluster_id mismatch, want {}, got {} from {}",
                            want, got, ep
                        )));
                    }
                }
            },
            Err(e) => {
                debug!(logger, "PD endpoint unreachable"; "endpoint" => ep, "err" => %e);
                last_err = e;
            }
        }
    }
    let (ep, probe, members) = first.ok_or(last_err)?;
    let (client, target) = match leader_client(env, &members, (&ep, probe)) {
        Ok(c) => c,
        // The first endpoint knows no usable leader: ask them all.
        Err(_) => {
            let id = members.get_header().get_cluster_id();
            let (client, members, target) = connect_leader(env, cfg, endpoints, id, logger).await?;
            return Ok((id, client, members, target));
        }
    };
    Ok((
        members.get_header().get_cluster_id(),
        client,
        members,
        target,
    ))
}

impl RpcClient {
    /// Connects to PD: asks each endpoint for the members until one answers,
    /// learns the cluster id and connects to the leader. Endpoints that
    /// answer with a different cluster id are an error.
    pub fn new(cfg: &Config, env: Option<Arc<Environment>>, logger: Logger) -> Result<RpcClient> {
        RpcClient::new_with_security(cfg, env, SecurityManager::plaintext(), logger)
    }

    /// As [`new`](Self::new), connecting with `security` (TLS when it is
    /// configured; certificate files are read again for each new channel).
    pub fn new_with_security(
        cfg: &Config,
        env: Option<Arc<Environment>>,
        security: Arc<SecurityManager>,
        logger: Logger,
    ) -> Result<RpcClient> {
        let never = AtomicBool::new(false);
        Self::new_with_stop(cfg, env, security, logger, &never)
    }

    /// As [`new_with_security`](Self::new_with_security); while it waits
    /// for PD at start, `stop` set ends the wait with [`Error::Stopped`]
    /// within one round (`retry-interval` plus a round's timeouts).
    pub fn new_with_stop(
        cfg: &Config,
        env: Option<Arc<Environment>>,
        security: Arc<SecurityManager>,
        logger: Logger,
        stop: &AtomicBool,
    ) -> Result<RpcClient> {
        cfg.validate()?;
        let env = Connector {
            env: env.unwrap_or_else(|| Arc::new(Environment::new(1))),
            security,
        };
        let endpoints: Vec<String> = cfg
            .endpoints
            .iter()
            .map(|e| normalize_endpoint(e))
            .collect::<Result<_>>()?;
        // As upstream's `RpcClient::new` (its `validate_endpoints` loop): the
        // endpoints are tried again, up to `retry-max-count` more rounds
        // (unlimited by default), when none answered (PD not started yet, or
        // a slow first connection); a cluster id mismatch is final. One log
        // line per `retry-log-every` rounds.
        let retries = cfg.start_retries();
        let (cluster_id, client, members, target) = block_on(async {
            let mut round: u64 = 0;
            loop {
                match discover(&env, cfg, &endpoints, &logger).await {
                    Err(e) if retries.is_none_or(|n| round < n) && e.is_transport() => {
                        round += 1;
                        if (round - 1).is_multiple_of(cfg.retry_log_every as u64) {
                            warn!(logger, "PD is not reachable yet, retrying";
                                "endpoints" => endpoints.join(","), "attempts" => round,
                                "retry_interval" => ?cfg.retry_interval.0, "err" => %e);
                        }
                        let until = Instant::now() + cfg.retry_interval.0;
                        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                            let step = (until - Instant::now()).min(STOP_CHECK);
                            tikv_util::timer::sleep(step).await;
                        }
                        if stop.load(Ordering::SeqCst) {
                            break Err(Error::Stopped);
                        }
                    }
                    r => break r,
                }
            }
        })?;
        info!(logger, "connected to PD"; "cluster_id" => cluster_id, "leader" => &target);
        Ok(RpcClient {
            shared: Arc::new(Shared {
                env,
                cfg: cfg.clone(),
                endpoints,
                cluster_id,
                leader: RwLock::new(Leader {
                    client,
                    members,
                    target,
                    last_try_reconnect: None,
                }),
                stats: ReconnectStats::default(),
                logger,
            }),
        })
    }

    /// The leader's address this client talks to.
    pub fn leader_addr(&self) -> String {
        self.shared.leader.read().unwrap().target.clone()
    }

    /// Reconnect counters.
    pub fn reconnect_stats(&self) -> &ReconnectStats {
        &self.shared.stats
    }

    /// A request header for this cluster.
    fn header(&self) -> pdpb::RequestHeader {
        header(self.shared.cluster_id)
    }

    /// One blocking unary call: sent to the leader with `request`'s retry
    /// policy, its answer checked by `check` (given the cluster id), and
    /// failures counted under `method`.
    fn unary<Req, Resp: Unpin, T>(
        &self,
        method: &'static str,
        req: Req,
        rpc: fn(&pdpb::PdClient, &Req, CallOption) -> grpcio::Result<ClientUnaryReceiver<Resp>>,
        check: impl FnOnce(Resp, u64) -> Result<T>,
    ) -> Result<T> {
        let shared = self.shared.clone();
        let cluster_id = shared.cluster_id;
        let r = block_on(shared.request(method, move |c, opt| rpc(c, &req, opt)))
            .and_then(|resp| check(resp, cluster_id));
        observe(method, r)
    }

    /// Forces a (throttled) reconnect to the leader.
    pub fn reconnect(&self) -> Result<()> {
        block_on(self.shared.reconnect())
    }
}

impl PdClient for RpcClient {
    fn get_cluster_id(&self) -> Result<u64> {
        Ok(self.shared.cluster_id)
    }

    fn get_store_async(&self, store_id: u64) -> PdFuture<metapb::Store> {
        let shared = self.shared.clone();
        let cluster_id = shared.cluster_id;
        // A transport failure of GetStore after the retries, as PD trouble
        // looks to callers: "unavailable" or "timeout".
        fail::fail_point!("pd_client_get_store", |arg| {
            let code = match arg.as_deref() {
                Some("timeout") => grpcio::RpcStatusCode::DEADLINE_EXCEEDED,
                _ => grpcio::RpcStatusCode::UNAVAILABLE,
            };
            let status =
                grpcio::RpcStatus::with_message(code, "injected by pd_client_get_store".into());
            Box::pin(futures::future::ready(Err(Error::Grpc(
                grpcio::Error::RpcFailure(status),
            ))))
        });
        Box::pin(async move {
            let mut req = pdpb::GetStoreRequest::default();
            req.set_header(header(cluster_id));
            req.set_store_id(store_id);
            let resp = shared
                .request("get_store", move |c, opt| c.get_store_async_opt(&req, opt))
                .await;
            let resp = match resp {
                Ok(r) => Ok(r),
                Err(Error::Grpc(e)) => Err(e),
                Err(e) => return observe("get_store", Err(e)),
            };
            observe("get_store", classify_get_store(store_id, cluster_id, resp))
        })
    }

    fn get_all_stores(&self, exclude_tombstone: bool) -> Result<Vec<metapb::Store>> {
        let mut req = pdpb::GetAllStoresRequest::default();
        req.set_header(self.header());
        req.set_exclude_tombstone_stores(exclude_tombstone);
        self.unary(
            "get_all_stores",
            req,
            pdpb::PdClient::get_all_stores_async_opt,
            |mut resp, cid| {
                check_resp_header(resp.get_header(), cid, None)?;
                Ok(resp.take_stores().into_vec())
            },
        )
    }

    fn put_store(&self, store: metapb::Store) -> Result<()> {
        let store_id = store.get_id();
        let mut req = pdpb::PutStoreRequest::default();
        req.set_header(self.header());
        req.set_store(store);
        self.unary(
            "put_store",
            req,
            pdpb::PdClient::put_store_async_opt,
            |resp, cid| check_resp_header(resp.get_header(), cid, Some(store_id)),
        )
    }

    fn alloc_id(&self) -> Result<u64> {
        let mut req = pdpb::AllocIDRequest::default();
        req.set_header(self.header());
        self.unary(
            "alloc_id",
            req,
            pdpb::PdClient::alloc_id_async_opt,
            |resp, cid| {
                check_resp_header(resp.get_header(), cid, None)?;
                match resp.get_id() {
                    0 => Err(crate::errors::other("PD allocated id 0")),
                    id => Ok(id),
                }
            },
        )
    }

    fn is_cluster_bootstrapped(&self) -> Result<bool> {
        let mut req = pdpb::IsBootstrappedRequest::default();
        req.set_header(self.header());
        self.unary(
            "is_cluster_bootstrapped",
            req,
            pdpb::PdClient::is_bootstrapped_async_opt,
            |resp, cid| {
                check_resp_header(resp.get_header(), cid, None)?;
                Ok(resp.get_bootstrapped())
            },
        )
    }

    fn bootstrap_cluster(&self, store: metapb::Store, region: metapb::Region) -> Result<()> {
        let mut req = pdpb::BootstrapRequest::default();
        req.set_header(self.header());
        req.set_store(store);
        req.set_region(region);
        self.unary(
            "bootstrap_cluster",
            req,
            pdpb::PdClient::bootstrap_async_opt,
            |resp, cid| check_resp_header(resp.get_header(), cid, None),
        )
    }

    fn store_heartbeat(&self, stats: pdpb::StoreStats) -> Result<()> {
        let store_id = stats.get_store_id();
        let mut req = pdpb::StoreHeartbeatRequest::default();
        req.set_header(self.header());
        req.set_stats(stats);
        self.unary(
            "store_heartbeat",
            req,
            pdpb::PdClient::store_heartbeat_async_opt,
            |resp, cid| check_resp_header(resp.get_header(), cid, Some(store_id)),
        )
    }
}
