//! The removed-store scenario across real processes: `test-pd` and
//! `tikv-server`s spawned from the binaries cargo built (`make test` builds
//! them first), on loopback, logs in a temp dir, every child killed on drop.

mod cli;

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
        let f = test_lab::process::run_to_exit(cmd, std::time::Duration::from_secs(60)).unwrap();
        assert_eq!(f.code, Some(0), "{:?}: {}\n{}", args, f.stdout, f.stderr);
        let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
        let steps = v["steps"].as_array().unwrap();
        assert!(steps.len() >= 9, "{}", f.stdout);
        assert!(steps.iter().all(|s| s["ok"] == true), "{}", f.stdout);
    }
    // Bad arguments: usage, exit 2.
    let mut cmd = std::process::Command::new(test_lab::process::bin("tikv-drill").unwrap());
    cmd.args(["--pd", "middle"]);
    let f = test_lab::process::run_to_exit(cmd, std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(f.code, Some(2));
    assert!(f.stderr.contains("usage"), "{}", f.stderr);
}
