//! The queue of one raft client connection (upstream keeps the same shape
//! inside tikv/tikv `src/server/raft_client.rs`: a bounded lock-free
//! `ArrayQueue` plus an atomic connection state; this is our own design of
//! it, kept in a crate of its own so `--cfg loom` can model-check it alone).
//!
//! Many senders push; one consumer (the connection task) pops; anyone may
//! close it. What makes the raft client's accounting exact
//! (`sent == delivered + refused + reported`) is that every pushed message
//! has exactly one owner afterwards:
//!
//! - `state` holds a CLOSED bit and the number of pushes in progress. A push
//!   first adds one to it; if CLOSED was already set it takes that back and
//!   hands the message back to the sender (`PushError::Closed`), otherwise it
//!   stores the message and then takes its one back.
//! - `close` sets CLOSED, then waits until no push is in progress, then
//!   drains. A push that got in before CLOSED has stored its message before
//!   `close` drains; a push after CLOSED never stores. So after `close`
//!   returns nothing can enter the queue, and every message ever stored was
//!   either popped by the consumer or returned by `close` (or a `drain`).
//! - The consumer registers its waker, marks itself `parked` and then
//!   looks again (closed, interrupted, non-empty), so a `notify` or `close`
//!   racing its `poll` cannot be lost. `notify` wakes only a parked
//!   consumer (and unmarks it): while the consumer is busy writing, a
//!   sender's flush costs one atomic swap, not a thread wake-up.
//!
//! The only lock-free structure is the ring (crossbeam's `ArrayQueue`); the
//! waker is an `AtomicWaker`. No lock is taken on any path. Under
//! `--cfg loom` the ring is a loom mutex around a `VecDeque` (the ring's own
//! correctness is crossbeam's) and the atomics and waker are loom's.

use std::task::{Context, Poll};

#[cfg(loom)]
mod sync {
    pub use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    pub use loom::thread::yield_now;

    /// loom's waker cell with the `&Waker` signature of futures'.
    pub struct AtomicWaker(loom::future::AtomicWaker);

    impl AtomicWaker {
        pub fn new() -> Self {
            AtomicWaker(loom::future::AtomicWaker::new())
        }
        pub fn register(&self, w: &std::task::Waker) {
            self.0.register(w.clone())
        }
        pub fn wake(&self) {
            self.0.wake()
        }
    }

    /// A bounded FIFO standing in for `ArrayQueue` in the model.
    pub struct Ring<T> {
        cap: usize,
        buf: loom::sync::Mutex<std::collections::VecDeque<T>>,
    }

    impl<T> Ring<T> {
        pub fn new(cap: usize) -> Self {
            Ring {
                cap,
                buf: loom::sync::Mutex::new(std::collections::VecDeque::new()),
            }
        }
        pub fn push(&self, t: T) -> Result<(), T> {
            let mut b = self.buf.lock().unwrap();
            if b.len() >= self.cap {
                return Err(t);
            }
            b.push_back(t);
            Ok(())
        }
        pub fn pop(&self) -> Option<T> {
            self.buf.lock().unwrap().pop_front()
        }
        pub fn is_empty(&self) -> bool {
            self.buf.lock().unwrap().is_empty()
        }
        pub fn len(&self) -> usize {
            self.buf.lock().unwrap().len()
        }
    }
}

#[cfg(not(loom))]
mod sync {
    pub use futures::task::AtomicWaker;
    pub use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    pub use std::thread::yield_now;

    /// The lock-free ring.
    pub struct Ring<T>(crossbeam::queue::ArrayQueue<T>);

    impl<T> Ring<T> {
        pub fn new(cap: usize) -> Self {
            Ring(crossbeam::queue::ArrayQueue::new(cap.max(1)))
        }
        pub fn push(&self, t: T) -> Result<(), T> {
            self.0.push(t)
        }
        pub fn pop(&self) -> Option<T> {
            self.0.pop()
        }
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
    }
}

use sync::*;

const CLOSED: usize = 1 << (usize::BITS - 1);

/// Why a push was refused; the message comes back so the sender can retry
/// it elsewhere or account for it.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The queue holds `capacity` messages.
    Full(T),
    /// The queue was closed.
    Closed(T),
}

/// What the consumer is woken for.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// There are messages to pop.
    Messages,
    /// `interrupt` was called (and the consumer asked to hear of it).
    Interrupted,
    /// The queue is closed.
    Closed,
}

/// A bounded multi-producer, single-consumer queue that can be closed with
/// exact accounting (see the crate doc).
pub struct Queue<T> {
    ring: Ring<T>,
    state: AtomicUsize,
    interrupted: AtomicBool,
    parked: AtomicBool,
    waker: AtomicWaker,
    cap: usize,
}

impl<T> Queue<T> {
    /// A queue of at most `cap` messages (at least 1).
    pub fn new(cap: usize) -> Self {
        Queue {
            ring: Ring::new(cap),
            state: AtomicUsize::new(0),
            interrupted: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            cap: cap.max(1),
        }
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Messages stored now.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether nothing is stored now.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Stores `msg`, or hands it back. Does not wake the consumer: call
    /// [`notify`](Self::notify) once per batch of pushes (a flush).
    pub fn push(&self, msg: T) -> Result<(), PushError<T>> {
        if self.state.fetch_add(1, Ordering::SeqCst) & CLOSED != 0 {
            self.state.fetch_sub(1, Ordering::SeqCst);
            return Err(PushError::Closed(msg));
        }
        let r = self.ring.push(msg);
        self.state.fetch_sub(1, Ordering::SeqCst);
        r.map_err(PushError::Full)
    }

    /// Wakes the consumer if it waits.
    pub fn notify(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Wakes the consumer with [`Event::Interrupted`] (if it asks for it).
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Forgets a pending interrupt.
    pub fn clear_interrupt(&self) {
        self.interrupted.store(false, Ordering::SeqCst);
    }

    /// Whether the queue is closed.
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::SeqCst) & CLOSED != 0
    }

    /// Closes the queue and returns what was stored; later pushes fail
    /// with `Closed`. Waits for pushes in progress (each is a few
    /// instructions) so none can store after the drain.
    pub fn close(&self) -> Vec<T> {
        self.state.fetch_or(CLOSED, Ordering::SeqCst);
        while self.state.load(Ordering::SeqCst) & !CLOSED != 0 {
            yield_now();
        }
        self.waker.wake();
        self.drain()
    }

    /// Pops one message (the consumer).
    pub fn pop(&self) -> Option<T> {
        self.ring.pop()
    }

    /// Pops everything stored now.
    pub fn drain(&self) -> Vec<T> {
        let mut v = Vec::new();
        while let Some(m) = self.ring.pop() {
            v.push(m);
        }
        v
    }

    fn ready(&self, want_interrupt: bool) -> Option<Event> {
        if self.is_closed() {
            return Some(Event::Closed);
        }
        if want_interrupt && self.interrupted.swap(false, Ordering::SeqCst) {
            return Some(Event::Interrupted);
        }
        if !self.ring.is_empty() {
            return Some(Event::Messages);
        }
        None
    }

    /// The consumer's wait: ready at once if closed, interrupted (when
    /// `want_interrupt`) or non-empty; otherwise registers the waker and
    /// looks once more, so a wake-up between the look and the registration
    /// is not lost.
    pub fn poll_event(&self, cx: &mut Context<'_>, want_interrupt: bool) -> Poll<Event> {
        if let Some(e) = self.ready(want_interrupt) {
            return Poll::Ready(e);
        }
        self.waker.register(cx.waker());
        // Parked before the second look: a push the look misses is
        // followed by a notify that sees `parked`.
        self.parked.store(true, Ordering::SeqCst);
        match self.ready(want_interrupt) {
            Some(e) => {
                self.parked.store(false, Ordering::SeqCst);
                Poll::Ready(e)
            }
            None => Poll::Pending,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo_and_close() {
        let q = Queue::new(2);
        assert_eq!(q.push(1), Ok(()));
        assert_eq!(q.push(2), Ok(()));
        assert_eq!(q.push(3), Err(PushError::Full(3)));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.close(), vec![2]);
        assert_eq!(q.push(4), Err(PushError::Closed(4)));
        assert!(q.is_closed());
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn events() {
        let q = Queue::new(4);
        let w = futures::task::noop_waker();
        let mut cx = Context::from_waker(&w);
        assert_eq!(q.poll_event(&mut cx, true), Poll::Pending);
        q.interrupt();
        assert_eq!(q.poll_event(&mut cx, false), Poll::Pending, "not asked for");
        assert_eq!(q.poll_event(&mut cx, true), Poll::Ready(Event::Interrupted));
        q.push(1).unwrap();
        assert_eq!(q.poll_event(&mut cx, true), Poll::Ready(Event::Messages));
        q.close();
        assert_eq!(q.poll_event(&mut cx, true), Poll::Ready(Event::Closed));
    }
}
