//! The removed-store walk on real processes: three stores with traffic,
//! SIGKILL one, delete it through PD's HTTP API until PD forgets it, and
//! check what the others did; then a cold-start store and a restart on a
//! new port. Every expectation is a row of the [`Report`].

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::Lab;
use crate::report::{Progress, Report};

/// How long any one wait may take before its row fails.
pub const WAIT: Duration = Duration::from_secs(15);
/// Bound on the time a cold-start store takes to get traffic once it is
/// registered, and on the others following a restarted store.
pub const FOLLOW_BOUND: Duration = Duration::from_secs(10);
/// Bound on a SIGTERM'd store's exit.
pub const EXIT_BOUND: Duration = Duration::from_secs(10);
/// Warn/error lines a store may write about the removed store, from the
/// SIGKILL to the end of the walk (connection failures, throttled).
pub const WARN_BOUND: usize = 12;
/// The window in which a store with a tombstone verdict must make no
/// GetStore call for it.
pub const QUIET_WINDOW: Duration = Duration::from_secs(2);

// The lab config's raft client backoffs (see `LAB_CONFIG`).
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Reconnect attempts (each one GetStore) a store can make in `t` under a
/// doubling backoff from `initial` capped at `cap`, counting the first.
pub fn schedule_attempts(t: Duration, initial: Duration, cap: Duration) -> u64 {
    let (mut at, mut b, mut n) = (Duration::ZERO, initial, 1);
    while at + b <= t {
        at += b;
        n += 1;
        b = (b * 2).min(cap);
    }
    n
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

fn received_from(v: &Value, id: u64) -> u64 {
    u(&v["traffic"]["reports"]["received_from"][id.to_string()])
}

fn connections(v: &Value, id: u64) -> u64 {
    u(&v["pool"]["connections"][id.to_string()])
}

fn in_not_found(v: &Value, id: u64) -> bool {
    v["pool"]["not_found"]
        .as_array()
        .map(|a| a.iter().any(|e| e["store_id"].as_u64() == Some(id)))
        .unwrap_or(false)
}

/// Whether any of `stores` has `id` in its tombstone set (or cannot say).
fn tombstoned_anywhere(lab: &Lab, stores: &[u64], id: u64) -> bool {
    stores.iter().any(|&s| {
        lab.raft_client(s)
            .map(|v| ids(&v["pool"]["tombstones"]).contains(&id))
            .unwrap_or(true)
    })
}

/// A duration as `NNNms`, for report rows.
pub fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Walks the scenario on a new lab with PD `flavor` (`old` or `new`).
/// Setup failures (a binary missing, a process that does not start) are
/// `Err`; expectations are rows of the report.
pub fn removed_store_walk(flavor: &str, progress: Progress) -> Result<Report, String> {
    let mut r = Report::new("processes", flavor);
    let mut lab = Lab::start(flavor)?;

    // 1. Three stores, traffic between every pair.
    let a = lab.start_store("store-a")?;
    let b = lab.start_store("store-b")?;
    let c = lab.start_store("store-c")?;
    let t = Instant::now();
    let flowing = progress.wait("traffic between the three stores", WAIT, || {
        // Traffic both ways, and PD has heard each store report regions
        // (an empty store is buried at once when deleted).
        let all = [a, b, c].iter().all(|&me| {
            lab.raft_client(me)
                .map(|v| {
                    [a, b, c]
                        .iter()
                        .all(|&o| o == me || received_from(&v, o) > 0)
                })
                .unwrap_or(false)
                && lab.pd_region_count(me).unwrap_or(0) > 0
        });
        all.then_some(())
    });
    r.check(
        "start",
        "test-pd + 3 tikv-servers, heartbeats between every pair, regions reported to PD",
        format!(
            "stores {}, {}, {}: {}",
            a,
            b,
            c,
            if flowing.is_some() {
                format!("flowing after {}", ms(t.elapsed()))
            } else {
                "not flowing".into()
            }
        ),
        flowing.is_some(),
    );
    if flowing.is_none() {
        return Ok(r);
    }

    // 2. SIGKILL store c; PD: delete (Offline), then Tombstone.
    let members_before = u(&lab.counters()?["get_members"]);
    lab.kill_store(c)?;
    let killed = Instant::now();
    let calls_at_kill = lab.get_store_calls(c)?;
    let (code, body) = lab.pd_api("DELETE", &format!("/pd/api/v1/store/{}", c))?;
    let state = lab.pd_state(c)?;
    r.check(
        "delete store",
        "DELETE /pd/api/v1/store/{id}: 200, store Offline",
        format!("{} {}, state {:?}", code, body.trim(), state),
        code == 200 && state.as_deref() == Some("Offline"),
    );
    let (code, _) = lab.pd_api(
        "POST",
        &format!("/pd/api/v1/store/{}/state?state=Tombstone", c),
    )?;
    let state = lab.pd_state(c)?;
    r.check(
        "tombstone",
        "PD marks the store Tombstone",
        format!("{} state {:?}", code, state),
        code == 200 && state.as_deref() == Some("Tombstone"),
    );
    let verdict = progress.wait("the tombstone verdict on both stores", WAIT, || {
        let both = [a, b].iter().all(|&s| {
            lab.raft_client(s)
                .map(|v| ids(&v["pool"]["tombstones"]).contains(&c))
                .unwrap_or(false)
        });
        both.then(|| killed.elapsed())
    });
    r.check(
        "tombstone verdict",
        "both stores put the store in their tombstone set",
        verdict
            .map(|d| format!("after {} from SIGKILL", ms(d)))
            .unwrap_or_else(|| "not reached".into()),
        verdict.is_some(),
    );

    // 3. remove-tombstone: PD forgets the store.
    let (code, _) = lab.pd_api("DELETE", "/pd/api/v1/stores/remove-tombstone")?;
    let state = lab.pd_state(c)?;
    r.check(
        "remove-tombstone",
        "DELETE /pd/api/v1/stores/remove-tombstone: 200, GET store 404",
        format!("{}, state {:?}", code, state),
        code == 200 && state.is_none(),
    );
    let calls_at_verdict = lab.get_store_calls(c)?;
    let since_kill = killed.elapsed();
    // A measurement window: nothing may happen in it.
    let quiet = progress.wait("a quiet window", QUIET_WINDOW, || {
        (lab.get_store_calls(c).unwrap_or(0) != calls_at_verdict).then_some(())
    });
    let calls_after = lab.get_store_calls(c)? - calls_at_verdict;
    r.check(
        "after the verdict",
        &format!("0 GetStore calls for the store in {}", ms(QUIET_WINDOW)),
        format!("{} calls", calls_after),
        quiet.is_none() && calls_after == 0,
    );
    let bound = 2 * schedule_attempts(since_kill, INITIAL_BACKOFF, MAX_BACKOFF);
    let calls = calls_at_verdict - calls_at_kill;
    r.check(
        "PD load",
        &format!(
            "GetStore calls since SIGKILL within the backoff schedule (<= {})",
            bound
        ),
        format!("{} calls in {}", calls, ms(since_kill)),
        calls <= bound,
    );
    for s in [a, b] {
        let v = lab.raft_client(s)?;
        let st = lab.status(s)?;
        r.check(
            &format!("store {}", s),
            "no connection to the store, tombstone set holds it",
            format!(
                "connections {}, tombstones {:?}",
                connections(&v, c),
                ids(&v["pool"]["tombstones"])
            ),
            connections(&v, c) == 0 && ids(&v["pool"]["tombstones"]).contains(&c),
        );
        r.check(
            &format!("store {}", s),
            "PD client reconnects 0",
            format!("{}", u(&st["pd_reconnects"])),
            u(&st["pd_reconnects"]) == 0,
        );
        let metrics = lab.metrics(s)?;
        let gauge = metrics
            .lines()
            .find(|l| l.starts_with("tikv_server_raft_client_tombstone_stores "))
            .unwrap_or("")
            .to_owned();
        r.check(
            &format!("store {}", s),
            "/metrics: tikv_server_raft_client_tombstone_stores 1",
            gauge.clone(),
            gauge.ends_with(" 1"),
        );
        // The stale peers' regions: in the view, the metric, the verdict's
        // log line.
        let stale: Vec<u64> = v["pool"]["stale_regions"][c.to_string()]["regions"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["region_id"].as_u64()).collect())
            .unwrap_or_default();
        let metric = lab
            .metrics(s)?
            .lines()
            .find(|l| {
                l.starts_with("tikv_server_raft_client_stale_regions{")
                    && l.contains(&format!("store_id=\"{}\"", c))
            })
            .unwrap_or("")
            .to_owned();
        let log = std::fs::read_to_string(&lab.store(s)?.log).unwrap_or_default();
        let logged = log.lines().any(|l| {
            l.contains("regions still have peers on it") && l.contains(&format!("[store_id={}]", c))
        });
        r.check(
            &format!("store {}", s),
            "the regions still sending to the store: named in /debug/raft_client, /metrics and the verdict's log line",
            format!("regions {:?}, {}, logged {}", stale, metric, logged),
            !stale.is_empty() && metric.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 0) && logged,
        );
        let warns = lab.warn_lines_about(s, c)?;
        r.check(
            &format!("store {}", s),
            &format!("warn/error log lines about the store <= {}", WARN_BOUND),
            format!("{}", warns),
            warns <= WARN_BOUND,
        );
        let balanced = progress.wait("balanced accounting", WAIT, || {
            lab.raft_client(s).ok().filter(|v| v["balanced"] == true)
        });
        r.check(
            &format!("store {}", s),
            "sent = delivered + refused + reported unreachable",
            balanced
                .as_ref()
                .map(|v| v["stats"].to_string())
                .unwrap_or_else(|| {
                    lab.raft_client(s)
                        .map(|v| v["stats"].to_string())
                        .unwrap_or_default()
                }),
            balanced.is_some(),
        );
    }
    let members_after = u(&lab.counters()?["get_members"]);
    r.check(
        "PD reconnects",
        "test-pd saw no GetMembers (reconnect) since the SIGKILL",
        format!("{} -> {}", members_before, members_after),
        members_before == members_after,
    );

    // 4. Cold start: peers point at a store PD does not know yet.
    let d = lab.alloc_store_id()?;
    for s in [a, b] {
        lab.add_peer_store(s, d)?;
    }
    let episode = progress.wait(
        "a not-found episode for the unregistered store",
        WAIT,
        || {
            let both = [a, b].iter().all(|&s| {
                lab.raft_client(s)
                    .map(|v| in_not_found(&v, d))
                    .unwrap_or(false)
            });
            both.then_some(())
        },
    );
    let tomb = tombstoned_anywhere(&lab, &[a, b], d);
    r.check(
        "cold start",
        "peers on an unregistered store: not-found episode, not tombstone",
        format!(
            "store {}: episode {}, tombstone {}",
            d,
            episode.is_some(),
            tomb
        ),
        episode.is_some() && !tomb,
    );
    let started = lab.start_store_as("store-d", d)?;
    let registered = Instant::now();
    let got = progress.wait("traffic to the cold-started store", FOLLOW_BOUND, || {
        let v = lab.raft_client(d).ok()?;
        (received_from(&v, a) > 0 && received_from(&v, b) > 0).then(|| registered.elapsed())
    });
    let tomb = tombstoned_anywhere(&lab, &[a, b], d);
    r.check(
        "cold start",
        &format!(
            "registered store gets traffic within {}, never blacklisted",
            ms(FOLLOW_BOUND)
        ),
        format!(
            "store {} (id {}): {}, tombstone {}",
            started,
            d,
            got.map(|t| format!("traffic after {}", ms(t)))
                .unwrap_or_else(|| "no traffic".into()),
            tomb
        ),
        started == d && got.is_some() && !tomb,
    );

    // 5. Restart store b on a new port, same data dir.
    let mut old = lab.stores.remove(&b).expect("store b");
    old.process.signal(false)?;
    let status = old.process.wait_exit(EXIT_BOUND);
    let log = std::fs::read_to_string(&old.log).unwrap_or_default();
    let stopped_line = log
        .lines()
        .rev()
        .find(|l| l.contains("tikv-server stopped"))
        .unwrap_or("");
    r.check(
        "SIGTERM",
        &format!(
            "exit 0 within {}, pending messages accounted",
            ms(EXIT_BOUND)
        ),
        format!(
            "{:?}; {}",
            status.map(|s| s.code()),
            if stopped_line.contains("[balanced=true]") {
                "balanced"
            } else {
                "unbalanced or no stop line"
            }
        ),
        status.map(|s| s.success()).unwrap_or(false) && stopped_line.contains("[balanced=true]"),
    );
    // The kernel may give a freed port straight back to the next bind on
    // port 0 (it did once in CI, and "new port" failed). Holding the old
    // port while the store starts leaves the kernel no such choice. Dials
    // to it meanwhile wait in the backlog and are reset when it is dropped.
    let hold = std::net::TcpListener::bind(&old.addr).ok();
    let b2 = lab.start_store("store-b")?;
    drop(hold);
    let new_addr = lab.store(b2)?.addr.clone();
    let restarted = Instant::now();
    let followed = progress.wait("the others following the new address", FOLLOW_BOUND, || {
        let v = lab.raft_client(b2).ok()?;
        (received_from(&v, a) > 0 && received_from(&v, d) > 0).then(|| restarted.elapsed())
    });
    r.check(
        "restart",
        "same data dir: same store id, new port; others follow",
        format!(
            "id {} -> {}, {} -> {}, {}",
            b,
            b2,
            old.addr,
            new_addr,
            followed
                .map(|t| format!("traffic after {}", ms(t)))
                .unwrap_or_else(|| "no traffic".into())
        ),
        b2 == b && new_addr != old.addr && followed.is_some(),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_counts_the_doubling_backoff() {
        let ms = Duration::from_millis;
        assert_eq!(schedule_attempts(ms(0), ms(100), ms(1000)), 1);
        assert_eq!(schedule_attempts(ms(100), ms(100), ms(1000)), 2);
        // 0, 100, 300, 700, 1500, 2500, 3500
        assert_eq!(schedule_attempts(ms(1499), ms(100), ms(1000)), 4);
        assert_eq!(schedule_attempts(ms(3500), ms(100), ms(1000)), 7);
    }
}
