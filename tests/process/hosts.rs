//! The host lab (`test_lab::hosts`): namespaces of their own, the
//! blackhole recipe, healing, and cleanup. As root only; under `CI=true` a
//! machine that cannot make namespaces fails, elsewhere the test says why
//! it did not run.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use test_lab::hosts::{self, HostLab};
use test_lab::process::{bin, LabProcess};

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
