//! Many senders, a consumer that pops and waits on the queue's events, and
//! a close racing both: every message ends exactly once, popped, returned
//! by `close`, or handed back to its sender. Checked message by message,
//! no timing assertion.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_queue::{Event, PushError, Queue};

#[test]
fn every_message_has_exactly_one_owner() {
    const SENDERS: u64 = 6;
    const PER: u64 = 20_000;
    for round in 0..5u64 {
        let q = Arc::new(Queue::new(64));
        let popped = Arc::new(Mutex::new(Vec::new()));
        let consumer = {
            let (q, popped) = (q.clone(), popped.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    while let Some(m) = q.pop() {
                        mine.push(m);
                    }
                    let ev = futures::executor::block_on(futures::future::poll_fn(|cx| {
                        q.poll_event(cx, false)
                    }));
                    if ev == Event::Closed {
                        break;
                    }
                }
                popped.lock().unwrap().extend(mine);
            })
        };
        let closing = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let (q, closing) = (q.clone(), closing.clone());
                std::thread::spawn(move || {
                    let mut refused = Vec::new();
                    for i in 0..PER {
                        let mut m = s * PER + i;
                        loop {
                            match q.push(m) {
                                Ok(()) => break,
                                Err(PushError::Closed(back)) => {
                                    refused.push(back);
                                    break;
                                }
                                Err(PushError::Full(back)) => {
                                    m = back;
                                    q.notify();
                                    std::thread::yield_now();
                                }
                            }
                        }
                        if i % 16 == 0 {
                            q.notify();
                        }
                        if s == 0 && i == PER / 2 + round * 1000 {
                            closing.store(true, Ordering::SeqCst);
                            // Hold this sender until the close has
                            // happened, so its second half meets a closed
                            // queue however the threads are scheduled (on
                            // a busy machine the others may finish first).
                            let deadline = Instant::now() + Duration::from_secs(30);
                            while !q.is_closed() {
                                assert!(Instant::now() < deadline, "the queue was never closed");
                                std::thread::yield_now();
                            }
                        }
                    }
                    q.notify();
                    refused
                })
            })
            .collect();
        // Close once the first sender is half way, while all of them push.
        while !closing.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let drained = q.close();
        let mut refused = Vec::new();
        for h in senders {
            refused.extend(h.join().unwrap());
        }
        consumer.join().unwrap();
        let popped = popped.lock().unwrap().clone();
        assert!(q.is_empty(), "nothing stored after close");
        let mut seen = vec![0u8; (SENDERS * PER) as usize];
        for m in popped.iter().chain(drained.iter()).chain(refused.iter()) {
            seen[*m as usize] += 1;
        }
        let lost: Vec<_> = (0..seen.len()).filter(|i| seen[*i] == 0).take(5).collect();
        let twice: Vec<_> = (0..seen.len()).filter(|i| seen[*i] > 1).take(5).collect();
        assert!(lost.is_empty(), "round {}: lost {:?}", round, lost);
        assert!(
            twice.is_empty(),
            "round {}: counted twice {:?}",
            round,
            twice
        );
        // Sender 0 pushed the rest of its messages after the close: each
        // one was refused.
        let after_close = PER - (PER / 2 + round * 1000) - 1;
        let refused_0 = refused.iter().filter(|m| **m / PER == 0).count() as u64;
        assert_eq!(
            refused_0, after_close,
            "round {}: pushes after close",
            round
        );
        // FIFO per sender among what the consumer popped.
        for s in 0..SENDERS {
            let mine: Vec<_> = popped.iter().filter(|m| **m / PER == s).collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "sender {} out of order",
                s
            );
        }
    }
}
