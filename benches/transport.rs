//! `make bench`: numbers behind the README's claims, on loopback.
//!
//! 1. Resolution latency of a healthy store (a PD round trip each time)
//!    with 0 and with 50 other stores' resolutions stuck at PD.
//! 2. Raft client send throughput to one store over BatchRaft.
//! 3. PD load of a removed store with grpc-raft-conn-num = 4 over a fixed
//!    window, against what one call per connection per step would cost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::Environment;
use kvproto::raft_serverpb::RaftMessage;
use pd_client::{Config as PdConfig, RpcClient};
use test_pd::{Fault, Method, Server as PdServer};
use tikv::server::resolve::{self, resolve_blocking, ResolverConfig, StoreAddrResolver};
use tikv::server::{
    Config, ConnectionBuilder, FakeExtension, RaftClient, RecordingExtension, Server, Service,
};
use tikv_util::config::ReadableDuration;
use tikv_util::worker::Worker;

fn pd_client(pd: &PdServer, timeout: Duration) -> Arc<RpcClient> {
    let mut c = PdConfig::new(pd.endpoints());
    c.request_timeout = ReadableDuration(timeout);
    Arc::new(RpcClient::new(&c, None, tikv_util::logger::discard()).unwrap())
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn bench_resolve(stuck: u64) {
    let pd = PdServer::single();
    pd.add_store(1, "127.0.0.1:20160");
    for id in 100..100 + stuck {
        pd.set_store_fault(Method::GetStore, id, Fault::Drop);
    }
    let w = Worker::new("addr-resolver");
    let cfg = ResolverConfig {
        refresh_interval: Duration::ZERO,
        ..Default::default()
    };
    let r = resolve::new_resolver_with(
        pd_client(&pd, Duration::from_secs(3600)),
        &w,
        FakeExtension,
        cfg,
        tikv_util::logger::discard(),
    );
    for id in 100..100 + stuck {
        r.resolve(id, Box::new(|_| {})).unwrap();
    }
    let n = 500;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        resolve_blocking(&r, 1, Duration::from_secs(10)).unwrap();
        lat.push(t.elapsed());
    }
    println!(
        "resolve healthy store, {:>2} stuck stores: p50 {:>8.3?}  p99 {:>8.3?}  ({} PD round trips)",
        stuck,
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        n
    );
    pd.clear_faults();
}

fn msg(region_id: u64) -> RaftMessage {
    let mut m = RaftMessage::default();
    m.set_region_id(region_id);
    m.mut_from_peer().set_store_id(1);
    m.mut_to_peer().set_store_id(2);
    m.mut_message().set_commit(region_id);
    m
}

fn bench_send() {
    let pd = PdServer::single();
    let ext = RecordingExtension::new();
    let svc = Service::new(2, ext.clone());
    let server = Server::start(Arc::new(Environment::new(2)), "127.0.0.1:0", svc.clone()).unwrap();
    pd.add_store(2, server.addr());
    let w = Worker::new("addr-resolver");
    let r = resolve::new_resolver(pd_client(&pd, Duration::from_secs(2)), &w, FakeExtension);
    let mut c = RaftClient::new(
        1,
        ConnectionBuilder::new(
            Arc::new(Environment::new(2)),
            Config::default(),
            r,
            FakeExtension,
        ),
    );
    // Warm up the connection.
    c.send(msg(0)).unwrap();
    c.flush();
    while svc.received() < 1 {
        std::thread::yield_now();
    }
    let total = 200_000u64;
    let t = Instant::now();
    let mut sent = 0u64;
    let mut full = 0u64;
    while sent < total {
        match c.send(msg(sent)) {
            Ok(()) => sent += 1,
            Err(_) => {
                full += 1;
                c.flush();
                std::thread::yield_now();
            }
        }
        if sent.is_multiple_of(64) {
            c.flush();
        }
    }
    c.flush();
    while svc.received() < total + 1 {
        std::thread::yield_now();
    }
    let el = t.elapsed();
    println!(
        "send {} messages to one store: {:?}, {:.0} msg/s, {} BatchRaft batches (max {}), {} Full refusals retried",
        total,
        el,
        total as f64 / el.as_secs_f64(),
        svc.batches(),
        svc.max_batch(),
        full
    );
    c.stop();
}

fn bench_not_found_load() {
    let pd = PdServer::single();
    let w = Worker::new("addr-resolver");
    let cfg = Config {
        grpc_raft_conn_num: 4,
        raft_client_initial_reconnect_backoff: ReadableDuration::millis(100),
        raft_client_max_backoff: ReadableDuration::millis(800),
        raft_client_not_found_max_backoff: ReadableDuration::millis(800),
        store_not_found_cache_ttl: ReadableDuration::millis(50),
        ..Config::default()
    };
    let rcfg = ResolverConfig {
        not_found_ttl: cfg.store_not_found_cache_ttl.0,
        ..Default::default()
    };
    let r = resolve::new_resolver_with(
        pd_client(&pd, Duration::from_secs(2)),
        &w,
        FakeExtension,
        rcfg,
        tikv_util::logger::discard(),
    );
    let mut c = RaftClient::new(
        1,
        ConnectionBuilder::new(Arc::new(Environment::new(1)), cfg, r, FakeExtension),
    );
    let window = Duration::from_secs(5);
    let t = Instant::now();
    for region in 0..4 {
        c.send(msg(region)).unwrap();
    }
    c.flush();
    while t.elapsed() < window {
        std::thread::park_timeout(window - t.elapsed());
    }
    let calls = pd.get_store_count(2);
    let steps = c.not_found_episode(2).map_or(0, |e| e.0);
    c.stop();
    println!(
        "removed store, 4 connections, {:?}: {} GetStore calls for {} backoff steps (one call per connection per step would be {})",
        window,
        calls,
        steps,
        steps * 4
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "tikv transport benchmarks (loopback, {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    bench_resolve(0);
    bench_resolve(50);
    bench_send();
    bench_not_found_load();
}
