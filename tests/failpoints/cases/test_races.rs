//! Races the failpoints pin: sends racing the tombstone verdict, a
//! tombstone while the address is cached and in use, stop while a
//! connection is taking a batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use test_pd::NotFoundShape;
use tikv::server::Config;

use super::test_removed_store::{fed_from, observe_for};
use crate::cluster::Cluster;
use crate::util::*;

const T: Duration = Duration::from_secs(20);

/// Holds every thread that reaches failpoint `name` until opened; counts
/// arrivals. Opens on drop so a failing test never leaves a thread parked.
pub struct Gate {
    name: &'static str,
    open: Arc<AtomicBool>,
    arrivals: Arc<AtomicU64>,
}

impl Gate {
    /// Installs the gate on failpoint `name`.
    pub fn install(name: &'static str) -> Gate {
        let open = Arc::new(AtomicBool::new(false));
        let arrivals = Arc::new(AtomicU64::new(0));
        let (o, a) = (open.clone(), arrivals.clone());
        fail::cfg_callback(name, move || {
            a.fetch_add(1, Ordering::SeqCst);
            while !o.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_millis(1));
            }
        })
        .unwrap();
        Gate {
            name,
            open,
            arrivals,
        }
    }

    /// Threads that reached the failpoint so far.
    pub fn arrivals(&self) -> u64 {
        self.arrivals.load(Ordering::SeqCst)
    }

    /// Lets every held thread go, and later ones pass.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        fail::remove(self.name);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// A connection task holds the tombstone verdict (failpoint between the
/// verdict and the pool update) while three clones keep sending to the
/// store over four connections. Every message ends refused or reported;
/// none is delivered and none vanishes.
#[test]
fn sends_racing_the_tombstone_verdict_are_all_accounted() {
    let _s = fail::FailScenario::setup();
    let cfg = Config {
        grpc_raft_conn_num: 4,
        ..fast_cfg()
    };
    let c = Cluster::new(NotFoundShape::Header, &[1], &[1, 3], 16, cfg);
    c.pd.add_store(3, "127.0.0.1:9");
    c.pd.bury(3);
    let gate = Gate::install("raft_client_on_tombstone_verdict");
    let client = c.store(1).client.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let (mut cl, stop) = (client.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for region in 1..=16 {
                        let _ = cl.send(msg(region, 1, 3));
                    }
                    cl.flush();
                    std::thread::park_timeout(Duration::from_millis(1));
                }
            })
        })
        .collect();
    wait_until(T, "a connection task holds the verdict", || {
        gate.arrivals() >= 1
    });
    let sent = client.stats().sent;
    wait_until(T, "sends in the window", || {
        client.stats().sent > sent + 300
    });
    assert!(!client.is_tombstone(3), "the pool is not updated yet");
    gate.open();
    wait_until(T, "the verdict lands", || {
        client.is_tombstone(3) && client.connection_count() == 0
    });
    let sent = client.stats().sent;
    wait_until(T, "sends after the verdict", || {
        client.stats().sent > sent + 300
    });
    stop.store(true, Ordering::SeqCst);
    for h in senders {
        h.join().unwrap();
    }
    let s = assert_balanced(&client);
    assert_eq!(s.delivered, 0);
    assert!(s.reported_unreachable > 0, "queued in the window: reported");
    assert!(s.refused > 0, "after the verdict: refused");
    assert_eq!(
        c.store(1).router.unreachable_count() as u64,
        s.reported_unreachable,
        "every report reached the router"
    );
}

/// Store 3's address is cached and in use when PD marks it Tombstone: the
/// stream keeps working until it breaks, and then the next resolution asks
/// PD (the cached address is not served again) and stops for good.
#[test]
fn tombstone_while_the_address_is_cached() {
    let _s = fail::FailScenario::setup();
    let mut c = Cluster::new(NotFoundShape::Header, &[1, 3], &[1, 3], 4, fast_cfg());
    c.start_traffic(Duration::from_millis(20));
    wait_until(T, "store 3 hears from 1", || fed_from(&c, 3, 1) > 0);
    c.pd.bury(3);
    let n = fed_from(&c, 3, 1);
    wait_until(T, "the stream still works", || fed_from(&c, 3, 1) > n + 10);
    assert!(!c.store(1).client.is_tombstone(3));
    let calls = c.pd.get_store_count(3);
    c.stop_store(3);
    wait_until(T, "tombstone verdict after the stream broke", || {
        c.store(1).client.is_tombstone(3)
    });
    assert!(c.pd.get_store_count(3) > calls, "PD was asked again");
    let attempts = c.store(1).client.connection_attempts(3);
    observe_for(Duration::from_millis(500));
    assert_eq!(c.store(1).client.connection_attempts(3), attempts);
    c.stop_traffic();
    c.assert_balanced();
}

/// `stop` while a connection task is between "messages are queued" and
/// taking them: what it had not taken is reported by `stop`, nothing is
/// sent after it, nothing vanishes.
#[test]
fn stop_while_a_connection_takes_a_batch() {
    let _s = fail::FailScenario::setup();
    let c = Cluster::new(NotFoundShape::Header, &[1, 2], &[1, 2], 1, fast_cfg());
    let mut client = c.store(1).client.clone();
    client.send(msg(1, 1, 2)).unwrap();
    client.flush();
    wait_until(T, "the connection streams", || fed_from(&c, 2, 1) == 1);
    let gate = Gate::install("raft_client_before_take_batch");
    for i in 0..50 {
        client.send(msg(i, 1, 2)).unwrap();
    }
    client.flush();
    wait_until(T, "the task is about to take a batch", || {
        gate.arrivals() >= 1
    });
    // stop waits for the task, so it runs aside; the gate opens once stop
    // has closed the queue and reported what was in it.
    let stopping = client.clone();
    let stopper = std::thread::spawn(move || stopping.stop());
    wait_until(T, "stop reports the queued messages", || {
        client.stats().reported_unreachable >= 50
    });
    gate.open();
    assert!(stopper.join().unwrap(), "every task ended within STOP_WAIT");
    let s = assert_balanced(&client);
    assert_eq!(fed_from(&c, 2, 1), 1, "nothing sent after stop");
    assert!(s.reported_unreachable >= 50, "{:?}", s);
    assert_eq!(s.delivered + s.reported_unreachable, 51);
}

/// `stop` returns only once every connection task has ended, so the
/// accounting read right after it is final (tikv-server logs it in its
/// last line on SIGTERM). A task held before taking a batch, with a message
/// written and not yet confirmed, keeps `stop` waiting; once it goes, the
/// held message and the queued one are both reported.
#[test]
fn stop_waits_for_connection_tasks_to_end() {
    let _s = fail::FailScenario::setup();
    let cfg = Config {
        // What is written stays held (unconfirmed) for the whole test.
        raft_client_call_confirm_window: tikv_util::config::ReadableDuration::secs(3600),
        ..fast_cfg()
    };
    let c = Cluster::new(NotFoundShape::Header, &[1, 2], &[1, 2], 1, cfg);
    let mut client = c.store(1).client.clone();
    client.send(msg(1, 1, 2)).unwrap();
    client.flush();
    wait_until(T, "the connection streams", || fed_from(&c, 2, 1) == 1);
    let gate = Gate::install("raft_client_before_take_batch");
    client.send(msg(2, 1, 2)).unwrap();
    client.flush();
    wait_until(T, "the task is about to take a batch", || {
        gate.arrivals() >= 1
    });
    let returned = Arc::new(AtomicBool::new(false));
    let (stopping, r) = (client.clone(), returned.clone());
    let stopper = std::thread::spawn(move || {
        stopping.stop();
        r.store(true, Ordering::SeqCst);
        stopping.stats()
    });
    observe_for(Duration::from_millis(500));
    assert!(
        !returned.load(Ordering::SeqCst),
        "stop returned while a connection task was still running"
    );
    gate.open();
    let s = stopper.join().unwrap();
    assert!(s.balanced(), "final when stop returns: {:?}", s);
    assert_eq!((s.delivered, s.reported_unreachable), (0, 2), "{:?}", s);
    assert_eq!(client.connection_tasks(), 0);
}
