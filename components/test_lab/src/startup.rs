//! The start-order walk on real processes: a store started before PD
//! waits for it (as TiKV, `[pd] retry-max-count` unlimited) and joins once
//! PD is up; a store started on a live store's address is refused by PD
//! (tikv/pd `putStoreImpl`: a duplicated store address) and exits 1 naming
//! the address and the store holding it. Every expectation is a row of the
//! [`Report`].

use std::time::{Duration, Instant};

use crate::lab::Lab;
use crate::process::{run_to_exit, LabProcess};
use crate::report::{Progress, Report};
use crate::scenario::{EXIT_BOUND, FOLLOW_BOUND};

/// How long the store runs before PD does.
pub const PD_LATE_BY: Duration = Duration::from_secs(10);
/// The store's log line while it waits for PD.
pub const WAITING_FOR_PD: &str = "PD is not reachable yet, retrying";

fn waiting_lines(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(WAITING_FOR_PD)
        .count()
}

fn received_from(lab: &Lab, me: u64, from: u64) -> u64 {
    lab.raft_client(me)
        .ok()
        .and_then(|v| v["traffic"]["reports"]["received_from"][from.to_string()].as_u64())
        .unwrap_or(0)
}

/// Walks the start-order scenario on a new lab with PD `flavor`.
pub fn startup_walk(flavor: &str, progress: Progress) -> Result<Report, String> {
    let mut r = Report::new("processes", flavor);
    let mut lab = Lab::start(flavor)?;

    // 1. PD down; store A starts and waits for it.
    lab.stop_pd();
    let cmd = lab.store_command("store-a", &[])?;
    let stderr = lab.stderr_path("store-a");
    let waiting = std::thread::spawn(move || LabProcess::spawn("store-a", cmd, &stderr));
    let log = lab.log_path("store-a");
    let started = Instant::now();
    let waited = progress.wait("store A waiting for PD", PD_LATE_BY + FOLLOW_BOUND, || {
        if waiting.is_finished() {
            return Some(false);
        }
        (started.elapsed() >= PD_LATE_BY).then_some(true)
    });
    let lines = waiting_lines(&log);
    r.check(
        "PD last",
        &format!(
            "a store started {} before PD keeps waiting, one log line per retry-log-every rounds",
            crate::scenario::ms(PD_LATE_BY)
        ),
        format!(
            "after {}: {}, {} lines {:?}",
            crate::scenario::ms(started.elapsed()),
            if waited == Some(true) {
                "still waiting"
            } else {
                "gave up"
            },
            lines,
            WAITING_FOR_PD
        ),
        // retry-interval 100 ms, a line per 10 rounds: about one a second.
        waited == Some(true) && (2..=20).contains(&lines),
    );
    if waited != Some(true) {
        return Ok(r);
    }
    lab.restart_pd(&[])?;
    let pd_up = Instant::now();
    let a = match waiting.join() {
        Ok(Ok(p)) => lab.adopt_store("store-a", p)?,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the thread starting store A panicked".into()),
    };
    let joined = pd_up.elapsed();
    let b = lab.start_store("store-b")?;
    let flowing = progress.wait("traffic between A and B", FOLLOW_BOUND, || {
        (received_from(&lab, b, a) > 0 && received_from(&lab, a, b) > 0).then(|| pd_up.elapsed())
    });
    r.check(
        "PD last",
        &format!(
            "joins once PD is up and carries traffic within {}",
            crate::scenario::ms(FOLLOW_BOUND)
        ),
        format!(
            "store {} registered {} after PD came up; {}",
            a,
            crate::scenario::ms(joined),
            flowing
                .map(|t| format!("traffic with store {} after {}", b, crate::scenario::ms(t)))
                .unwrap_or_else(|| "no traffic".into())
        ),
        flowing.is_some(),
    );

    // 2. Store C advertises A's address: PD refuses, C exits 1.
    let taken = lab.store(a)?.addr.clone();
    let cmd = lab.store_command("store-c", &["--advertise-addr", &taken])?;
    let f = run_to_exit(cmd, EXIT_BOUND)?;
    let holder = format!("already registered by id:{}", a);
    let named = f.stderr.contains("duplicated store address")
        && f.stderr.contains(&taken)
        && f.stderr.contains(&holder);
    r.check(
        "duplicated address",
        "a store on a live store's address: PD's refusal, exit 1 naming the address and the store",
        format!(
            "exit {:?}: {}",
            f.code,
            f.stderr.lines().last().unwrap_or("").trim()
        ),
        f.code == Some(1) && named,
    );
    Ok(r)
}
