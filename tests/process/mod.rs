//! The removed-store scenario across real processes: `test-pd` and
//! `tikv-server`s spawned from the binaries cargo built (`make test` builds
//! them first), on loopback, logs in a temp dir, every child killed on drop.

mod cli;
mod hosts;
mod prometheus;

use test_lab::scenario::removed_store_walk;
use test_lab::Progress;

fn walk(flavor: &str) {
    let report = removed_store_walk(flavor, Progress::off()).unwrap_or_else(|e| panic!("{}", e));
    println!("{}", report.table());
    assert!(
        report.passed(),
        "failed expectations:\n{}",
        report.failures()
    );
}

#[test]
fn removed_store_across_processes_new_pd() {
    walk("new");
}

#[test]
fn removed_store_across_processes_old_pd() {
    walk("old");
}

/// `make run`'s drill: exits 0 with every expectation held, JSON for
/// scripts, in both modes.
#[test]
fn drill_reports_json_and_exit_status() {
    for args in [
        &["--json", "--pd", "old"][..],
        &["--json", "--processes"][..],
    ] {
        let mut cmd = std::process::Command::new(test_lab::process::bin("tikv-drill").unwrap());
        cmd.args(args);
        let f = test_lab::process::run_to_exit(cmd, std::time::Duration::from_secs(180)).unwrap();
        assert_eq!(f.code, Some(0), "{:?}: {}\n{}", args, f.stdout, f.stderr);
        let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
        let steps = v["steps"].as_array().unwrap();
        assert!(steps.len() >= 9, "{}", f.stdout);
        assert!(steps.iter().all(|s| s["ok"] == true), "{}", f.stdout);
    }
    // --plot draws the in-process walk: every strip, every step.
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("walk.svg");
    let mut cmd = std::process::Command::new(test_lab::process::bin("tikv-drill").unwrap());
    cmd.args(["--json", "--plot"]).arg(&svg);
    let f = test_lab::process::run_to_exit(cmd, std::time::Duration::from_secs(120)).unwrap();
    assert_eq!(f.code, Some(0), "{}\n{}", f.stdout, f.stderr);
    let text = std::fs::read_to_string(&svg).unwrap();
    for label in [
        "PD GetStore calls",
        "connection attempts",
        "messages delivered",
        "messages refused",
        "messages reported",
        "Tombstone (stopped)",
        "remove-tombstone",
        "cold start",
    ] {
        assert!(text.contains(label), "{} missing from the plot", label);
    }
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    let tl = v["timeline"].as_array().unwrap();
    assert!(tl.len() >= 10, "{}", f.stdout);
    let last = &tl[tl.len() - 1];
    assert!(last["refused"].as_u64().unwrap() >= 101, "{}", last);
    assert!(last["get_store_calls"].as_u64().unwrap() > 0, "{}", last);
    // Bad arguments: usage, exit 2.
    let mut cmd = std::process::Command::new(test_lab::process::bin("tikv-drill").unwrap());
    cmd.args(["--pd", "middle"]);
    let f = test_lab::process::run_to_exit(cmd, std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(f.code, Some(2));
    assert!(f.stderr.contains("usage"), "{}", f.stderr);
    for bad in [
        &["--plot"][..],
        &["--plot", "--json"][..],
        &["--processes", "--plot", "x.svg"][..],
    ] {
        let mut cmd = std::process::Command::new(test_lab::process::bin("tikv-drill").unwrap());
        cmd.args(bad);
        let f = test_lab::process::run_to_exit(cmd, std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(f.code, Some(2), "{:?}: {}", bad, f.stderr);
    }
}

/// In the tikv-server binary a message from a store in a not-found episode
/// ends the wait at once (its raft service has the evidence-of-life hook):
/// store A, whose not-found backoffs are an hour, has peers on store D
/// before D registers; D starts, talks to A, and A reaches D in seconds.
#[test]
fn store_process_ends_a_not_found_wait_on_evidence_of_life() {
    use std::time::{Duration, Instant};
    let mut lab = test_lab::Lab::start("new").unwrap();
    let hour = "\"3600s\"";
    let slow = lab
        .store_config_with(
            "slow.toml",
            &[
                ("raft-client-initial-reconnect-backoff", hour),
                ("raft-client-max-backoff", hour),
                ("raft-client-not-found-max-backoff", hour),
            ],
        )
        .unwrap();
    let a = lab
        .start_store_with("store-a", &["--config", slow.to_str().unwrap()])
        .unwrap();
    let d = lab.alloc_store_id().unwrap();
    lab.add_peer_store(a, d).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let in_episode = |lab: &test_lab::Lab| {
        lab.raft_client(a).ok().is_some_and(|v| {
            v["pool"]["not_found"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["store_id"].as_u64() == Some(d)))
        })
    };
    while !in_episode(&lab) {
        assert!(Instant::now() < deadline, "no not-found episode for {}", d);
        std::thread::park_timeout(Duration::from_millis(50));
    }
    assert_eq!(lab.start_store_as("store-d", d).unwrap(), d);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = lab
            .raft_client(d)
            .ok()
            .and_then(|v| v["traffic"]["reports"]["received_from"][a.to_string()].as_u64())
            .unwrap_or(0);
        if got > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store {} still waits out its hour for store {}",
            a,
            d
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
    assert!(!in_episode(&lab));
}
