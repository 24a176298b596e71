//! The host lab (`test_lab::hosts`): namespaces of their own, the
//! blackhole recipe, healing, and cleanup. As root only; under `CI=true` a
//! machine that cannot make namespaces fails, elsewhere the test says why
//! it did not run.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use test_lab::host_walk::{self, attempts, in_episode, received_from, tombstoned};
use test_lab::hosts::{self, HostLab};
use test_lab::process::{bin, LabProcess};
use test_lab::Progress;

fn lab_or_skip(n: usize) -> Option<HostLab> {
    if let Some(why) = hosts::unavailable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the host lab cannot run: {}",
            why
        );
        eprintln!("host lab test not run: {}", why);
        return None;
    }
    Some(HostLab::new(n).unwrap())
}

fn namespaces() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A connect to a blackholed host hangs until its timeout (nobody answers,
/// nobody refuses); healed, it connects; a killed process is refused at
/// once. Namespaces go with the lab, and a killed run's leftovers are
/// removed by the next lab.
#[test]
fn blackholed_host_hangs_healed_host_answers_dead_process_refuses() {
    // A leftover of a killed run.
    if hosts::unavailable().is_none() {
        let stray = format!("{}-n99", hosts::PREFIX);
        let _ = std::process::Command::new("ip")
            .args(["netns", "add", &stray])
            .status();
    }
    let Some(lab) = lab_or_skip(2) else {
        return;
    };
    assert!(!namespaces().contains("-n99"), "leftover not removed");
    let h = lab.host(1).clone();
    let pd_addr = format!("{}:2379", h.addr);
    let mut cmd = h.command(&bin("test-pd").unwrap());
    cmd.args(["--addr", &pd_addr, "--http-addr", &format!("{}:0", h.addr)]);
    let dir = tempfile::tempdir().unwrap();
    let mut pd = LabProcess::spawn("test-pd", cmd, &dir.path().join("pd.stderr")).unwrap();
    let sa: SocketAddr = pd_addr.parse().unwrap();
    let timeout = Duration::from_secs(1);

    TcpStream::connect_timeout(&sa, timeout).expect("host 1 answers");
    lab.blackhole(1).unwrap();
    let t = Instant::now();
    let e = TcpStream::connect_timeout(&sa, timeout).expect_err("blackholed host answered");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{:?}", e);
    assert!(t.elapsed() >= timeout, "{:?}", t.elapsed());
    lab.heal(1).unwrap();
    // Healing is immediate, but a SYN sent just before it may still be
    // lost: retry within a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&sa, timeout).is_err() {
        assert!(Instant::now() < deadline, "healed host never answered");
    }
    pd.kill();
    let e = TcpStream::connect_timeout(&sa, timeout).expect_err("dead process answered");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{:?}", e);

    drop(lab);
    assert!(
        !namespaces().contains(hosts::PREFIX),
        "namespaces left: {}",
        namespaces()
    );
}

fn wait<T>(what: &str, bound: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{} not within {:?}", what, bound);
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Observes for `d` (a partition's length), failing at once if `bad`
/// ever holds.
fn never_for(d: Duration, what: &str, mut bad: impl FnMut() -> bool) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        assert!(!bad(), "{}", what);
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

fn three_stores(hl: &HostLab) -> (test_lab::Lab, [u64; 3]) {
    host_walk::three_stores(hl, "new", Progress::off())
        .unwrap()
        .expect("traffic between the three hosts")
}

/// Scenario 1, "powered off, then removed" (`test_lab::host_walk`), in
/// both PD flavours: the walk's report must hold in every row.
#[test]
fn powered_off_host_then_removed() {
    if lab_or_skip(1).is_none() {
        return;
    }
    for flavor in ["old", "new"] {
        let r = host_walk::powered_off_walk(flavor, Progress::off()).unwrap();
        println!("{}", r.table());
        assert!(r.passed(), "{} PD:\n{}", flavor, r.failures());
    }
}

/// Scenario 3, "partition and heal": store C's host is unreachable for
/// 5 s and comes back. Not removed, so no verdict and no not-found
/// episode anywhere; traffic resumes within one backoff and connect
/// timeout of the healing (1 s each in the lab); connection attempts and
/// GetStore calls stay within the schedule's bound.
#[test]
fn partitioned_host_heals_without_a_verdict() {
    let Some(hl) = lab_or_skip(4) else {
        return;
    };
    let (lab, [a, b, c]) = three_stores(&hl);
    let (att0, calls0) = (attempts(&lab, a, c), lab.get_store_calls(c).unwrap());
    hl.blackhole(4).unwrap();
    let cut = Instant::now();
    never_for(
        Duration::from_secs(5),
        "a verdict or episode during a partition",
        || {
            [a, b]
                .iter()
                .any(|&s| tombstoned(&lab, s, c) || in_episode(&lab, s, c))
        },
    );
    let got = received_from(&lab, c, a);
    hl.heal(4).unwrap();
    let healed = Instant::now();
    wait(
        "traffic from a reaching c after healing",
        Duration::from_secs(8),
        || (received_from(&lab, c, a) > got).then_some(()),
    );
    let resumed = healed.elapsed();
    let since = cut.elapsed();
    let made = attempts(&lab, a, c) - att0;
    let bound = since.as_secs() + 2;
    assert!(made <= bound, "{} attempts in {:?}", made, since);
    let calls = lab.get_store_calls(c).unwrap() - calls0;
    assert!(
        calls <= 2 * bound,
        "{} GetStore calls in {:?}",
        calls,
        since
    );
    assert!(!tombstoned(&lab, a, c) && !in_episode(&lab, a, c));
    assert!(
        resumed < Duration::from_secs(8),
        "resumed after {:?}",
        resumed
    );
}

/// Scenario 4, "PD unreachable by silence": PD's host is blackholed for
/// 5 s. Traffic between the stores goes on (cached addresses), no verdict
/// anywhere, a resolution hanging on PD delays no other store's; once PD
/// is back the stores' heartbeats reach it again, and PD client reconnects
/// stay within one per `reconnect-interval` (1 s).
#[test]
fn silent_pd_stops_nothing() {
    let Some(hl) = lab_or_skip(4) else {
        return;
    };
    let (lab, [a, b, c]) = three_stores(&hl);
    let reconnects0 = lab.status(a).unwrap()["pd_reconnects"]
        .as_u64()
        .unwrap_or(0);
    let before = received_from(&lab, b, a);
    hl.blackhole(1).unwrap();
    let cut = Instant::now();
    never_for(
        Duration::from_secs(5),
        "a verdict while PD is silent",
        || {
            [a, b, c].iter().any(|&s| {
                [a, b, c]
                    .iter()
                    .any(|&o| tombstoned(&lab, s, o) || in_episode(&lab, s, o))
            })
        },
    );
    assert!(
        received_from(&lab, b, a) > before,
        "traffic stopped while PD was silent"
    );
    // Resolution of one store never waits behind another: store a asks
    // the silent PD about a store it has never heard of (the call hangs),
    // and meanwhile still answers for store b from its cache at once.
    const UNKNOWN: u64 = 999;
    let calls = "tikv_server_resolve_pd_get_store_total";
    let asked0 = lab.metric(a, calls).unwrap();
    let url = lab
        .status_url(a, &format!("/debug/resolve/{}", UNKNOWN))
        .unwrap();
    let hanging = std::thread::spawn(move || test_lab::http::get_json(&url));
    wait(
        "store a asking the silent PD about the unknown store",
        Duration::from_secs(5),
        || (lab.metric(a, calls).unwrap() > asked0).then_some(()),
    );
    let asked = Instant::now();
    let got = lab
        .resolve(a, b)
        .unwrap_or_else(|e| panic!("store b's resolution waited behind the hanging one: {}", e));
    let took = asked.elapsed();
    assert!(
        !hanging.is_finished(),
        "the unknown store's resolution ended before PD answered: {:?}",
        hanging.join()
    );
    assert_eq!(
        got["address"].as_str(),
        Some(lab.store(b).unwrap().addr.as_str()),
        "{}",
        got
    );
    assert!(
        took < Duration::from_millis(500),
        "store b's resolution took {:?} behind the hanging one",
        took
    );
    // The counters live at test-pd, on the silent host: read them once it
    // is back.
    hl.heal(1).unwrap();
    let hb = |lab: &test_lab::Lab| {
        lab.counters()
            .ok()
            .and_then(|v| v["per_store"]["StoreHeartbeat"][a.to_string()].as_u64())
    };
    let hb0 = wait("test-pd answering again", Duration::from_secs(10), || {
        hb(&lab)
    });
    wait(
        "a heartbeat from store a after PD is back",
        Duration::from_secs(10),
        || hb(&lab).filter(|n| *n > hb0).map(|_| ()),
    );
    let since = cut.elapsed();
    let reconnects = lab.status(a).unwrap()["pd_reconnects"]
        .as_u64()
        .unwrap_or(0)
        - reconnects0;
    assert!(
        reconnects <= since.as_secs() + 1,
        "{} PD reconnects in {:?}",
        reconnects,
        since
    );
}

/// Scenario 5, "host moved": store C restarts on another host (a new
/// address) with its data dir: same store id, and the others reach it at
/// the new address within the follow bound.
#[test]
fn store_moved_to_another_host_is_followed() {
    let Some(hl) = lab_or_skip(5) else {
        return;
    };
    let (mut lab, [a, b, c]) = three_stores(&hl);
    let mut old = lab.stores.remove(&c).unwrap();
    old.process.signal(false).unwrap();
    let st = old.process.wait_exit(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{:?}", st);
    hl.blackhole(4).unwrap();
    let c2 = lab.start_store_in("c", hl.host(5)).unwrap();
    assert_eq!(c2, c, "same data dir, same store id");
    assert_eq!(
        lab.store(c).unwrap().addr,
        format!("{}:20160", hl.host(5).addr)
    );
    let moved = Instant::now();
    let (fa, fb) = (received_from(&lab, c, a), received_from(&lab, c, b));
    wait(
        "a and b reaching c at its new address",
        Duration::from_secs(15),
        || (received_from(&lab, c, a) > fa && received_from(&lab, c, b) > fb).then_some(()),
    );
    assert!(moved.elapsed() < Duration::from_secs(15));
    assert!(!tombstoned(&lab, a, c) && !tombstoned(&lab, b, c));
}

/// `tikv-drill --hosts --json`: the same walk from the drill, its report
/// as JSON, exit 0 when every row holds.
#[test]
fn drill_walks_the_powered_off_store_on_hosts() {
    if lab_or_skip(1).is_none() {
        return;
    }
    let _one = hosts::exclusive();
    let mut cmd = std::process::Command::new(bin("tikv-drill").unwrap());
    cmd.args(["--hosts", "--json", "--pd", "old"]);
    let f = test_lab::process::run_to_exit(cmd, Duration::from_secs(120)).unwrap();
    assert_eq!(f.code, Some(0), "{}\n{}", f.stdout, f.stderr);
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    assert_eq!(v["mode"], "hosts");
    let steps = v["steps"].as_array().unwrap();
    assert!(steps.len() >= 8, "{}", f.stdout);
    assert!(steps.iter().all(|s| s["ok"] == true), "{}", f.stdout);
}

/// Scenario 2, "vanishes mid-stream": store C's host goes silent while the
/// streams to it are up (its process still runs). Keepalive declares the
/// stream dead (`grpc-keepalive-time`, `grpc-keepalive-timeout`: 1 s each
/// in the lab; gRPC also applies the timeout as the socket's
/// TCP_USER_TIMEOUT, and store A's log says `recvmsg:Connection timed
/// out`), and store A connects again. There is no verdict while PD still
/// says Up; once PD buries C, the verdict follows, and what was in flight
/// is accounted. With both at 20 s the test fails.
#[test]
fn vanished_host_is_found_by_keepalive() {
    let Some(hl) = lab_or_skip(4) else {
        return;
    };
    let (lab, [a, _b, c]) = three_stores(&hl);
    let att0 = attempts(&lab, a, c);
    hl.blackhole(4).unwrap();
    let cut = Instant::now();
    // The stream is found dead by keepalive (no reset arrives from a
    // silent host): a new connection attempt follows.
    wait("a reconnecting to c", Duration::from_secs(8), || {
        (attempts(&lab, a, c) > att0).then_some(())
    });
    let found = cut.elapsed();
    assert!(!tombstoned(&lab, a, c) && !in_episode(&lab, a, c));
    let (code, _) = lab
        .pd_api("POST", &format!("/test-pd/api/v1/store/{}/bury", c))
        .unwrap();
    assert_eq!(code, 200);
    wait("the tombstone verdict", Duration::from_secs(10), || {
        tombstoned(&lab, a, c).then_some(())
    });
    wait("store a balanced", Duration::from_secs(10), || {
        lab.raft_client(a)
            .ok()
            .filter(|v| v["balanced"] == true)
            .map(|_| ())
    });
    assert!(
        found < Duration::from_secs(8),
        "found dead after {:?}",
        found
    );
}
