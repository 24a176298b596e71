//! `RUSTFLAGS="--cfg loom" cargo test -p raft_queue --test loom` (run by
//! `make test` in its own target dir): every interleaving of two senders, a
//! close and a taker, up to [`PREEMPTIONS`] preemptions per execution
//! (`LOOM_MAX_PREEMPTIONS` overrides it), keeps the identity (each message
//! popped, drained by close, or handed back) and loses no wake-up (a lost
//! one deadlocks the taker, which loom reports).
#![cfg(loom)]

use loom::sync::Arc;
use raft_queue::{Event, PushError, Queue};

/// Preemptions explored per execution; loom's own default is unbounded, which
/// on this model does not finish in minutes. 3 is what tokio's CI uses.
const PREEMPTIONS: usize = 3;

/// Runs `f` under loom, bounded to [`PREEMPTIONS`] unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(PREEMPTIONS);
    }
    b.check(f);
}

#[test]
fn two_senders_a_close_and_a_taker() {
    model(|| {
        let q = Arc::new(Queue::new(1));
        let senders: Vec<_> = (0..2u32)
            .map(|s| {
                let q = q.clone();
                loom::thread::spawn(move || {
                    let r = match q.push(s) {
                        Ok(()) => None,
                        Err(PushError::Closed(m)) | Err(PushError::Full(m)) => Some(m),
                    };
                    q.notify();
                    r
                })
            })
            .collect();
        let taker = {
            let q = q.clone();
            loom::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    while let Some(m) = q.pop() {
                        got.push(m);
                    }
                    let ev = loom::future::block_on(futures::future::poll_fn(|cx| {
                        q.poll_event(cx, false)
                    }));
                    if ev == Event::Closed {
                        return got;
                    }
                }
            })
        };
        // The model's own thread closes, racing the others.
        let drained = q.close();
        let mut owners = vec![0; 2];
        for h in senders {
            if let Some(m) = h.join().unwrap() {
                owners[m as usize] += 1;
            }
        }
        for m in drained {
            owners[m as usize] += 1;
        }
        for m in taker.join().unwrap() {
            owners[m as usize] += 1;
        }
        assert_eq!(owners, vec![1, 1], "each message has exactly one owner");
        assert!(q.pop().is_none());
    });
}

/// No close to rescue it: a taker that waits for a message must be woken
/// by the sender's notify in every interleaving (a lost wake-up leaves it
/// blocked, which loom reports as a deadlock).
#[test]
fn a_notify_is_never_lost() {
    model(|| {
        let q = Arc::new(Queue::new(2));
        let sender = {
            let q = q.clone();
            loom::thread::spawn(move || {
                q.push(7u32).unwrap();
                q.notify();
            })
        };
        let got = loop {
            if let Some(m) = q.pop() {
                break m;
            }
            let _ = loom::future::block_on(futures::future::poll_fn(|cx| q.poll_event(cx, false)));
        };
        sender.join().unwrap();
        assert_eq!(got, 7);
    });
}
