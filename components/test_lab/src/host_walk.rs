//! Scenario 1 of the host lab, "powered off, then removed", as a walk with
//! a [`Report`] (for `tests/process/hosts.rs` and `tikv-drill --hosts`):
//! test-pd and three tikv-servers on hosts of their own; store C's process
//! is SIGKILLed and its host blackholed, so every connection attempt to it
//! hangs until `raft-client-connect-timeout` (1 s in the lab), as to a
//! powered-off machine; store B is SIGTERMed while such a connect hangs;
//! through PD's HTTP API C goes Offline, Tombstone and is forgotten.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::hosts::HostLab;
use crate::lab::Lab;
use crate::report::{Progress, Report};
use crate::scenario::ms;

/// Bound on the tombstone verdict after the burial: one connect timeout
/// and one backoff (1 s each in the lab), plus 3 s of room for a loaded
/// machine.
pub const VERDICT_BOUND: Duration = Duration::from_secs(5);
/// Bound on a SIGTERM'd store's exit while a connect hangs: the stop wait
/// (5 s) plus a connect timeout, with room.
pub const STOP_BOUND: Duration = Duration::from_secs(8);
const WAIT: Duration = Duration::from_secs(20);

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Messages `me` received from `from`.
pub fn received_from(lab: &Lab, me: u64, from: u64) -> u64 {
    lab.raft_client(me)
        .map(|v| u(&v["traffic"]["reports"]["received_from"][from.to_string()]))
        .unwrap_or(0)
}

/// Connection attempts `me` made to `to` since it started.
pub fn attempts(lab: &Lab, me: u64, to: u64) -> u64 {
    lab.raft_client(me)
        .map(|v| u(&v["pool"]["connection_attempts"][to.to_string()]))
        .unwrap_or(0)
}

/// Whether `me` holds `id` in its tombstone set.
pub fn tombstoned(lab: &Lab, me: u64, id: u64) -> bool {
    lab.raft_client(me)
        .ok()
        .and_then(|v| v["pool"]["tombstones"].as_array().cloned())
        .is_some_and(|a| a.iter().any(|x| x.as_u64() == Some(id)))
}

/// Whether `me` is in a not-found episode for `id`.
pub fn in_episode(lab: &Lab, me: u64, id: u64) -> bool {
    lab.raft_client(me)
        .ok()
        .and_then(|v| v["pool"]["not_found"].as_array().cloned())
        .is_some_and(|a| a.iter().any(|e| e["store_id"].as_u64() == Some(id)))
}

/// test-pd (PD `flavor`) on host 1, stores a, b, c on hosts 2, 3, 4, with
/// traffic between every pair and regions reported to PD; `None` when the
/// traffic did not start within its bound.
pub fn three_stores(
    hl: &HostLab,
    flavor: &str,
    progress: Progress,
) -> Result<Option<(Lab, [u64; 3])>, String> {
    let mut lab = Lab::start_in(flavor, hl.host(1))?;
    let a = lab.start_store_in("a", hl.host(2))?;
    let b = lab.start_store_in("b", hl.host(3))?;
    let c = lab.start_store_in("c", hl.host(4))?;
    let flowing = progress.wait("traffic between the three hosts", WAIT, || {
        [a, b, c]
            .iter()
            .all(|&me| {
                [a, b, c]
                    .iter()
                    .all(|&o| o == me || received_from(&lab, me, o) > 0)
                    && lab.pd_region_count(me).unwrap_or(0) > 0
            })
            .then_some(())
    });
    Ok(flowing.map(|()| (lab, [a, b, c])))
}

/// Walks scenario 1 on a new host lab of 4 hosts.
pub fn powered_off_walk(flavor: &str, progress: Progress) -> Result<Report, String> {
    let mut r = Report::new("hosts", flavor);
    let hl = HostLab::new(4)?;
    let Some((mut lab, [a, b, c])) = three_stores(&hl, flavor, progress)? else {
        r.check(
            "start",
            "test-pd + 3 tikv-servers on hosts of their own, traffic between every pair",
            "not flowing",
            false,
        );
        return Ok(r);
    };
    r.check(
        "start",
        "test-pd + 3 tikv-servers on hosts of their own, traffic between every pair",
        format!(
            "stores {} ({}), {} ({}), {} ({})",
            a,
            hl.host(2).addr,
            b,
            hl.host(3).addr,
            c,
            hl.host(4).addr
        ),
        true,
    );

    // Powered off: the process dies (its streams reset), the host stops
    // answering.
    lab.kill_store(c)?;
    hl.blackhole(4)?;
    let off = Instant::now();
    let (att_a, calls0) = (attempts(&lab, a, c), lab.get_store_calls(c)?);
    let att_b = attempts(&lab, b, c);
    let connecting = progress.wait("store b connecting to the silent host", WAIT, || {
        (attempts(&lab, b, c) > att_b).then_some(())
    });
    let mut sb = lab.stores.remove(&b).expect("store b");
    sb.process.signal(false)?;
    let asked = Instant::now();
    let status = sb.process.wait_exit(STOP_BOUND);
    let stopped = asked.elapsed();
    let log = std::fs::read_to_string(&sb.log).unwrap_or_default();
    let balanced = log
        .lines()
        .rev()
        .any(|l| l.contains("tikv-server stopped") && l.contains("[balanced=true]"));
    r.check(
        "SIGTERM",
        &format!(
            "a store stopped while its connect to the silent host hangs exits 0 within {}, balanced",
            ms(STOP_BOUND)
        ),
        format!(
            "connecting {}, {:?} after {}, {}",
            connecting.is_some(),
            status.map(|s| s.code()),
            ms(stopped),
            if balanced { "balanced" } else { "unbalanced or no stop line" }
        ),
        connecting.is_some() && status.is_some_and(|s| s.success()) && balanced,
    );

    // Removed through PD's API.
    let (code, body) = lab.pd_api("DELETE", &format!("/pd/api/v1/store/{}", c))?;
    let state = lab.pd_state(c)?;
    r.check(
        "delete store",
        "DELETE /pd/api/v1/store/{id}: 200, store Offline (it reported regions)",
        format!("{} {}, state {:?}", code, body.trim(), state),
        code == 200 && state.as_deref() == Some("Offline"),
    );
    let (code, _) = lab.pd_api("POST", &format!("/test-pd/api/v1/store/{}/bury", c))?;
    let buried = Instant::now();
    let verdict = progress.wait("store a's tombstone verdict", VERDICT_BOUND, || {
        tombstoned(&lab, a, c).then(|| buried.elapsed())
    });
    r.check(
        "tombstone verdict",
        &format!("within {} of the burial", ms(VERDICT_BOUND)),
        format!(
            "bury {}, {}",
            code,
            verdict
                .map(|t| format!("verdict after {}", ms(t)))
                .unwrap_or_else(|| "no verdict".into())
        ),
        code == 200 && verdict.is_some(),
    );
    let (code, _) = lab.pd_api("DELETE", "/pd/api/v1/stores/remove-tombstone")?;
    let state = lab.pd_state(c)?;
    r.check(
        "remove-tombstone",
        "200, PD forgets the store",
        format!("{}, state {:?}", code, state),
        code == 200 && state.is_none(),
    );

    // Each attempt hangs for its connect timeout and waits its backoff:
    // no more than one a second, plus the first two.
    let since = off.elapsed();
    let made = attempts(&lab, a, c) - att_a;
    let bound = since.as_secs() + 2;
    r.check(
        "connection attempts",
        &format!(
            "to the silent host, each ending at the connect timeout: <= {}",
            bound
        ),
        format!("{} in {}", made, ms(since)),
        made <= bound,
    );
    // And each attempt on its own: it waited the connect timeout, no less
    // (the host is silent, not refusing) and no longer (nothing hangs past
    // it). The lab's `raft-client-connect-timeout` is 1 s.
    let waits: Vec<(u64, bool)> = lab.raft_client(a)?["pool"]["recent_connects"][c.to_string()]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|e| u(&e["attempt"]) > att_a)
                .map(|e| (u(&e["waited_ms"]), e["connected"].as_bool().unwrap_or(true)))
                .collect()
        })
        .unwrap_or_default();
    r.check(
        "connect timeout",
        "every attempt to the silent host ends unconnected after 1 s (900-1500 ms)",
        format!("{:?}", waits.iter().map(|w| w.0).collect::<Vec<_>>()),
        !waits.is_empty()
            && waits
                .iter()
                .all(|&(ms, conn)| !conn && (900..=1500).contains(&ms)),
    );
    let calls = lab.get_store_calls(c)? - calls0;
    r.check(
        "PD load",
        &format!("GetStore calls since the power-off <= {}", 2 * bound),
        format!("{} in {}", calls, ms(since)),
        calls <= 2 * bound,
    );
    let warns = lab.warn_lines_about(a, c)?;
    r.check(
        &format!("store {}", a),
        &format!(
            "warn/error log lines about the removed store <= {}",
            crate::scenario::WARN_BOUND
        ),
        format!("{}", warns),
        warns <= crate::scenario::WARN_BOUND,
    );
    let balanced = progress.wait("store a balanced", WAIT, || {
        lab.raft_client(a).ok().filter(|v| v["balanced"] == true)
    });
    r.check(
        &format!("store {}", a),
        "no connection to the removed store, sent = delivered + refused + reported",
        balanced
            .as_ref()
            .map(|v| {
                format!(
                    "connections {}, {}",
                    u(&v["pool"]["connections"][c.to_string()]),
                    v["stats"]
                )
            })
            .unwrap_or_else(|| "unbalanced".into()),
        balanced.is_some_and(|v| u(&v["pool"]["connections"][c.to_string()]) == 0),
    );
    Ok(r)
}
