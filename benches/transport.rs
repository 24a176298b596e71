//! `make bench`: every figure is a ratio against a baseline run in the same
//! process, in the same run, so a shared 2-core machine still says something.
//!
//! 1. throughput: `RaftClient` to our raft service vs a bare grpcio
//!    `BatchRaft` stream (same batch size and channel settings, no queue, no
//!    resolver) and a bare `Raft` stream sending one message per write; 256 B
//!    and 4 KiB entries; steady state (the call warmed past its confirm
//!    window) and a call's first second; CPU per message (`getrusage`, the
//!    whole process, receiver included, for both); `grpc-raft-conn-num = 4`
//!    with 4 sending threads. Latency: one message at a time, p50 and p99,
//!    timed to the receiver's router (a condition variable, not a poll), vs
//!    a bare stream written from the sending thread and (not a goal) from
//!    gRPC's thread. Both sides of a comparison get the same number of gRPC
//!    completion-queue threads.
//! 2. pd-load: GetStore calls for one forgotten store over 10 minutes, every
//!    duration scaled by 1/100 (6 s of wall time), conn-num 1 and 4, 1000
//!    regions; ours measured on the real stack, upstream's policies computed
//!    from the same schedule; the same with traffic in the first minute only
//!    (an idle connection costs nothing); and recovery once the store sends
//!    a message.
//! 3. hol: resolve latency of a healthy store while K other stores' GetStore
//!    calls hang, vs K = 0.
//! 4. memory: RSS of a node with 1000 regions sending heartbeats to 3 healthy
//!    and 10 removed stores over a scaled 10 minutes, vs after minute 1.
//! 5. verdict-cost: a `send` refused after the tombstone verdict vs a `send`
//!    to a healthy store's queue; PD calls the refused sends cause.
//!
//! Prints one table and writes it as JSON to `target/bench-report.json`.
//! The bench runs on jemalloc (`tikv_alloc`), the allocator tikv-server
//! runs with, as upstream's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::SinkExt;
use grpcio::{ChannelBuilder, Environment, WriteFlags};
use kvproto::raft_serverpb::RaftMessage;
use kvproto::tikvpb::{BatchRaftMessage, TikvClient};
use pd_client::{Config as PdConfig, RpcClient};
use test_pd::{Fault, Method, Server as PdServer};
use tikv::server::resolve::{self, resolve_blocking, ResolverConfig, StoreAddrResolver};
use tikv::server::{
    Config, ConnectionBuilder, FakeExtension, MetadataSourceStoreId, PdStoreAddrResolver,
    RaftClient, RaftExtension, Server, Service,
};
use tikv_util::config::ReadableDuration;
use tikv_util::worker::Worker;

// The allocator tikv-server runs with (jemalloc), for ours and the bare
// baselines alike.
use tikv_alloc as _;

/// The queue of the 4 KiB rows that show what limits the default one: 512
/// slots, 2 MiB of 4 KiB entries.
const SHALLOW_QUEUE: usize = 512;

/// Repetitions of each timed case.
const REPS: usize = 5;

struct Row {
    bench: &'static str,
    case: String,
    ours: f64,
    baseline: String,
    baseline_value: f64,
    ratios: Vec<f64>,
    goal: String,
    met: bool,
    unit: &'static str,
    secs: f64,
}

impl Row {
    fn ratio(&self) -> (f64, f64, f64) {
        let mut r = self.ratios.clone();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (r[0], r[r.len() / 2], r[r.len() - 1])
    }

    fn json(&self) -> serde_json::Value {
        let (min, med, max) = self.ratio();
        serde_json::json!({
            "bench": self.bench,
            "case": self.case,
            "ours": self.ours,
            "baseline": self.baseline,
            "baseline_value": self.baseline_value,
            "ratio": med,
            "ratio_min": min,
            "ratio_max": max,
            "repetitions": self.ratios.len(),
            "unit": self.unit,
            "seconds": self.secs,
            "goal": self.goal,
            "met": self.met,
        })
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pd_client(pd: &PdServer, timeout: Duration) -> Arc<RpcClient> {
    let mut c = PdConfig::new(pd.endpoints());
    c.request_timeout = ReadableDuration(timeout);
    Arc::new(RpcClient::new(&c, None, tikv_util::logger::discard()).unwrap())
}

fn client(
    pd: &PdServer,
    w: &Worker,
    cfg: Config,
) -> RaftClient<PdStoreAddrResolver, FakeExtension> {
    client_on(pd, w, cfg, 2)
}

/// gRPC completion-queue threads of the client side of a comparison, ours
/// and bare alike: one per stream. Ours runs each call's sender on them,
/// bare completes its writes there, so a different count measured the
/// setting, not the client (ours had 2 where 4 bare streams had 4; see the
/// README's Benchmarks).
fn cq_threads(streams: usize) -> usize {
    streams
}

/// [`client`] on an environment of `cq` completion-queue threads.
fn client_on(
    pd: &PdServer,
    w: &Worker,
    cfg: Config,
    cq: usize,
) -> RaftClient<PdStoreAddrResolver, FakeExtension> {
    let rcfg = ResolverConfig {
        not_found_ttl: cfg.store_not_found_cache_ttl.0,
        ..Default::default()
    };
    let r = resolve::new_resolver_with(
        pd_client(pd, Duration::from_secs(2)),
        w,
        FakeExtension,
        rcfg,
        tikv_util::logger::discard(),
    );
    RaftClient::new(
        1,
        ConnectionBuilder::new(Arc::new(Environment::new(cq)), cfg, r, FakeExtension),
    )
}

/// A message of `region_id` from store 1 to `to`, carrying `payload` bytes
/// of entry data.
fn msg(region_id: u64, to: u64, payload: usize) -> RaftMessage {
    let mut m = RaftMessage::default();
    m.set_region_id(region_id);
    m.mut_from_peer().set_id(1000 + region_id);
    m.mut_from_peer().set_store_id(1);
    m.mut_to_peer().set_id(to * 1000 + region_id);
    m.mut_to_peer().set_store_id(to);
    m.mut_message().set_commit(region_id);
    if payload > 0 {
        let mut e = kvproto::eraftpb::Entry::default();
        e.set_data(vec![7u8; payload]);
        m.mut_message().mut_entries().push(e);
    }
    m
}

/// Waits until the receiver has `n` messages. It checks every 100 µs
/// instead of spinning: a spinning waiter takes a core from the threads
/// still draining ours' queue (a quarter of a 4 KiB run) and its
/// `sched_yield` calls would count as ours' CPU.
fn wait_received(svc: &Service<FakeExtension>, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while svc.received() < n {
        assert!(
            Instant::now() < deadline,
            "receiver stalled at {}",
            svc.received()
        );
        std::thread::park_timeout(Duration::from_micros(100));
    }
}

// ---- 1. throughput --------------------------------------------------------

struct Receiver {
    svc: Service<FakeExtension>,
    _server: Server,
    addr: String,
}

fn receiver() -> Receiver {
    receiver_for(2)
}

fn receiver_for(store_id: u64) -> Receiver {
    let svc = Service::new(store_id, FakeExtension);
    let server = Server::start(Arc::new(Environment::new(2)), "127.0.0.1:0", svc.clone()).unwrap();
    let addr = server.addr().to_owned();
    Receiver {
        svc,
        _server: server,
        addr,
    }
}

/// User + system CPU time of the whole process so far (`getrusage`).
fn cpu_time() -> Duration {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Minor page faults of the whole process so far (`getrusage`), for
/// `BENCH_DEBUG`.
fn page_faults() -> i64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_minflt as i64
}

/// What one throughput run measured.
#[derive(Clone, Copy)]
struct Run {
    msg_per_s: f64,
    cpu_ns_per_msg: f64,
}

/// The channel settings ours uses (`[server]` defaults), for the bare
/// baselines too, so a ratio measures the client, not a setting: among them
/// ours' per-connection "random id" argument, which gives each of the
/// `conn_id`s its own TCP connection. (Without it gRPC shared one TCP
/// connection among the 4 bare streams of the conn-num 4 row while ours
/// used 4.)
fn channel(env: Arc<Environment>, addr: &str, conn_id: usize) -> TikvClient {
    let cfg = Config::default();
    let ch = ChannelBuilder::new(env)
        .max_send_message_len(cfg.max_grpc_send_msg_len.0 as i32)
        .stream_initial_window_size(cfg.grpc_stream_initial_window_size.0 as i32)
        .raw_cfg_int(std::ffi::CString::new("random id").unwrap(), conn_id as i32)
        .connect(addr);
    TikvClient::new(ch)
}

/// The call options ours sends on every raft call (the `source_store_id`
/// header of store 1, the sender of every bench message), on the bare
/// calls too: the receiver then does the same work for both (it counts each
/// call's messages under the source store).
fn bare_call_option() -> grpcio::CallOption {
    MetadataSourceStoreId::call_option(1)
}

/// Messages of the timed payload that warm a steady-state run before its
/// timed loop, on both sides and on the threads that are then timed: twice
/// the queue, so the sender's allocator arena holds the pages a full queue
/// of these messages needs (a store that has been up for hours has them)
/// and their first-touch faults are not timed. Without it a 4 KiB run's
/// timed loop paid for 64 MiB of fresh pages on the sending thread
/// (`perf record -e page-faults`: a quarter of ours' faults, in `memset`).
fn warm_msgs(cfg: &Config) -> u64 {
    2 * cfg.raft_client_queue_size as u64
}

/// `count` messages of `payload` through `c`, region ids `th`, `th +
/// threads`, ...; flushed.
fn drive(
    c: &mut RaftClient<PdStoreAddrResolver, FakeExtension>,
    th: u64,
    threads: u64,
    count: u64,
    payload: usize,
) {
    let mut i = 0;
    let mut full = 0u64;
    while i < count {
        match c.send(msg(th + threads * i, 2, payload)) {
            Ok(()) => i += 1,
            Err(_) => {
                // The queue is full: wait for room without burning the CPU
                // the connection needs (the bare sender waits on its write
                // the same way).
                full += 1;
                c.flush();
                std::thread::park_timeout(Duration::from_micros(50));
            }
        }
        if i % 64 == 0 {
            c.flush();
        }
    }
    c.flush();
    if std::env::var("BENCH_DEBUG").is_ok() {
        eprintln!("sender {}: {} sends refused Full", th, full);
    }
}

/// Ours: `threads` senders on clones of one client; `warm`: the call has
/// been up past its confirm window and the senders have sent their share of
/// [`warm_msgs`] of the payload before the timed loop (steady state), else
/// the timed loop is the call's first second.
fn ours_throughput(conn_num: usize, threads: usize, n: u64, payload: usize, warm: bool) -> Run {
    ours_throughput_q(conn_num, threads, n, payload, warm, None)
}

/// [`ours_throughput`] with `raft-client-queue-size` set to `queue` (else
/// the default, or `BENCH_QUEUE`).
fn ours_throughput_q(
    conn_num: usize,
    threads: usize,
    n: u64,
    payload: usize,
    warm: bool,
    queue: Option<usize>,
) -> Run {
    let rx = receiver();
    let pd = PdServer::single();
    pd.add_store(2, &rx.addr);
    let w = Worker::new("addr-resolver");
    let mut cfg = Config {
        grpc_raft_conn_num: conn_num,
        ..Config::default()
    };
    if let Ok(q) = std::env::var("BENCH_QUEUE") {
        cfg.raft_client_queue_size = q.parse().unwrap();
    }
    if let Some(q) = queue {
        cfg.raft_client_queue_size = q;
    }
    let window = cfg.raft_client_call_confirm_window.0;
    let warm_per = if warm {
        warm_msgs(&cfg) / threads as u64
    } else {
        0
    };
    let mut c = client_on(&pd, &w, cfg, cq_threads(conn_num));
    for region in 0..conn_num as u64 {
        c.send(msg(region, 2, 0)).unwrap();
    }
    c.flush();
    wait_received(&rx.svc, conn_num as u64);
    if warm {
        // Past the confirm window of every connection's call.
        let until = Instant::now() + window + Duration::from_millis(200);
        while Instant::now() < until {
            std::thread::park_timeout(until - Instant::now());
        }
    }
    let base = rx.svc.received();
    let per = n / threads as u64;
    // The senders warm, then wait (`warmed`) until the timer starts (`go`).
    let warmed = Arc::new(std::sync::Barrier::new(threads + 1));
    let go = Arc::new(std::sync::Barrier::new(threads + 1));
    let hs: Vec<_> = (0..threads as u64)
        .map(|th| {
            let mut c = c.clone();
            let (warmed, go) = (warmed.clone(), go.clone());
            std::thread::spawn(move || {
                drive(&mut c, th, threads as u64, warm_per, payload);
                warmed.wait();
                go.wait();
                drive(&mut c, th, threads as u64, per, payload);
            })
        })
        .collect();
    warmed.wait();
    wait_received(&rx.svc, base + warm_per * threads as u64);
    let base = rx.svc.received();
    let faults = page_faults();
    let rss = status_kib("VmRSS:");
    let cpu = cpu_time();
    let t = Instant::now();
    go.wait();
    for h in hs {
        h.join().unwrap();
    }
    if std::env::var("BENCH_DEBUG").is_ok() {
        // The senders are done, the queues still full: who holds memory.
        // (gRPC's buffers are on jemalloc too, see `tikv_alloc`, so glibc's
        // counters would say nothing.)
        eprintln!(
            "ours, senders done: RSS {} KiB, {} messages not yet received",
            status_kib("VmRSS:"),
            base + per * threads as u64 - rx.svc.received()
        );
    }
    wait_received(&rx.svc, base + per * threads as u64);
    let el = t.elapsed();
    let spent = cpu_time() - cpu;
    if std::env::var("BENCH_DEBUG").is_ok() {
        eprintln!(
            "ours: {} msgs in {} batches, {} page faults timed, RSS {} -> {} KiB (peak {})",
            rx.svc.received(),
            rx.svc.batches(),
            page_faults() - faults,
            rss,
            status_kib("VmRSS:"),
            status_kib("VmHWM:"),
        );
    }
    c.stop();
    let total = (per * threads as u64) as f64;
    Run {
        msg_per_s: total / el.as_secs_f64(),
        cpu_ns_per_msg: spent.as_nanos() as f64 / total,
    }
}

/// Bare `BatchRaft` streams (one per thread), batches of ours' default
/// size, the same channel settings; `warm`: each stream first carries its
/// share of the same [`warm_msgs`] as ours' steady state, untimed; msg/s.
fn bare_batch_throughput(threads: usize, n: u64, payload: usize, warm: bool) -> Run {
    let rx = receiver();
    let per = n / threads as u64;
    let warm_per = if warm {
        warm_msgs(&Config::default()) / threads as u64
    } else {
        0
    };
    let batch = Config::default().raft_msg_max_batch_size as u64;
    // The environments outlive the senders: dropping one shuts its
    // completion queue down before buffered writes are sent.
    let env = Arc::new(Environment::new(cq_threads(threads)));
    let clients: Vec<_> = (0..threads)
        .map(|i| channel(env.clone(), &rx.addr, i))
        .collect();
    // The senders warm, then wait (`warmed`) until the timer starts (`go`).
    let warmed = Arc::new(std::sync::Barrier::new(threads + 1));
    let go = Arc::new(std::sync::Barrier::new(threads + 1));
    let hs: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(th, c)| {
            let th = th as u64;
            let (warmed, go) = (warmed.clone(), go.clone());
            std::thread::spawn(move || {
                let (mut sink, recv) = c.batch_raft_opt(bare_call_option()).unwrap();
                block_on(async {
                    for (timed, count) in [(false, warm_per), (true, per)] {
                        if timed {
                            warmed.wait();
                            go.wait();
                        }
                        let mut i = 0;
                        while i < count {
                            let mut b = BatchRaftMessage::default();
                            for _ in 0..batch.min(count - i) {
                                let region = th + threads as u64 * i;
                                b.mut_msgs().push(msg(region, 2, payload));
                                i += 1;
                            }
                            b.set_last_observed_time(tikv_util::unix_nanos_now());
                            sink.send((b, WriteFlags::default())).await.unwrap();
                        }
                    }
                });
                (sink, recv, c)
            })
        })
        .collect();
    warmed.wait();
    wait_received(&rx.svc, warm_per * threads as u64);
    let base = rx.svc.received();
    let faults = page_faults();
    let cpu = cpu_time();
    let t = Instant::now();
    go.wait();
    let calls: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    wait_received(&rx.svc, base + per * threads as u64);
    let el = t.elapsed();
    let spent = cpu_time() - cpu;
    if std::env::var("BENCH_DEBUG").is_ok() {
        eprintln!(
            "bare: {} page faults timed, RSS {} KiB (peak {})",
            page_faults() - faults,
            status_kib("VmRSS:"),
            status_kib("VmHWM:")
        );
    }
    drop(calls);
    let total = (per * threads as u64) as f64;
    Run {
        msg_per_s: total / el.as_secs_f64(),
        cpu_ns_per_msg: spent.as_nanos() as f64 / total,
    }
}

/// A bare `Raft` stream writing one message per write; msg/s.
fn bare_single_throughput(n: u64, payload: usize) -> f64 {
    let rx = receiver();
    let env = Arc::new(Environment::new(cq_threads(1)));
    let c = channel(env.clone(), &rx.addr, 0);
    let (mut sink, _recv) = c.raft_opt(bare_call_option()).unwrap();
    let t = Instant::now();
    block_on(async {
        for i in 0..n {
            sink.send((msg(i, 2, payload), WriteFlags::default()))
                .await
                .unwrap();
        }
    });
    wait_received(&rx.svc, n);
    n as f64 / t.elapsed().as_secs_f64()
}

/// A row from per-repetition (ours, baseline) pairs.
#[allow(clippy::too_many_arguments)]
fn ratio_row(
    bench: &'static str,
    case: String,
    baseline: &str,
    pairs: &[(f64, f64)],
    goal: &str,
    met: impl Fn(f64) -> bool,
    unit: &'static str,
    secs: f64,
) -> Row {
    let mut ours: Vec<f64> = pairs.iter().map(|p| p.0).collect();
    let mut base: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    let mut row = Row {
        bench,
        case,
        ours: median(&mut ours),
        baseline: baseline.into(),
        baseline_value: median(&mut base),
        ratios: pairs.iter().map(|(o, b)| o / b).collect(),
        goal: goal.into(),
        met: false,
        unit,
        secs,
    };
    row.met = met(row.ratio().1);
    row
}

fn bench_throughput(rows: &mut Vec<Row>) {
    let batch = Config::default().raft_msg_max_batch_size;
    // Steady-state loops of about half a second each (a tenth of a second,
    // as before, was a few of the scheduler's time slices on 2 cores: a
    // repetition's ratio then spanned 0.74-1.18x); the first-second runs
    // stay well inside the 1 s confirm window; the one-message-per-write
    // baseline is slow, so it keeps its own small count.
    for (payload, n, first_n, single_n) in [
        (256usize, 1_000_000u64, 250_000u64, 50_000u64),
        (4096, 200_000, 50_000, 10_000),
    ] {
        let start = Instant::now();
        let (mut steady, mut cpu, mut first, mut single) = (vec![], vec![], vec![], vec![]);
        let (mut shallow, mut shallow_cpu) = (vec![], vec![]);
        for _ in 0..REPS {
            let o = ours_throughput(1, 1, n, payload, true);
            let b = bare_batch_throughput(1, n, payload, true);
            let f = ours_throughput(1, 1, first_n, payload, false);
            let fb = bare_batch_throughput(1, first_n, payload, false);
            let s = bare_single_throughput(single_n, payload);
            steady.push((o.msg_per_s, b.msg_per_s));
            cpu.push((o.cpu_ns_per_msg, b.cpu_ns_per_msg));
            first.push((f.msg_per_s, fb.msg_per_s));
            single.push((o.msg_per_s, s));
            if payload >= 1024 {
                let q = ours_throughput_q(1, 1, n, payload, true, Some(SHALLOW_QUEUE));
                shallow.push((q.msg_per_s, b.msg_per_s));
                shallow_cpu.push((q.cpu_ns_per_msg, b.cpu_ns_per_msg));
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let mb = payload as f64 * median(&mut steady.iter().map(|p| p.0).collect::<Vec<_>>()) / 1e6;
        let case = format!("{} B entries, {} msgs, conn-num 1", payload, n);
        let bare = format!("bare BatchRaft stream, batches of {}", batch);
        rows.push(ratio_row(
            "throughput",
            format!("{}, steady state ({:.0} MB/s ours)", case, mb),
            &bare,
            &steady,
            ">= 0.95",
            |r| r >= 0.95,
            "msg/s",
            secs,
        ));
        rows.push(ratio_row(
            "throughput",
            format!(
                "{} B entries, {} msgs, a call's first second (confirm window)",
                payload, first_n
            ),
            &bare,
            &first,
            ">= 0.8",
            |r| r >= 0.8,
            "msg/s",
            secs,
        ));
        rows.push(ratio_row(
            "cpu",
            format!("{}, steady state: process user+sys per message", case),
            &bare,
            &cpu,
            "<= 1.2",
            |r| r <= 1.2,
            "ns/msg",
            secs,
        ));
        if !shallow.is_empty() {
            // What limits the row above: a full default queue holds 16384
            // messages (64 MiB of 4 KiB entries), and the sender touches
            // fresh pages for them; the same run with the queue 32 times
            // shallower (see the README's Benchmarks). Not a goal: the
            // default stays upstream's.
            rows.push(ratio_row(
                "throughput",
                format!(
                    "{}, steady state, raft-client-queue-size {} (not the default; what limits the default)",
                    case, SHALLOW_QUEUE
                ),
                &bare,
                &shallow,
                "-",
                |_| true,
                "msg/s",
                secs,
            ));
            rows.push(ratio_row(
                "cpu",
                format!(
                    "{}, steady state, raft-client-queue-size {}: process user+sys per message",
                    case, SHALLOW_QUEUE
                ),
                &bare,
                &shallow_cpu,
                "-",
                |_| true,
                "ns/msg",
                secs,
            ));
        }
        rows.push(ratio_row(
            "throughput",
            format!("{}, steady state", case),
            "bare Raft stream, one message per write",
            &single,
            ">= 1.0",
            |r| r >= 1.0,
            "msg/s",
            secs,
        ));
    }
}

/// Conn-num 4 with 4 sending threads, a bench of its own so that
/// `BENCH_ONLY=conn-num-4` runs it in a fresh process.
fn bench_conn_num_4(rows: &mut Vec<Row>) {
    let start = Instant::now();
    let n = 1_000_000;
    let mut pairs = vec![];
    // More repetitions than the other rows: four senders and four streams
    // on two cores spread one repetition's ratio over 0.69-1.03x, so the
    // median of five moved with the run.
    for _ in 0..2 * REPS - 1 {
        let o = ours_throughput(4, 4, n, 256, true);
        let b = bare_batch_throughput(4, n, 256, true);
        pairs.push((o.msg_per_s, b.msg_per_s));
    }
    rows.push(ratio_row(
        "throughput",
        format!(
            "256 B entries, {} msgs, conn-num 4, 4 sending threads, steady state",
            n
        ),
        "4 bare BatchRaft streams on 4 threads",
        &pairs,
        ">= 0.9",
        |r| r >= 0.9,
        "msg/s",
        start.elapsed().as_secs_f64(),
    ));
}

// ---- 1b. latency --------------------------------------------------------------

fn percentile(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[(v.len() - 1) * p / 100]
}

/// A router that rings when a message reaches it, so a latency is timed to
/// the message's arrival, not to the next poll of a counter (polling every
/// 100 µs, as [`wait_received`] does, rounded both sides' latencies up to
/// its period).
#[derive(Clone, Default)]
struct Bell(Arc<(std::sync::Mutex<u64>, std::sync::Condvar)>);

impl RaftExtension for Bell {
    fn feed(&self, _: RaftMessage) {
        *self.0 .0.lock().unwrap() += 1;
        self.0 .1.notify_all();
    }
}

impl Bell {
    /// Blocks until `n` messages have arrived (a 120 s deadline).
    fn wait(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut got = self.0 .0.lock().unwrap();
        while *got < n {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("receiver stalled at {}", *got));
            got = self.0 .1.wait_timeout(got, left).unwrap().0;
        }
    }
}

/// A receiver (store 2) whose router is a [`Bell`].
fn bell_receiver() -> (Bell, Server, String) {
    let bell = Bell::default();
    let server = Server::start(
        Arc::new(Environment::new(2)),
        "127.0.0.1:0",
        Service::new(2, bell.clone()),
    )
    .unwrap();
    let addr = server.addr().to_owned();
    (bell, server, addr)
}

/// One message at a time: `send` (and flush) until the receiver's router
/// has it; (p50, p99) in µs. The call is up past its confirm window.
fn ours_latency(n: usize) -> (f64, f64) {
    let (bell, _server, addr) = bell_receiver();
    let pd = PdServer::single();
    pd.add_store(2, &addr);
    let w = Worker::new("addr-resolver");
    let cfg = Config::default();
    let window = cfg.raft_client_call_confirm_window.0;
    let mut c = client_on(&pd, &w, cfg, cq_threads(1));
    c.send(msg(0, 2, 0)).unwrap();
    c.flush();
    bell.wait(1);
    // Past the call's confirm window, as a call that has been up for long.
    let until = Instant::now() + window + Duration::from_millis(200);
    while Instant::now() < until {
        std::thread::park_timeout(until - Instant::now());
    }
    let mut lat = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        c.send(msg(i, 2, 256)).unwrap();
        c.flush();
        bell.wait(i + 2);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    c.stop();
    (percentile(&mut lat, 50), percentile(&mut lat, 99))
}

/// A batch of one 256 B message of region `i`, stamped now: a bare
/// latency write.
fn one_message_batch(i: u64) -> BatchRaftMessage {
    let mut b = BatchRaftMessage::default();
    b.mut_msgs().push(msg(i, 2, 256));
    b.set_last_observed_time(tikv_util::unix_nanos_now());
    b
}

/// The same on a bare `BatchRaft` stream: one message per write.
fn bare_latency(n: usize) -> (f64, f64) {
    let (bell, _server, addr) = bell_receiver();
    let env = Arc::new(Environment::new(cq_threads(1)));
    let c = channel(env.clone(), &addr, 0);
    let (mut sink, _recv) = c.batch_raft_opt(bare_call_option()).unwrap();
    let mut lat = Vec::with_capacity(n);
    block_on(async {
        for i in 0..n as u64 {
            let t = Instant::now();
            let b = one_message_batch(i);
            sink.send((b, WriteFlags::default())).await.unwrap();
            bell.wait(i + 1);
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
    });
    (percentile(&mut lat, 50), percentile(&mut lat, 99))
}

/// The same written from gRPC's thread: a task spawned on the channel's
/// completion queue (as ours' sender is, and upstream's) takes each batch
/// from a channel and writes it. What it adds to [`bare_latency`] is the
/// wake of that thread, which ours pays too.
fn bare_on_grpc_thread_latency(n: usize) -> (f64, f64) {
    use futures::StreamExt;
    let (bell, _server, addr) = bell_receiver();
    let env = Arc::new(Environment::new(cq_threads(1)));
    let c = channel(env.clone(), &addr, 0);
    let (mut sink, _recv) = c.batch_raft_opt(bare_call_option()).unwrap();
    let (tx, mut rx) = futures::channel::mpsc::unbounded::<BatchRaftMessage>();
    c.spawn(async move {
        while let Some(b) = rx.next().await {
            sink.send((b, WriteFlags::default())).await.unwrap();
        }
    });
    let mut lat = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        let b = one_message_batch(i);
        tx.unbounded_send(b).unwrap();
        bell.wait(i + 1);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    (percentile(&mut lat, 50), percentile(&mut lat, 99))
}

fn bench_latency(rows: &mut Vec<Row>) {
    let n = 2000;
    let start = Instant::now();
    let (mut p50, mut p99) = (vec![], vec![]);
    let (mut hop50, mut hop99) = (vec![], vec![]);
    for _ in 0..REPS {
        let o = ours_latency(n);
        let b = bare_latency(n);
        let h = bare_on_grpc_thread_latency(n);
        p50.push((o.0, b.0));
        p99.push((o.1, b.1));
        hop50.push((o.0, h.0));
        hop99.push((o.1, h.1));
    }
    let secs = start.elapsed().as_secs_f64();
    for (name, pairs) in [("p50", &p50), ("p99", &p99)] {
        rows.push(ratio_row(
            "latency",
            format!(
                "one 256 B message at a time, send to the receiver's router, {}",
                name
            ),
            &format!("bare BatchRaft stream, one message per write, {}", name),
            pairs,
            "<= 1.2",
            |r| r <= 1.2,
            "µs",
            secs,
        ));
    }
    // Not a goal: how much of the above is the wake of gRPC's thread, which
    // the sender's place (gRPC's thread, as upstream's) costs.
    for (name, pairs) in [("p50", &hop50), ("p99", &hop99)] {
        rows.push(ratio_row(
            "latency",
            format!(
                "one 256 B message at a time, send to the receiver's router, {}",
                name
            ),
            &format!(
                "bare BatchRaft stream written from gRPC's thread, one message per write, {}",
                name
            ),
            pairs,
            "-",
            |_| true,
            "µs",
            secs,
        ));
    }
}

// ---- 2. pd-load -------------------------------------------------------------

/// Every duration of the 10-minute window and of the config is divided by it.
const SCALE: u32 = 100;
const WINDOW_SECS: u64 = 600;

fn scaled(d: Duration) -> ReadableDuration {
    ReadableDuration(d / SCALE)
}

fn scaled_cfg(conn_num: usize) -> Config {
    let d = Config::default();
    Config {
        grpc_raft_conn_num: conn_num,
        raft_client_initial_reconnect_backoff: scaled(d.raft_client_initial_reconnect_backoff.0),
        raft_client_max_backoff: scaled(d.raft_client_max_backoff.0),
        raft_client_not_found_max_backoff: scaled(d.raft_client_not_found_max_backoff.0),
        raft_client_not_found_log_interval: scaled(d.raft_client_not_found_log_interval.0),
        store_not_found_cache_ttl: scaled(d.store_not_found_cache_ttl.0),
        raft_client_call_confirm_window: scaled(d.raft_client_call_confirm_window.0),
        ..d
    }
}

/// Upstream's policies over the window, from TiKV's defaults: a connection
/// retries every `raft-client-max-backoff` (5 s).
fn model_calls(policy: &str, conn_num: u64) -> f64 {
    let retries = WINDOW_SECS / 5;
    match policy {
        // Each failed resolution is retried 10x by the PD client, with
        // reconnects, and every connection resolves on its own.
        "pre-fix" => (conn_num * retries * 10) as f64,
        // Tombstone after the first answer: one call per connection, and a
        // live store is never reached again.
        "over-eager" => conn_num as f64,
        // Retryable not-found: one call per connection per 5 s.
        "master" => (conn_num * retries) as f64,
        _ => unreachable!(),
    }
}

fn bench_pd_load(rows: &mut Vec<Row>) {
    for conn_num in [1usize, 4] {
        let start = Instant::now();
        let pd = PdServer::single();
        let w = Worker::new("addr-resolver");
        let mut c = client(&pd, &w, scaled_cfg(conn_num));
        let window = Duration::from_secs(WINDOW_SECS) / SCALE;
        let t = Instant::now();
        // 1000 regions with a peer on store 9, which PD forgot: a heartbeat
        // per region per (scaled) second.
        while t.elapsed() < window {
            for region in 0..1000 {
                let _ = c.send(msg(region, 9, 0));
            }
            c.flush();
            std::thread::park_timeout(Duration::from_secs(1) / SCALE);
        }
        let calls = pd.get_store_count(9) as f64;
        c.stop();
        for policy in ["pre-fix", "over-eager", "master"] {
            let base = model_calls(policy, conn_num as u64);
            let label = match policy {
                "pre-fix" => "(a) pre-fix loop: generic error, 10 PD retries per resolution",
                "over-eager" => "(b) over-eager fix: tombstone after one call (never recovers)",
                _ => "(c) upstream master: each connection retries every 5 s",
            };
            rows.push(Row {
                bench: "pd-load",
                case: format!(
                    "forgotten store, 1000 regions, conn-num {}, 10 min (scaled 1/{})",
                    conn_num, SCALE
                ),
                ours: calls,
                baseline: label.into(),
                baseline_value: base,
                ratios: vec![calls / base],
                goal: "ours <= 16 calls".into(),
                met: calls <= 16.0,
                unit: "GetStore calls",
                secs: start.elapsed().as_secs_f64(),
            });
        }
    }
    // Traffic during the first (scaled) minute only: the stale peers are
    // gone, the forgotten store must cost nothing afterwards.
    let start = Instant::now();
    let pd = PdServer::single();
    let w = Worker::new("addr-resolver");
    let mut c = client(&pd, &w, scaled_cfg(1));
    let minute = Duration::from_secs(60) / SCALE;
    let window = Duration::from_secs(WINDOW_SECS) / SCALE;
    let t = Instant::now();
    while t.elapsed() < minute {
        for region in 0..1000 {
            let _ = c.send(msg(region, 9, 0));
        }
        c.flush();
        std::thread::park_timeout(Duration::from_secs(1) / SCALE);
    }
    let during = pd.get_store_count(9);
    while t.elapsed() < window {
        std::thread::park_timeout(window - t.elapsed());
    }
    let after = (pd.get_store_count(9) - during) as f64;
    c.stop();
    // Upstream master keeps retrying every 5 s for the 9 minutes.
    let base = ((WINDOW_SECS - 60) / 5) as f64;
    rows.push(Row {
        bench: "pd-load",
        case: format!(
            "forgotten store, traffic in minute 1 only: GetStore calls in minutes 2-10 (scaled 1/{})",
            SCALE
        ),
        ours: after,
        baseline: "upstream master: each connection retries every 5 s".into(),
        baseline_value: base,
        ratios: vec![after / base],
        goal: "ours <= 1 call".into(),
        met: after <= 1.0,
        unit: "GetStore calls",
        secs: start.elapsed().as_secs_f64(),
    });
    // Recovery: the store turns out alive and sends first.
    let start = Instant::now();
    let mut took = vec![];
    for _ in 0..REPS {
        took.push(recovery_after_first_message().as_secs_f64());
    }
    let t = median(&mut took);
    rows.push(Row {
        bench: "pd-load",
        case: "recovery: store alive, sends first, episode at its cap".into(),
        ours: t,
        baseline: "upstream master: next retry within raft-client-max-backoff".into(),
        baseline_value: 5.0,
        ratios: took.iter().map(|x| x / 5.0).collect(),
        goal: "ours <= 1 s".into(),
        met: t <= 1.0,
        unit: "s",
        secs: start.elapsed().as_secs_f64(),
    });
}

/// Store 1 waits on a not-found episode at a 60 s cap (unscaled); store 3
/// registers and sends to store 1; the time until store 1 reaches it.
fn recovery_after_first_message() -> Duration {
    let pd = PdServer::single();
    let w = Worker::new("addr-resolver");
    let c1 = client(&pd, &w, Config::default());
    let alive = c1.clone();
    let svc1 = Service::new(1, FakeExtension)
        .with_store_alive_hook(Arc::new(move |s| alive.notify_store_alive(s)));
    let s1 = Server::start(Arc::new(Environment::new(1)), "127.0.0.1:0", svc1).unwrap();
    pd.add_store(1, s1.addr());
    let mut c1 = c1;
    c1.send(msg(1, 3, 0)).unwrap();
    c1.flush();
    while c1.not_found_episode(3).is_none() {
        std::thread::yield_now();
    }
    let svc3 = Service::new(3, FakeExtension);
    let s3 = Server::start(Arc::new(Environment::new(1)), "127.0.0.1:0", svc3.clone()).unwrap();
    pd.add_store(3, s3.addr());
    let w3 = Worker::new("addr-resolver");
    let mut c3 = client(&pd, &w3, Config::default());
    let t = Instant::now();
    let mut m = msg(1, 1, 0);
    m.mut_from_peer().set_store_id(3);
    c3.send(m).unwrap();
    c3.flush();
    while svc3.received() == 0 {
        let _ = c1.send(msg(2, 3, 0));
        c1.flush();
        std::thread::park_timeout(Duration::from_millis(1));
        assert!(t.elapsed() < Duration::from_secs(120));
    }
    let took = t.elapsed();
    c1.stop();
    c3.stop();
    took
}

// ---- 3. hol -----------------------------------------------------------------

fn resolve_latencies(stuck: u64, n: usize) -> (f64, f64) {
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
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        resolve_blocking(&r, 1, Duration::from_secs(10)).unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    pd.clear_faults();
    (lat[n / 2], lat[(n - 1) * 99 / 100])
}

fn bench_hol(rows: &mut Vec<Row>) {
    let n = 500;
    let start = Instant::now();
    // Each repetition measures K = 0, 10 and 100 back to back, so a ratio
    // pairs runs made one after the other (before, all K = 0 runs came
    // first, and a ratio paired runs up to a second or two apart).
    let (mut base, mut at10, mut at100) = (vec![], vec![], vec![]);
    for _ in 0..REPS {
        base.push(resolve_latencies(0, n));
        at10.push(resolve_latencies(10, n));
        at100.push(resolve_latencies(100, n));
    }
    for (k, runs) in [(10u64, at10), (100, at100)] {
        for (idx, name) in [(0usize, "p50"), (1, "p99")] {
            let pick = |v: &(f64, f64)| if idx == 0 { v.0 } else { v.1 };
            let ratios: Vec<f64> = runs
                .iter()
                .zip(&base)
                .map(|(r, b)| pick(r) / pick(b))
                .collect();
            let mut ours: Vec<f64> = runs.iter().map(pick).collect();
            let mut b: Vec<f64> = base.iter().map(pick).collect();
            let mut row = Row {
                bench: "hol",
                case: format!(
                    "resolve a healthy store, {} stores' GetStore hanging, {}",
                    k, name
                ),
                ours: median(&mut ours),
                baseline: format!("same, K = 0, {}", name),
                baseline_value: median(&mut b),
                ratios,
                goal: if k == 100 {
                    "<= 1.2".into()
                } else {
                    "-".into()
                },
                met: true,
                unit: "µs",
                secs: start.elapsed().as_secs_f64(),
            };
            if k == 100 {
                row.met = row.ratio().1 <= 1.2;
            }
            rows.push(row);
        }
    }
}

// ---- 4. memory --------------------------------------------------------------

/// A `/proc/self/status` figure in KiB: `VmRSS` now, `VmHWM` the peak.
fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn bench_memory(rows: &mut Vec<Row>) {
    let start = Instant::now();
    let pd = PdServer::single();
    let healthy: Vec<Receiver> = (2..=4).map(receiver_for).collect();
    for (i, r) in healthy.iter().enumerate() {
        pd.add_store(2 + i as u64, &r.addr);
    }
    let w = Worker::new("addr-resolver");
    let mut c = client(&pd, &w, scaled_cfg(1));
    // Stores 2..=4 healthy, 10..=19 removed (PD never heard of them). Each
    // region has peers on two of the 13 stores besides ours.
    let targets: Vec<u64> = (2..=4).chain(10..=19).collect();
    let minute = Duration::from_secs(60) / SCALE;
    let window = Duration::from_secs(WINDOW_SECS) / SCALE;
    let t = Instant::now();
    let mut after_minute = None;
    let sent = AtomicU64::new(0);
    while t.elapsed() < window {
        for region in 0..1000u64 {
            for k in 0..2u64 {
                let to = targets[((region * 2 + k) % targets.len() as u64) as usize];
                if c.send(msg(region, to, 0)).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        c.flush();
        if after_minute.is_none() && t.elapsed() >= minute {
            after_minute = Some(status_kib("VmRSS:"));
        }
        std::thread::park_timeout(Duration::from_secs(1) / SCALE);
    }
    let end = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    let first = after_minute.unwrap_or(end) as f64;
    c.stop();
    let growth = end as f64 / first;
    rows.push(Row {
        bench: "memory",
        case: format!(
            "1000 regions, 3 healthy + 10 removed stores, 10 min (scaled 1/{}), {} sends, peak RSS {} KiB",
            SCALE,
            sent.load(Ordering::Relaxed),
            peak
        ),
        ours: end as f64,
        baseline: "RSS after the first (scaled) minute".into(),
        baseline_value: first,
        ratios: vec![growth],
        goal: "< 1.05".into(),
        met: growth < 1.05,
        unit: "KiB RSS",
        secs: start.elapsed().as_secs_f64(),
    });
}

// ---- 5. verdict-cost --------------------------------------------------------

fn bench_verdict_cost(rows: &mut Vec<Row>) {
    let start = Instant::now();
    let rx = receiver();
    let pd = PdServer::single();
    pd.add_store(2, &rx.addr);
    pd.add_store(5, "127.0.0.1:9");
    pd.bury(5);
    let w = Worker::new("addr-resolver");
    let mut c = client(&pd, &w, Config::default());
    c.send(msg(0, 5, 0)).unwrap();
    c.flush();
    while !c.is_tombstone(5) {
        std::thread::yield_now();
    }
    c.send(msg(0, 2, 0)).unwrap();
    c.flush();
    wait_received(&rx.svc, 1);
    let calls = pd.get_store_count(5);
    let n = 200_000u64;
    let (mut refused, mut healthy, mut ratios) = (vec![], vec![], vec![]);
    for _ in 0..REPS {
        let msgs: Vec<_> = (0..n).map(|i| msg(i, 5, 0)).collect();
        let t = Instant::now();
        for m in msgs {
            let _ = c.send(m);
        }
        let r = t.elapsed().as_nanos() as f64 / n as f64;
        // Healthy: timed in chunks that fit the queue, drained in between.
        let mut spent = Duration::ZERO;
        let mut done = 0;
        let base = rx.svc.received();
        while done < n {
            let chunk: Vec<_> = (0..4096).map(|i| msg(done + i, 2, 0)).collect();
            let t = Instant::now();
            for m in chunk {
                let _ = c.send(m);
            }
            spent += t.elapsed();
            c.flush();
            done += 4096;
            wait_received(&rx.svc, base + done);
        }
        let h = spent.as_nanos() as f64 / done as f64;
        refused.push(r);
        healthy.push(h);
        ratios.push(r / h);
    }
    let extra_calls = pd.get_store_count(5) - calls;
    c.stop();
    rows.push(Row {
        bench: "verdict-cost",
        case: format!(
            "send after the tombstone verdict ({} PD calls caused)",
            extra_calls
        ),
        ours: median(&mut refused),
        baseline: "send to a healthy store's queue".into(),
        baseline_value: median(&mut healthy),
        ratios,
        goal: "PD calls = 0, ratio <= 1.0".into(),
        met: false,
        unit: "ns/send",
        secs: start.elapsed().as_secs_f64(),
    });
    let last = rows.last_mut().unwrap();
    last.met = extra_calls == 0 && last.ratio().1 <= 1.0;
}

/// One bench: appends its rows.
type Bench = fn(&mut Vec<Row>);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "tikv transport benchmarks: loopback, {} cores, {} allocator, {} repetitions per timed case (pd-load, memory: one deterministic run each)",
        cores,
        tikv_alloc::allocator_name(),
        REPS
    );
    // `BENCH_PROFILE=ours|bare`: one long 256 B steady-state run of one
    // side, for a profiler (perf, callgrind), and nothing else.
    // `BENCH_THREADS=4`: conn-num 4 with 4 sending threads (bare: 4
    // streams on 4 threads), as the conn-num 4 row.
    let payload: usize = std::env::var("BENCH_PAYLOAD").map_or(256, |p| p.parse().unwrap());
    let threads: usize = std::env::var("BENCH_THREADS").map_or(1, |t| t.parse().unwrap());
    let profile_n = std::env::var("BENCH_N").map_or(256_000_000 / payload.max(256) as u64, |n| {
        n.parse().unwrap()
    });
    match std::env::var("BENCH_PROFILE").as_deref() {
        Ok("ours") => {
            let r = ours_throughput(threads, threads, profile_n, payload, true);
            println!(
                "ours: {:.0} msg/s, {:.0} ns CPU/msg",
                r.msg_per_s, r.cpu_ns_per_msg
            );
            return;
        }
        Ok("bare") => {
            let r = bare_batch_throughput(threads, profile_n, payload, true);
            println!(
                "bare: {:.0} msg/s, {:.0} ns CPU/msg",
                r.msg_per_s, r.cpu_ns_per_msg
            );
            return;
        }
        _ => {}
    }
    let mut rows = vec![];
    // `BENCH_ONLY=throughput,latency make bench` runs some of them.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let benches: [(&str, Bench); 7] = [
        ("throughput", bench_throughput),
        ("conn-num-4", bench_conn_num_4),
        ("latency", bench_latency),
        ("pd-load", bench_pd_load),
        ("hol", bench_hol),
        ("memory", bench_memory),
        ("verdict-cost", bench_verdict_cost),
    ];
    for (name, f) in benches {
        if only.is_empty() || only.split(',').any(|o| o == name) {
            f(&mut rows);
        }
    }

    println!();
    println!(
        "| bench | case | ours | baseline | baseline value | ratio min / median / max | reps | goal | met | s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let (min, med, max) = r.ratio();
        println!(
            "| {} | {} | {:.3} {} | {} | {:.3} | {:.3} / {:.3} / {:.3} | {} | {} | {} | {:.1} |",
            r.bench,
            r.case,
            r.ours,
            r.unit,
            r.baseline,
            r.baseline_value,
            min,
            med,
            max,
            r.ratios.len(),
            r.goal,
            if r.met { "yes" } else { "NO" },
            r.secs
        );
    }
    let report: Vec<_> = rows.iter().map(Row::json).collect();
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
    let path = format!("{}/bench-report.json", dir);
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!();
    println!(
        "wrote {} ({} rows) in {:.0?}",
        path,
        rows.len(),
        started.elapsed()
    );
}
