//! A process-wide timer for async delays: `delay(instant)` returns a future
//! that completes at `instant`. One thread sleeps until the earliest deadline
//! and wakes the tasks whose deadline passed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use lazy_static::lazy_static;

struct Entry {
    deadline: Instant,
    seq: u64,
    state: Arc<DelayState>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.deadline, self.seq) == (o.deadline, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(o.deadline, o.seq))
    }
}

#[derive(Default)]
struct DelayState {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl DelayState {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

/// The handle of a timer thread.
pub struct Timer {
    queue: Mutex<Queue>,
    cond: Condvar,
}

lazy_static! {
    static ref GLOBAL_TIMER: Arc<Timer> = Timer::start("timer");
}

impl Timer {
    /// Starts a timer thread with the given name.
    pub fn start(name: &str) -> Arc<Timer> {
        let t = Arc::new(Timer {
            queue: Mutex::new(Queue::default()),
            cond: Condvar::new(),
        });
        let t2 = t.clone();
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || t2.run())
            .expect("spawn timer thread");
        t
    }

    fn run(&self) {
        let mut q = self.queue.lock().unwrap();
        loop {
            let now = Instant::now();
            while q.heap.peek().is_some_and(|e| e.0.deadline <= now) {
                let Reverse(e) = q.heap.pop().unwrap();
                e.state.fire();
            }
            q = match q.heap.peek() {
                Some(e) => {
                    let wait = e.0.deadline.saturating_duration_since(now);
                    self.cond.wait_timeout(q, wait).unwrap().0
                }
                None => self.cond.wait(q).unwrap(),
            };
        }
    }

    /// A future that completes at `deadline`.
    pub fn delay(&self, deadline: Instant) -> Delay {
        let state = Arc::new(DelayState::default());
        if deadline <= Instant::now() {
            state.fired.store(true, Ordering::Release);
        } else {
            let mut q = self.queue.lock().unwrap();
            q.seq += 1;
            let seq = q.seq;
            q.heap.push(Reverse(Entry {
                deadline,
                seq,
                state: state.clone(),
            }));
            self.cond.notify_one();
        }
        Delay { state }
    }
}

/// A future returned by [`delay`]; completes once its deadline has passed.
pub struct Delay {
    state: Arc<DelayState>,
}

impl Future for Delay {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.state.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.state.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// A future that completes at `deadline`, driven by the global timer thread.
pub fn delay(deadline: Instant) -> Delay {
    GLOBAL_TIMER.delay(deadline)
}

/// A future that completes after `d`.
pub fn sleep(d: Duration) -> Delay {
    delay(Instant::now() + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_complete_in_deadline_order_and_not_early() {
        let start = Instant::now();
        let late = delay(start + Duration::from_millis(60));
        let early = delay(start + Duration::from_millis(20));
        futures::executor::block_on(early);
        let e = start.elapsed();
        assert!(e >= Duration::from_millis(20), "{:?}", e);
        futures::executor::block_on(late);
        assert!(start.elapsed() >= Duration::from_millis(60));
        // A past deadline is ready at once.
        futures::executor::block_on(delay(start));
    }
}
