//! `tikv-drill`: walks a store through decommission and removal on an
//! embedded cluster (test_pd + three raft services + store 1's raft client)
//! and prints, at each step, what PD answers, what the resolver concludes
//! and what the raft client does, plus a cold-start case.
//!
//! Usage: `tikv-drill [--pd old|new] [--verbose]`
//!   --pd old   PD answers not-found with gRPC status 2-UNKNOWN
//!   --pd new   PD answers with a response header error UNKNOWN (default)
//!   --verbose  print the raft client's log lines (TiKV format) to stderr

use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::Environment;
use kvproto::raft_serverpb::RaftMessage;
use pd_client::{Config as PdConfig, PdClient, RpcClient};
use slog::Level;
use test_pd::{NotFoundShape, Server as PdServer};
use tikv::server::raft_client::StatsSnapshot;
use tikv::server::resolve::{self, resolve_blocking, ResolverConfig};
use tikv::server::{Config, ConnectionBuilder, RaftClient, RecordingExtension, Server, Service};
use tikv_util::config::ReadableDuration;
use tikv_util::worker::Worker;

const VICTIM: u64 = 3;
const LATECOMER: u64 = 4;

fn usage() -> ! {
    eprintln!("usage: tikv-drill [--pd old|new] [--verbose]");
    std::process::exit(2)
}

fn msg(region_id: u64, to: u64) -> RaftMessage {
    let mut m = RaftMessage::default();
    m.set_region_id(region_id);
    m.mut_from_peer().set_id(1000 + region_id);
    m.mut_from_peer().set_store_id(1);
    m.mut_to_peer().set_id(to * 1000 + region_id);
    m.mut_to_peer().set_store_id(to);
    m
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            eprintln!("drill: gave up waiting for {}", what);
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
    true
}

fn pd_answer(pd: &RpcClient, id: u64) -> String {
    match pd.get_store(id) {
        Ok(s) => format!("Ok(state {:?}, {})", s.get_state(), s.get_address()),
        Err(e) => format!("Err({})", short(&format!("{:?}", e))),
    }
}

fn short(s: &str) -> String {
    let s = s.split(", details").next().unwrap_or(s);
    if s.len() > 50 {
        format!("{}...", &s[..47])
    } else {
        s.to_owned()
    }
}

fn main() {
    let mut shape = NotFoundShape::Header;
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pd" => match args.next().as_deref() {
                Some("old") => shape = NotFoundShape::GrpcStatus,
                Some("new") => shape = NotFoundShape::Header,
                _ => usage(),
            },
            "--verbose" => verbose = true,
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {:?}", other);
                usage()
            }
        }
    }
    let log = if verbose {
        tikv_util::logger::stderr_logger(Level::Info)
    } else {
        tikv_util::logger::discard()
    };

    let env = Arc::new(Environment::new(2));
    let pd = PdServer::new(3, shape);
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let ext = RecordingExtension::new();
        let server = Server::start(env.clone(), "127.0.0.1:0", Service::new(id, ext.clone()))
            .expect("start raft service");
        pd.add_store(id, server.addr());
        nodes.push((id, ext, server));
    }
    let pd_cfg = PdConfig::new(pd.endpoints());
    let pd_client = Arc::new(RpcClient::new(&pd_cfg, None, log.clone()).expect("connect PD"));

    let cfg = Config {
        raft_client_initial_reconnect_backoff: ReadableDuration::millis(100),
        raft_client_max_backoff: ReadableDuration::secs(1),
        raft_client_not_found_max_backoff: ReadableDuration::secs(2),
        store_not_found_cache_ttl: ReadableDuration::millis(50),
        ..Config::default()
    };
    cfg.validate().expect("valid config");
    let router = RecordingExtension::new();
    let worker = Worker::new("addr-resolver");
    let rcfg = ResolverConfig {
        not_found_ttl: cfg.store_not_found_cache_ttl.0,
        refresh_interval: Duration::ZERO,
    };
    let resolver = resolve::new_resolver_with(
        pd_client.clone(),
        &worker,
        router.clone(),
        rcfg,
        log.clone(),
    );
    let mut client = RaftClient::new(
        1,
        ConnectionBuilder::new(env, cfg, resolver.clone(), router.clone()).logger(log),
    );

    println!(
        "tikv-drill: embedded PD ({} members, {} not-found shape), stores 1-3 on loopback; store 1 sends to store {}",
        pd.endpoints().len(),
        match shape {
            NotFoundShape::GrpcStatus => "old PD: gRPC 2-UNKNOWN",
            NotFoundShape::Header => "new PD: header UNKNOWN",
        },
        VICTIM
    );
    println!();
    println!(
        "{:<22} | {:<50} | {:<24} | {:<34} | GetStore calls",
        "step", "PD GetStore (pd_client)", "resolve", "raft client"
    );
    println!("{}", "-".repeat(150));

    let victim_ext = nodes[2].1.clone();
    let victim_fed = move || victim_ext.fed_count();
    let mut region = 0u64;
    let mut step = |name: &str, client: &mut RaftClient<_, _>, pd: &PdServer| {
        let answer = pd_answer(&pd_client, VICTIM);
        let verdict = match resolve_blocking(&resolver, VICTIM, Duration::from_secs(10)) {
            Ok(a) => format!("Ok({})", a),
            Err(e) => format!("{:?}", e),
        };
        let before_fed = victim_fed();
        let before = client.stats();
        region += 1;
        let sent = client.send(msg(region, VICTIM));
        client.flush();
        let action = match sent {
            Err(r) => format!("send refused: {:?}", r),
            Ok(()) => {
                let ok = wait("delivery or report", Duration::from_secs(10), || {
                    let s = client.stats();
                    s.delivered > before.delivered
                        || s.reported_unreachable > before.reported_unreachable
                });
                let s = client.stats();
                if !ok {
                    "pending".to_owned()
                } else if s.delivered > before.delivered {
                    wait("fed", Duration::from_secs(5), || victim_fed() > before_fed);
                    "delivered".to_owned()
                } else if client.is_tombstone(VICTIM) {
                    "reported; tombstone, stopped".to_owned()
                } else if let Some((n, b)) = client.not_found_episode(VICTIM) {
                    format!("reported; not-found try {}, next {:?}", n, b)
                } else {
                    "reported unreachable".to_owned()
                }
            }
        };
        println!(
            "{:<22} | {:<50} | {:<24} | {:<34} | {}",
            name,
            answer,
            short(&verdict),
            action,
            pd.get_store_count(VICTIM)
        );
    };

    step("Up", &mut client, &pd);
    pd.set_offline(VICTIM);
    step("Offline", &mut client, &pd);
    // Every region has left the store: PD buries it and its process exits.
    nodes[2].2.stop();
    pd.bury(VICTIM);
    let t = Instant::now();
    step("Tombstone (stopped)", &mut client, &pd);
    let stopped = wait("tombstone verdict", Duration::from_secs(10), || {
        client.is_tombstone(VICTIM)
    });
    println!(
        "{:<22} | raft client stopped reconnecting to store {}: {} ({:?} after the store went away), connections left: {}",
        "",
        VICTIM,
        stopped,
        t.elapsed(),
        client.connection_count()
    );
    pd.remove_tombstone(VICTIM);
    step("remove-tombstone", &mut client, &pd);
    let calls = pd.get_store_count(VICTIM);
    for r in 0..100 {
        let _ = client.send(msg(1000 + r, VICTIM));
    }
    client.flush();
    println!(
        "{:<22} | 100 more sends: all refused Disconnected = {}, new PD calls = {}",
        "after the verdict",
        client.stats().refused >= 101,
        pd.get_store_count(VICTIM) - calls
    );

    // Cold start: a live store that is not registered in PD yet.
    println!();
    println!(
        "cold start: store {} is alive but not registered in PD yet",
        LATECOMER
    );
    let ext4 = RecordingExtension::new();
    let server4 = Server::start(
        Arc::new(Environment::new(1)),
        "127.0.0.1:0",
        Service::new(LATECOMER, ext4.clone()),
    )
    .expect("start store 4");
    client.send(msg(1, LATECOMER)).unwrap();
    client.flush();
    wait("not-found episode", Duration::from_secs(10), || {
        client.not_found_episode(LATECOMER).is_some()
    });
    println!(
        "  before registration: tombstone = {}, not-found episode = {:?}",
        client.is_tombstone(LATECOMER),
        client.not_found_episode(LATECOMER)
    );
    pd.add_store(LATECOMER, server4.addr());
    let t = Instant::now();
    let ok = wait("store 4 delivery", Duration::from_secs(15), || {
        let _ = client.send(msg(2, LATECOMER));
        client.flush();
        ext4.fed_count() > 0
    });
    println!(
        "  after registration: messages flow = {} (after {:?}), tombstone = {}",
        ok,
        t.elapsed(),
        client.is_tombstone(LATECOMER)
    );

    wait("accounting to settle", Duration::from_secs(10), || {
        client.stats().balanced()
    });
    let s: StatsSnapshot = client.stats();
    println!();
    println!(
        "accounting: sent {} = delivered {} + refused {} + reported unreachable {} -> {}",
        s.sent,
        s.delivered,
        s.refused,
        s.reported_unreachable,
        if s.balanced() {
            "balanced"
        } else {
            "UNBALANCED (messages still queued)"
        }
    );
    client.stop();
}
