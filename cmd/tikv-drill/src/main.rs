//! `tikv-drill`: walks a store through decommission and removal and checks,
//! at each step, what PD answers, what the resolver concludes and what the
//! raft client does, plus a cold-start case. In-process by default (test_pd,
//! three raft services and store 1's raft client); `--processes` walks the
//! same scenario on real `test-pd` and `tikv-server` processes, then the
//! start-order walk (a store started before PD, a store on a live store's
//! address; `test_lab::startup`). Prints one
//! report (a table, or JSON with `--json`) and exits 1 when an expectation
//! failed.
//!
//! Usage: `tikv-drill [--pd old|new] [--processes | --hosts] [--json] [--verbose] [--plot FILE.svg]`
//!   --pd old      PD answers not-found with gRPC status 2-UNKNOWN
//!   --pd new      PD answers with a response header error UNKNOWN (default)
//!   --hosts       as root: the powered-off store on hosts of their own
//!                 (network namespaces; `test_lab::host_walk`)
//!   --processes   spawn test-pd and tikv-servers (built by cargo) instead
//!   --json        print the report as JSON on stdout
//!   --verbose     print the raft client's log lines (TiKV format) to stderr
//!   --plot F.svg  also draw the walk's timeline (PD GetStore calls,
//!                 connection attempts, messages delivered / refused /
//!                 reported, per step over time) into F.svg (the in-process
//!                 walk only: with --processes or --hosts it is a usage error)

use std::sync::Arc;
use std::time::{Duration, Instant};

use tikv::server::raft_client::DiscardReason;

use grpcio::Environment;
use kvproto::raft_serverpb::RaftMessage;
use pd_client::{Config as PdConfig, PdClient, RpcClient};
use slog::Level;
use test_lab::report::Counters;
use test_lab::{Progress, Report};
use test_pd::{NotFoundShape, Server as PdServer};
use tikv::server::resolve::{self, resolve_blocking, ResolverConfig};
use tikv::server::{Config, ConnectionBuilder, RaftClient, RecordingExtension, Server, Service};
use tikv_util::config::ReadableDuration;
use tikv_util::worker::Worker;

const VICTIM: u64 = 3;
const LATECOMER: u64 = 4;

fn usage() -> ! {
    eprintln!("usage: tikv-drill [--pd old|new] [--processes | --hosts] [--json] [--verbose] [--plot FILE.svg]");
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

/// The stale regions as the report shows them: the first few ids, how
/// many in all.
fn stale_regions(v: &tikv::server::raft_client::StaleStoreView) -> String {
    let ids: Vec<String> = v
        .regions
        .iter()
        .take(5)
        .map(|r| r.region_id.to_string())
        .collect();
    format!(
        "regions kept: {} ({} messages of regions beyond the list): {}{}",
        v.regions.len(),
        v.unlisted_messages,
        ids.join(", "),
        if v.regions.len() > 5 { ", ..." } else { "" }
    )
}

fn pd_answer(pd: &RpcClient, id: u64) -> String {
    match pd.get_store(id) {
        Ok(s) => format!("Ok(state {:?})", s.get_state()),
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

struct Args {
    shape: NotFoundShape,
    processes: bool,
    hosts: bool,
    json: bool,
    verbose: bool,
    plot: Option<std::path::PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        shape: NotFoundShape::Header,
        processes: false,
        hosts: false,
        json: false,
        verbose: false,
        plot: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(x) = args.next() {
        match x.as_str() {
            "--pd" => match args.next().as_deref() {
                Some("old") => a.shape = NotFoundShape::GrpcStatus,
                Some("new") => a.shape = NotFoundShape::Header,
                _ => usage(),
            },
            "--processes" => a.processes = true,
            "--hosts" => a.hosts = true,
            "--json" => a.json = true,
            "--verbose" => a.verbose = true,
            "--plot" => match args.next() {
                Some(f) if !f.is_empty() && !f.starts_with("--") => a.plot = Some(f.into()),
                _ => usage(),
            },
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {:?}", other);
                usage()
            }
        }
    }
    a
}

fn main() {
    let args = parse_args();
    let flavor = match args.shape {
        NotFoundShape::GrpcStatus => "old",
        NotFoundShape::Header => "new",
    };
    let progress = Progress::new(!args.json);
    if args.processes && args.hosts {
        usage();
    }
    if args.plot.is_some() && (args.processes || args.hosts) {
        eprintln!("tikv-drill: --plot draws the in-process walk only");
        usage();
    }
    let report = if args.hosts {
        if !args.json {
            println!(
                "tikv-drill: a powered-off store on network-namespace hosts ({} PD), binaries from {}",
                flavor,
                test_lab::process::bin_dir().display()
            );
        }
        if let Some(why) = test_lab::hosts::unavailable() {
            eprintln!("tikv-drill: --hosts cannot run here: {}", why);
            std::process::exit(1)
        }
        match test_lab::host_walk::powered_off_walk(flavor, progress) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tikv-drill: cannot run the walk on hosts: {}", e);
                std::process::exit(1)
            }
        }
    } else if args.processes {
        if !args.json {
            println!(
                "tikv-drill: test-pd ({} PD) and tikv-server processes from {}",
                flavor,
                test_lab::process::bin_dir().display()
            );
        }
        // The removed-store walk, then the start-order walk (a store
        // started before PD; a store on a live store's address).
        let walks = test_lab::scenario::removed_store_walk(flavor, progress).and_then(|mut r| {
            let s = test_lab::startup::startup_walk(flavor, progress)?;
            r.steps.extend(s.steps);
            Ok(r)
        });
        match walks {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tikv-drill: cannot run the walk on processes: {}", e);
                std::process::exit(1)
            }
        }
    } else {
        in_process(&args, flavor, progress)
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!();
        print!("{}", report.table());
    }
    if let Some(path) = &args.plot {
        let written = test_lab::plot::svg(&report)
            .and_then(|svg| std::fs::write(path, svg).map_err(|e| e.to_string()));
        match written {
            Ok(()) if !args.json => println!("timeline drawn to {}", path.display()),
            Ok(()) => {}
            Err(e) => {
                eprintln!("tikv-drill: cannot draw {}: {}", path.display(), e);
                std::process::exit(1);
            }
        }
    }
    if !report.passed() {
        std::process::exit(1);
    }
}

/// Message accounting and delivery waits for the in-process walk.
fn in_process(args: &Args, flavor: &str, progress: Progress) -> Report {
    let log = if args.verbose {
        tikv_util::logger::stderr_logger(Level::Info)
    } else {
        tikv_util::logger::discard()
    };
    let mut r = Report::new("in-process", flavor);
    let env = Arc::new(Environment::new(2));
    let pd = PdServer::new(3, args.shape);
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
    if !args.json {
        println!(
            "tikv-drill: embedded PD ({} members, {} PD), stores 1-3 on loopback; store 1 sends to store {}",
            pd.endpoints().len(),
            flavor,
            VICTIM
        );
    }

    // The timeline for `--plot`: PD's and the connections' counts for the
    // two stores the walk is about (the removed one, the latecomer), the
    // sender's message counts.
    macro_rules! sample {
        ($r:expr, $step:expr) => {{
            let s = client.stats();
            $r.sample(
                $step,
                Counters {
                    get_store_calls: pd.get_store_count(VICTIM) + pd.get_store_count(LATECOMER),
                    connection_attempts: client.connection_attempts(VICTIM)
                        + client.connection_attempts(LATECOMER),
                    delivered: s.delivered,
                    refused: s.refused,
                    reported: s.reported_unreachable,
                },
            );
        }};
    }
    sample!(r, "start");
    let victim_ext = nodes[2].1.clone();
    let mut region = 0u64;
    // One message to the victim; what PD, the resolver and the raft client
    // say about it.
    let mut step = |client: &mut RaftClient<_, _>, pd: &PdServer| -> (String, String) {
        let answer = pd_answer(&pd_client, VICTIM);
        let verdict = match resolve_blocking(&resolver, VICTIM, Duration::from_secs(10)) {
            Ok(_) => "Ok(address)".to_owned(),
            Err(e) => short(&format!("{:?}", e)),
        };
        let before_fed = victim_ext.fed_count();
        let before = client.stats();
        region += 1;
        let sent = client.send(msg(region, VICTIM));
        client.flush();
        let action = match sent {
            Err(reason) => format!("send refused: {:?}", reason),
            Ok(()) => {
                let done = progress.wait("delivery or report", Duration::from_secs(10), || {
                    let s = client.stats();
                    (s.delivered > before.delivered
                        || s.reported_unreachable > before.reported_unreachable)
                        .then_some(s)
                });
                match done {
                    None => "pending".to_owned(),
                    Some(s) if s.delivered > before.delivered => {
                        let fed = progress.wait(
                            "the store to receive it",
                            Duration::from_secs(5),
                            || (victim_ext.fed_count() > before_fed).then_some(()),
                        );
                        if fed.is_some() {
                            "delivered".into()
                        } else {
                            "written, not received".into()
                        }
                    }
                    Some(_) if client.is_tombstone(VICTIM) => {
                        "reported; tombstone, stopped".to_owned()
                    }
                    Some(_) => match client.not_found_episode(VICTIM) {
                        Some((n, b)) => format!("reported; not-found try {}, next {:?}", n, b),
                        None => "reported unreachable".to_owned(),
                    },
                }
            }
        };
        (
            format!(
                "PD {} | resolve {} | {} | GetStore calls {}",
                answer,
                verdict,
                action,
                pd.get_store_count(VICTIM)
            ),
            action,
        )
    };

    let (obs, action) = step(&mut client, &pd);
    r.check("Up", "delivered", obs, action == "delivered");
    sample!(r, "Up");
    pd.set_offline(VICTIM);
    let (obs, action) = step(&mut client, &pd);
    r.check(
        "Offline",
        "delivered (an Offline store still serves)",
        obs,
        action == "delivered",
    );
    sample!(r, "Offline");
    // Every region has left the store: PD buries it and its process exits.
    nodes[2].2.stop();
    pd.bury(VICTIM);
    let t = Instant::now();
    let (obs, action) = step(&mut client, &pd);
    r.check(
        "Tombstone (stopped)",
        "not delivered: reported to raftstore",
        obs,
        action.starts_with("reported"),
    );
    sample!(r, "Tombstone (stopped)");
    // The stale peers on the store keep sending heartbeats (one per 20ms
    // here): that traffic drives the connection to its verdict; an idle
    // connection would wait for a message.
    let mut beat = 1_000_000u64;
    let stopped = progress
        .wait("tombstone verdict", Duration::from_secs(10), || {
            if client.is_tombstone(VICTIM) {
                return Some(());
            }
            beat += 1;
            let _ = client.send(msg(beat, VICTIM));
            client.flush();
            if beat.is_multiple_of(5) {
                sample!(r, "Tombstone (stopped)");
            }
            None
        })
        .is_some();
    r.check(
        "Tombstone (stopped)",
        "tombstone verdict, no connection left to the store",
        format!(
            "verdict {} after {:?}, connections to it {}",
            stopped,
            t.elapsed(),
            client
                .pool_view()
                .connections
                .get(&VICTIM)
                .copied()
                .unwrap_or(0)
        ),
        stopped && !client.pool_view().connections.contains_key(&VICTIM),
    );
    sample!(r, "Tombstone (stopped)");
    // The stale peers' regions: what an operator removes with pd-ctl.
    let stale = client
        .pool_view()
        .stale_regions
        .get(&VICTIM)
        .cloned()
        .unwrap_or_default();
    r.check(
        "Tombstone (stopped)",
        "the regions still sending to the store are named",
        stale_regions(&stale),
        !stale.regions.is_empty(),
    );
    pd.remove_tombstone(VICTIM);
    let calls = pd.get_store_count(VICTIM);
    let (obs, action) = step(&mut client, &pd);
    r.check(
        "remove-tombstone",
        "refused at send (Disconnected); the only GetStore is the drill's own",
        obs,
        action == format!("send refused: {:?}", DiscardReason::Disconnected)
            && pd.get_store_count(VICTIM) == calls + 1,
    );
    sample!(r, "remove-tombstone");
    let calls = pd.get_store_count(VICTIM);
    let refused = client.stats().refused;
    for i in 0..100 {
        let _ = client.send(msg(1000 + i, VICTIM));
    }
    client.flush();
    r.check(
        "after the verdict",
        "100 more sends refused, 0 GetStore calls",
        format!(
            "refused {}, GetStore calls {}",
            client.stats().refused - refused,
            pd.get_store_count(VICTIM) - calls
        ),
        client.stats().refused - refused == 100 && pd.get_store_count(VICTIM) == calls,
    );
    sample!(r, "after the verdict");

    // Cold start: a live store that is not registered in PD yet.
    let ext4 = RecordingExtension::new();
    let server4 = Server::start(
        Arc::new(Environment::new(1)),
        "127.0.0.1:0",
        Service::new(LATECOMER, ext4.clone()),
    )
    .expect("start store 4");
    client.send(msg(1, LATECOMER)).expect("queued");
    client.flush();
    let episode = progress.wait("not-found episode", Duration::from_secs(10), || {
        client.not_found_episode(LATECOMER)
    });
    r.check(
        "cold start",
        "unregistered store: not-found episode, not tombstone",
        format!(
            "episode {:?}, tombstone {}",
            episode,
            client.is_tombstone(LATECOMER)
        ),
        episode.is_some() && !client.is_tombstone(LATECOMER),
    );
    sample!(r, "cold start");
    pd.add_store(LATECOMER, server4.addr());
    let t = Instant::now();
    let flowed = progress.wait(
        "messages to the registered store",
        Duration::from_secs(15),
        || {
            let _ = client.send(msg(2, LATECOMER));
            client.flush();
            sample!(r, "cold start");
            (ext4.fed_count() > 0).then(|| t.elapsed())
        },
    );
    r.check(
        "cold start",
        "registered: messages flow, never tombstone",
        format!(
            "flow after {:?}, tombstone {}",
            flowed,
            client.is_tombstone(LATECOMER)
        ),
        flowed.is_some() && !client.is_tombstone(LATECOMER),
    );
    let balanced = progress.wait("accounting to settle", Duration::from_secs(10), || {
        let s = client.stats();
        s.balanced().then_some(s)
    });
    let s = client.stats();
    r.check(
        "accounting",
        "sent = delivered + refused + reported unreachable",
        format!(
            "{} = {} + {} + {}",
            s.sent, s.delivered, s.refused, s.reported_unreachable
        ),
        balanced.is_some(),
    );
    client.stop();
    r
}
