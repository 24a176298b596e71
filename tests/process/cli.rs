//! `tikv-server` and `test-pd` as an operator meets them: bad input gives a
//! clear message naming the key, file or id and a non-zero exit (never a
//! panic), joining PD persists the identity, a buried store refuses to
//! start, signals stop it cleanly.

use std::process::Command;
use std::time::Duration;

use test_lab::process::{bin, run_to_exit, Finished};
use test_lab::Lab;

const EXIT: Duration = Duration::from_secs(30);

fn no_panic(f: &Finished) {
    assert!(
        !f.stderr.contains("panicked") && !f.stderr.contains("RUST_BACKTRACE"),
        "a panic instead of a message: {}",
        f.stderr
    );
}

fn fails_with(f: &Finished, needles: &[&str]) {
    no_panic(f);
    assert_eq!(f.code, Some(1), "exit code; stderr: {}", f.stderr);
    for n in needles {
        assert!(f.stderr.contains(n), "stderr lacks {:?}: {}", n, f.stderr);
    }
}

fn server(args: &[&str]) -> Command {
    let mut c = Command::new(bin("tikv-server").unwrap());
    c.args(args);
    c
}

fn test_pd(args: &[&str]) -> Command {
    let mut c = Command::new(bin("test-pd").unwrap());
    c.args(args);
    c
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn bad_config_values_and_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        "[server]\ngrpc-raft-conn-num = \"four\"\n",
    );
    let f = run_to_exit(server(&["--config", &bad]), EXIT).unwrap();
    fails_with(&f, &["bad.toml", "grpc-raft-conn-num"]);

    let invalid = write(
        dir.path(),
        "invalid.toml",
        "[raftstore]\nraft-heartbeat-ticks = 0\n",
    );
    let f = run_to_exit(server(&["--config", &invalid]), EXIT).unwrap();
    fails_with(&f, &["raft-heartbeat-ticks"]);

    let f = run_to_exit(server(&["--config", "/nonexistent/tikv.toml"]), EXIT).unwrap();
    fails_with(&f, &["/nonexistent/tikv.toml"]);

    for (args, key) in [
        (vec!["--addr", "no-port"], "addr"),
        (vec!["--advertise-addr", "0.0.0.0:20160"], "advertise-addr"),
        (vec!["--pd", ""], "endpoints"),
        (vec!["--log-level", "loud"], "level"),
        (vec!["--labels", "zone"], "--labels"),
        (vec!["--labels", "zone=-x"], "labels"),
    ] {
        let f = run_to_exit(server(&args), EXIT).unwrap();
        fails_with(&f, &[key]);
    }
}

#[test]
fn config_check_fails_on_unknown_keys_which_a_start_only_warns_about() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = write(
        dir.path(),
        "unknown.toml",
        "[server]\ngrpc-concurrency = 4\n[rocksdb]\nmax-open-files = 1\n",
    );
    let f = run_to_exit(server(&["--config", &unknown, "--config-check"]), EXIT).unwrap();
    fails_with(&f, &["server.grpc-concurrency", "rocksdb"]);

    let good = write(
        dir.path(),
        "good.toml",
        "[server]\ngrpc-raft-conn-num = 2\n",
    );
    let f = run_to_exit(server(&["--config", &good, "--config-check"]), EXIT).unwrap();
    no_panic(&f);
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert!(f.stdout.contains("config check successful"), "{}", f.stdout);

    // A real start with the unknown keys: warned about in the log, runs.
    let mut lab = Lab::start("new").unwrap();
    let id = lab
        .start_store_with("s1", &["--log-level", "info"])
        .unwrap();
    let log = std::fs::read_to_string(&lab.store(id).unwrap().log).unwrap();
    assert!(
        !log.contains("unknown config key"),
        "lab config has no unknown key"
    );
    let mut cmd = server(&["--config", &unknown, "--pd", &lab.pd_endpoints]);
    let data = lab.data_dir("s3");
    let log3 = lab.dir().join("s3.log");
    cmd.args(["--addr", "127.0.0.1:0", "--status-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--log-file")
        .arg(&log3);
    let mut p =
        test_lab::process::LabProcess::spawn("s3", cmd, &lab.dir().join("s3.stderr")).unwrap();
    let log = std::fs::read_to_string(&log3).unwrap();
    assert!(
        log.contains("[WARN]")
            && log.contains("[key=server.grpc-concurrency]")
            && log.contains("[key=rocksdb]"),
        "{}",
        log
    );
    p.signal(true).unwrap();
    assert!(
        p.wait_exit(EXIT).map(|s| s.success()).unwrap_or(false),
        "SIGINT exits 0"
    );
}

#[test]
fn unreachable_pd_at_start_is_an_error_naming_it() {
    // Nothing listens on a port we just bound and released? Not reliable;
    // port 1 on loopback needs root to listen on and nothing does here.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "fast.toml",
        "[pd]\nretry-interval = \"50ms\"\nretry-max-count = 3\nrequest-timeout = \"500ms\"\n",
    );
    let data = dir.path().join("data");
    let f = run_to_exit(
        server(&[
            "--config",
            &cfg,
            "--pd",
            "127.0.0.1:1",
            "--addr",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ]),
        EXIT,
    )
    .unwrap();
    fails_with(&f, &["cannot connect to PD at 127.0.0.1:1"]);
}

#[test]
fn identity_is_persisted_and_reused_labels_reach_pd() {
    let mut lab = Lab::start("new").unwrap();
    let id = lab
        .start_store_with("s1", &["--labels", "zone=lab,host=h1"])
        .unwrap();
    // The first store bootstrapped the cluster; PD knows its meta.
    let (code, body) = lab
        .pd_api("GET", &format!("/pd/api/v1/store/{}", id))
        .unwrap();
    assert_eq!(code, 200, "{}", body);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let s = &v["store"];
    assert_eq!(s["address"], lab.store(id).unwrap().addr.as_str());
    assert_eq!(s["status_address"], lab.store(id).unwrap().status.as_str());
    assert!(s["version"].as_str().unwrap().contains("transport-only"));
    assert!(s["start_timestamp"].as_i64().unwrap() > 0);
    let labels = s["labels"].to_string();
    assert!(
        labels.contains("\"zone\"") && labels.contains("\"lab\"") && labels.contains("\"h1\""),
        "{}",
        labels
    );
    let ident = std::fs::read_to_string(lab.data_dir("s1").join("store_ident.json")).unwrap();
    assert!(ident.contains(&format!("\"store_id\":{}", id)), "{}", ident);

    // Another store on the same raft port is refused (gRPC would share
    // the port through SO_REUSEPORT unless told not to).
    let taken = lab.store(id).unwrap().addr.clone();
    let c = lab.store_command("s2", &["--addr", &taken]).unwrap();
    let f = run_to_exit(c, EXIT).unwrap();
    fails_with(&f, &["server.addr", &taken]);

    // A second process on the same data dir is refused.
    let f = run_to_exit(lab.store_command("s1", &[]).unwrap(), EXIT).unwrap();
    fails_with(&f, &["in use"]);

    // SIGTERM: exit 0; restart: same id.
    let mut s = lab.stores.remove(&id).unwrap();
    s.process.signal(false).unwrap();
    assert!(s
        .process
        .wait_exit(EXIT)
        .map(|s| s.success())
        .unwrap_or(false));
    let again = lab.start_store("s1").unwrap();
    assert_eq!(again, id);
}

#[test]
fn a_buried_store_refuses_to_start() {
    let mut lab = Lab::start("old").unwrap();
    let id = lab.start_store("s1").unwrap();
    lab.stores.get_mut(&id).unwrap().process.kill();
    let (code, _) = lab
        .pd_api(
            "POST",
            &format!("/pd/api/v1/store/{}/state?state=Tombstone", id),
        )
        .unwrap();
    assert_eq!(code, 200);
    let f = run_to_exit(lab.store_command("s1", &[]).unwrap(), EXIT).unwrap();
    fails_with(
        &f,
        &[&format!("store {} is tombstone", id), "empty --data-dir"],
    );
}

#[test]
fn a_data_dir_of_another_cluster_is_refused() {
    let mut other = Lab::start_with("new", &["--cluster-id", "42"]).unwrap();
    let id = other.start_store("s1").unwrap();
    let mut s = other.stores.remove(&id).unwrap();
    s.process.signal(false).unwrap();
    assert!(s.process.wait_exit(EXIT).is_some());

    let lab = Lab::start("new").unwrap();
    let mut cmd = server(&[
        "--pd",
        &lab.pd_endpoints,
        "--addr",
        "127.0.0.1:0",
        "--status-addr",
        "",
    ]);
    cmd.arg("--data-dir").arg(&s.data_dir);
    let f = run_to_exit(cmd, EXIT).unwrap();
    fails_with(
        &f,
        &[
            "cluster ID mismatch, local 42",
            s.data_dir.to_str().unwrap(),
        ],
    );
}

#[test]
fn test_pd_http_api_answers_as_pd() {
    let mut lab = Lab::start("new").unwrap();
    let id = lab.start_store("s1").unwrap();
    let (code, body) = lab.pd_api("GET", "/pd/api/v1/stores").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["count"], 1);
    assert_eq!(v["stores"][0]["store"]["id"], id);
    assert_eq!(v["stores"][0]["store"]["state_name"], "Up");
    // Unknown store, malformed id, unknown state, unknown path.
    let (code, body) = lab.pd_api("GET", "/pd/api/v1/store/999999").unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("store 999999 not found"), "{}", body);
    let (code, _) = lab.pd_api("GET", "/pd/api/v1/store/abc").unwrap();
    assert_eq!(code, 400);
    let (code, body) = lab
        .pd_api(
            "POST",
            &format!("/pd/api/v1/store/{}/state?state=Sideways", id),
        )
        .unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("invalid state Sideways"), "{}", body);
    let (code, _) = lab.pd_api("GET", "/pd/api/v2/nothing").unwrap();
    assert_eq!(code, 404);
    let (code, _) = lab.pd_api("GET", "/pd/api/v1/stores?state=9").unwrap();
    assert_eq!(code, 500);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lab.pd_region_count(id).unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "no regions reported");
        std::thread::park_timeout(Duration::from_millis(50));
    }
    // A forced delete is PD's "physically destroyed": Offline with the
    // flag, not buried while the store still reports regions (whatever
    // `force`'s value, as PD reads the key's presence). Again forced: no
    // change; unforced now: PD's ErrStoreDestroyed.
    let (code, _) = lab
        .pd_api("DELETE", &format!("/pd/api/v1/store/{}?force=false", id))
        .unwrap();
    assert_eq!(code, 200);
    let (_, body) = lab
        .pd_api("GET", &format!("/pd/api/v1/store/{}", id))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["store"]["state_name"], "Offline", "{}", body);
    assert_eq!(v["store"]["physically_destroyed"], true, "{}", body);
    let (code, _) = lab
        .pd_api("DELETE", &format!("/pd/api/v1/store/{}?force=true", id))
        .unwrap();
    assert_eq!(code, 200);
    let (code, body) = lab
        .pd_api("DELETE", &format!("/pd/api/v1/store/{}", id))
        .unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("has been physically destroyed"), "{}", body);
    // test-pd's own: bury at once. A Tombstone store answers 410 and is
    // listed only when asked for; remove-tombstone forgets it.
    let (code, _) = lab
        .pd_api("POST", &format!("/test-pd/api/v1/store/{}/bury", id))
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(lab.pd_state(id).unwrap().as_deref(), Some("Tombstone"));
    let (code, _) = lab
        .pd_api("POST", "/test-pd/api/v1/store/999999/bury")
        .unwrap();
    assert_eq!(code, 404);
    let (code, _) = lab
        .pd_api("DELETE", &format!("/pd/api/v1/store/{}", id))
        .unwrap();
    assert_eq!(code, 410);
    let (_, body) = lab.pd_api("GET", "/pd/api/v1/stores").unwrap();
    assert!(body.contains("\"count\": 0"), "{}", body);
    let (_, body) = lab.pd_api("GET", "/pd/api/v1/stores?state=2").unwrap();
    assert!(body.contains("\"count\": 1"), "{}", body);
    // An Up and an Offline store next to it, registered as a store does.
    use pd_client::PdClient;
    let pd = pd_client::RpcClient::new(
        &pd_client::Config::new(vec![lab.pd_endpoints.clone()]),
        None,
        tikv_util::logger::discard(),
    )
    .unwrap();
    let mut others = Vec::new();
    for port in [20991, 20992] {
        let mut s = kvproto::metapb::Store::default();
        s.set_id(pd.alloc_id().unwrap());
        s.set_address(format!("127.0.0.1:{}", port));
        pd.put_store(s.clone()).unwrap();
        others.push(s.get_id());
    }
    let (code, _) = lab
        .pd_api(
            "POST",
            &format!("/pd/api/v1/store/{}/state?state=Offline", others[1]),
        )
        .unwrap();
    assert_eq!(code, 200);
    let (code, _) = lab
        .pd_api("DELETE", "/pd/api/v1/stores/remove-tombstone")
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(lab.pd_state(id).unwrap(), None);
    // Only the Tombstone store is forgotten.
    assert_eq!(lab.pd_state(others[0]).unwrap().as_deref(), Some("Up"));
    assert_eq!(lab.pd_state(others[1]).unwrap().as_deref(), Some("Offline"));
    // The counters name the methods per store.
    let c = lab.counters().unwrap();
    assert!(c["methods"]["PutStore"].as_u64().unwrap() >= 1, "{}", c);
    assert!(
        c["per_store"]["StoreHeartbeat"][id.to_string()]
            .as_u64()
            .unwrap()
            >= 1,
        "{}",
        c
    );

    // test-pd's own bad input.
    let f = run_to_exit(test_pd(&["--members", "0"]), EXIT).unwrap();
    fails_with(&f, &["--members"]);
    let f = run_to_exit(test_pd(&["--addr", &lab.pd_endpoints]), EXIT).unwrap();
    fails_with(&f, &["bind PD member"]);
}

#[test]
fn status_server_paths() {
    let mut lab = Lab::start("new").unwrap();
    let id = lab.start_store("s1").unwrap();
    let st = lab.status(id).unwrap();
    assert_eq!(st["store_id"], id);
    let m = lab.metrics(id).unwrap();
    for name in [
        "tikv_server_raft_client_connections",
        "tikv_pd_request_duration_seconds",
        "process_resident_memory_bytes",
    ] {
        assert!(m.contains(name), "/metrics lacks {}:\n{}", name, m);
    }
    let status = &lab.store(id).unwrap().status;
    let req = |m: &str, p: &str| {
        test_lab::http::request(m, &format!("http://{}{}", status, p), "").unwrap()
    };
    assert_eq!(req("GET", "/nothing").0, 404);
    assert_eq!(req("POST", "/metrics").0, 405);
    assert_eq!(req("PUT", "/debug/synthetic/peer_store/0").0, 400);
    assert_eq!(req("PUT", "/debug/synthetic/peer_store/x").0, 400);
    // What the store resolves a store to: its own address from PD, PD's
    // not-found for a store PD never heard of, and bad ids refused.
    let me = lab.resolve(id, id).unwrap();
    assert_eq!(
        me["address"].as_str(),
        Some(lab.store(id).unwrap().addr.as_str()),
        "{}",
        me
    );
    let unknown = lab.resolve(id, 4242).unwrap();
    assert_eq!(
        unknown["not_found"].as_str(),
        Some("store 4242 not found"),
        "{}",
        unknown
    );
    assert_eq!(req("GET", "/debug/resolve/0").0, 400);
    assert_eq!(req("GET", "/debug/resolve/-3").0, 400);
    assert_eq!(req("GET", "/debug/resolve/").0, 400);
    assert_eq!(req("POST", "/debug/resolve/1").0, 404);
    // Built without the failpoints feature: the endpoints say so.
    let (code, body) = req("GET", "/fail");
    assert_eq!(code, 404);
    assert!(body.contains("--features failpoints"), "{}", body);
}

fn security_toml(cfg: &security::SecurityConfig, allowed: &[&str]) -> String {
    format!(
        "[security]\nca-path = {:?}\ncert-path = {:?}\nkey-path = {:?}\ncert-allowed-cn = {:?}\n",
        cfg.ca_path, cfg.cert_path, cfg.key_path, allowed
    )
}

#[test]
fn lab_cluster_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = security::test_certs::Ca::new("lab-ca");
    let set = ca.write(dir.path(), "tikv", "tikv");
    let sec = security_toml(&set, &["tikv"]);
    let mut lab = Lab::start_secure("new", &[], Some(&sec)).unwrap();
    let a = lab.start_store("a").unwrap();
    let b = lab.start_store("b").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let heard = |lab: &Lab, me: u64, from: u64| {
        lab.raft_client(me).map(|v| {
            v["traffic"]["reports"]["received_from"][from.to_string()]
                .as_u64()
                .unwrap_or(0)
                > 0
        })
    };
    while !(heard(&lab, a, b).unwrap() && heard(&lab, b, a).unwrap()) {
        assert!(std::time::Instant::now() < deadline, "no traffic over TLS");
        std::thread::park_timeout(Duration::from_millis(50));
    }

    // The status servers serve HTTPS only (the lab's own reads above went
    // over it): plain HTTP is refused; a certificate whose CN is not
    // allowed reads /metrics, not the raft client view.
    let st = lab.store(a).unwrap().status.clone();
    assert!(test_lab::http::get_text(&format!("http://{}/metrics", st)).is_err());
    let intruder = test_lab::http::HttpClient::with_security(
        &security::SecurityManager::new(&ca.write(dir.path(), "intruder", "intruder")).unwrap(),
    )
    .unwrap();
    assert!(intruder
        .get_text(&format!("https://{}/metrics", st))
        .unwrap()
        .contains("tikv_server_raft_client"));
    let (code, body) = intruder
        .request("GET", &format!("https://{}/debug/raft_client", st), "")
        .unwrap();
    assert_eq!((code, body.as_str()), (403, "certificate role error"));

    // A store without TLS cannot reach the TLS PD: with a finite
    // retry-max-count (the default waits for PD), a clear error, exit 1.
    let finite = write(
        dir.path(),
        "finite.toml",
        "[pd]\nretry-interval = \"50ms\"\nretry-max-count = 2\n",
    );
    let mut plain = server(&[
        "--config",
        &finite,
        "--pd",
        &lab.pd_endpoints,
        "--addr",
        "127.0.0.1:0",
        "--status-addr",
        "",
    ]);
    plain
        .args(["--log-level", "error"])
        .arg("--data-dir")
        .arg(dir.path().join("plain"));
    let f = run_to_exit(plain, EXIT).unwrap();
    fails_with(
        &f,
        &["cannot connect to PD", "if PD requires TLS, set [security]"],
    );

    // A half-filled [security] is refused before anything starts.
    let half = write(
        dir.path(),
        "half.toml",
        &format!(
            "[security]\nca-path = {:?}\ncert-path = {:?}\n",
            set.ca_path, set.cert_path
        ),
    );
    let f = run_to_exit(server(&["--config", &half]), EXIT).unwrap();
    fails_with(&f, &["[security] key-path is empty"]);
    let f = run_to_exit(test_pd(&["--addr", "127.0.0.1:0", "--config", &half]), EXIT).unwrap();
    fails_with(&f, &["[security] key-path is empty"]);
}

const WAITING_FOR_PD: &str = "PD is not reachable yet, retrying";

fn waiting_lines(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(WAITING_FOR_PD)
        .count()
}

/// A port nothing may take and nothing answers on: bound elsewhere it
/// fails, dialed it refuses.
fn reserved_and_refusing(addr: &str) {
    let e = std::net::TcpListener::bind(addr).expect_err(addr);
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{}: {}", addr, e);
    let e = std::net::TcpStream::connect(addr).expect_err(addr);
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{}: {}",
        addr,
        e
    );
}

/// While the lab's PD is stopped, and once a store is killed, their ports
/// stay reserved, so no other process takes them (another test's bind to
/// port 0, or a client's own ephemeral port connecting to itself) and a
/// store dialing them is refused as by a dead process. A store waiting
/// for PD once met something else on PD's port and stopped waiting (CI,
/// 2026-12-08).
#[test]
fn a_stopped_process_s_ports_stay_reserved_and_refuse() {
    let mut lab = Lab::start("new").unwrap();
    let id = lab.start_store("s1").unwrap();
    let (addr, status) = {
        let s = lab.store(id).unwrap();
        (s.addr.clone(), s.status.clone())
    };
    lab.kill_store(id).unwrap();
    reserved_and_refusing(&addr);
    reserved_and_refusing(&status);
    lab.stop_pd();
    reserved_and_refusing(&lab.pd_endpoints);
    reserved_and_refusing(&lab.pd_http);
    lab.restart_pd(&[]).unwrap();
    assert!(lab.alloc_store_id().unwrap() > 0);
}

/// Started before PD (pods start in any order), a store waits for it, as
/// TiKV does by default (`[pd] retry-max-count` unlimited), then joins and
/// carries traffic.
#[test]
fn a_store_started_before_pd_waits_for_it_and_joins() {
    let mut lab = Lab::start("new").unwrap();
    lab.stop_pd();
    let cmd = lab.store_command("s1", &[]).unwrap();
    let stderr = lab.stderr_path("s1");
    let waiting =
        std::thread::spawn(move || test_lab::process::LabProcess::spawn("s1", cmd, &stderr));
    // The lab's retry-interval is 100 ms and a line is logged every 10
    // rounds: 10 lines is about 10 s of waiting, past any finite count a
    // store would have given up at before.
    let log = lab.log_path("s1");
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    while waiting_lines(&log) < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the store stopped waiting: {:?}",
            std::fs::read_to_string(&log)
        );
        if waiting.is_finished() {
            panic!(
                "the store stopped waiting for PD: {:?}; its log: {}",
                waiting.join().unwrap().map(|p| p.ready.to_string()),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
    let line = std::fs::read_to_string(&log).unwrap();
    assert!(line.contains(&lab.pd_endpoints), "{}", line);
    lab.restart_pd(&[]).unwrap();
    let p = waiting
        .join()
        .unwrap()
        .expect("the store started once PD came up");
    let s1 = lab.adopt_store("s1", p).unwrap();
    let s2 = lab.start_store("s2").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = lab
            .raft_client(s2)
            .ok()
            .and_then(|v| v["traffic"]["reports"]["received_from"][s1.to_string()].as_u64())
            .unwrap_or(0);
        if got > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no traffic from the late store"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// SIGTERM while a store waits for PD: exit 0 at once, nothing written to
/// the data dir but its lock file.
#[test]
fn sigterm_while_waiting_for_pd_exits_0_and_writes_nothing() {
    let mut lab = Lab::start("new").unwrap();
    lab.stop_pd();
    for int in [false, true] {
        let name = if int { "s-int" } else { "s-term" };
        let mut cmd = lab.store_command(name, &[]).unwrap();
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let log = lab.log_path(name);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while waiting_lines(&log) < 2 {
            assert!(std::time::Instant::now() < deadline, "not waiting for PD");
            assert!(child.try_wait().unwrap().is_none(), "exited while waiting");
            std::thread::park_timeout(Duration::from_millis(20));
        }
        let sig = if int { "-INT" } else { "-TERM" };
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
        let asked = std::time::Instant::now();
        let deadline = asked + Duration::from_secs(5);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{} did not exit within 5 s of the signal", name);
            }
            std::thread::park_timeout(Duration::from_millis(20));
        };
        assert!(status.success(), "{}: {:?}", name, status);
        let files: Vec<_> = std::fs::read_dir(lab.data_dir(name))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, [server::ident::LOCK_FILE], "{}", name);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("while waiting for PD"), "{}", text);
    }
}

/// A store started on a live store's address is refused by PD (a
/// duplicated store address) and exits 1 naming the address and the store
/// that holds it. Once that store is physically destroyed, the address may
/// be reused, as PD allows.
#[test]
fn a_store_on_a_live_store_s_address_is_refused_by_pd() {
    let mut lab = Lab::start("new").unwrap();
    let id = lab.start_store("s1").unwrap();
    let taken = lab.store(id).unwrap().addr.clone();
    let c = lab
        .store_command("s2", &["--advertise-addr", &taken])
        .unwrap();
    let f = run_to_exit(c, EXIT).unwrap();
    fails_with(
        &f,
        &[
            "duplicated store address",
            &taken,
            &format!("already registered by id:{}", id),
        ],
    );
    // Store 1 goes away for good and is flagged physically destroyed:
    // the address is free.
    lab.stores.remove(&id).unwrap().process.kill();
    let (code, body) = lab
        .pd_api("DELETE", &format!("/pd/api/v1/store/{}?force", id))
        .unwrap();
    assert_eq!(code, 200, "{}", body);
    let s2 = lab
        .start_store_with("s2", &["--advertise-addr", &taken])
        .unwrap();
    assert_ne!(s2, id);
    let (_, body) = lab
        .pd_api("GET", &format!("/pd/api/v1/store/{}", s2))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["store"]["address"], taken.as_str(), "{}", body);
}
