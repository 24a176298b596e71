//! A named worker thread that runs a [`Runnable`] on tasks sent through a
//! [`Scheduler`] (a crossbeam channel), like TiKV's `tikv_util::worker`.

use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crossbeam::channel::{self, Sender};

/// Something that handles tasks of type `Task` on a worker thread.
pub trait Runnable: Send + 'static {
    /// The task type.
    type Task: Display + Send + 'static;
    /// Handles one task.
    fn run(&mut self, task: Self::Task);
    /// Called once when the worker stops.
    fn shutdown(&mut self) {}
}

/// Error returned when a task cannot be scheduled because the worker stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("worker {0} is stopped")]
pub struct ScheduleError(pub String);

enum Msg<T> {
    Task(T),
    Stop,
}

/// Sends tasks to a running worker. Cheap to clone.
pub struct Scheduler<T> {
    name: Arc<str>,
    sender: Sender<Msg<T>>,
}

impl<T> Clone for Scheduler<T> {
    fn clone(&self) -> Self {
        Scheduler {
            name: self.name.clone(),
            sender: self.sender.clone(),
        }
    }
}

impl<T: Display + Send + 'static> Scheduler<T> {
    /// Queues `task`; fails only when the worker has stopped.
    pub fn schedule(&self, task: T) -> Result<(), ScheduleError> {
        self.sender
            .send(Msg::Task(task))
            .map_err(|_| ScheduleError(self.name.to_string()))
    }
}

/// Asks one worker thread to stop.
type StopFn = Box<dyn Fn() + Send>;

/// A named worker: threads started with [`Worker::start`] stop with it.
pub struct Worker {
    name: String,
    handles: Mutex<Vec<(StopFn, JoinHandle<()>)>>,
}

impl Worker {
    /// A worker whose threads are named `name`.
    pub fn new(name: impl Into<String>) -> Worker {
        Worker {
            name: name.into(),
            handles: Mutex::new(Vec::new()),
        }
    }

    /// Starts a thread running `runner`; returns the scheduler feeding it.
    pub fn start<R: Runnable>(&self, mut runner: R) -> Scheduler<R::Task> {
        let (tx, rx) = channel::unbounded::<Msg<R::Task>>();
        let handle = thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                while let Ok(Msg::Task(t)) = rx.recv() {
                    runner.run(t);
                }
                runner.shutdown();
            })
            .expect("spawn worker thread");
        let stop_tx = tx.clone();
        let stop: StopFn = Box::new(move || {
            let _ = stop_tx.send(Msg::Stop);
        });
        self.handles.lock().unwrap().push((stop, handle));
        Scheduler {
            name: self.name.clone().into(),
            sender: tx,
        }
    }

    /// Stops every thread of this worker and waits for them.
    pub fn stop(&self) {
        let handles: Vec<_> = self.handles.lock().unwrap().drain(..).collect();
        for (stop, h) in handles {
            stop();
            let _ = h.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum(crossbeam::channel::Sender<u64>, u64);
    impl Runnable for Sum {
        type Task = u64;
        fn run(&mut self, t: u64) {
            self.1 += t;
        }
        fn shutdown(&mut self) {
            self.0.send(self.1).unwrap();
        }
    }

    #[test]
    fn runs_tasks_in_order_and_stops() {
        let w = Worker::new("sum");
        let (tx, rx) = crossbeam::channel::unbounded();
        let s = w.start(Sum(tx, 0));
        for i in 1..=10 {
            s.schedule(i).unwrap();
        }
        w.stop();
        assert_eq!(rx.recv().unwrap(), 55);
        assert_eq!(s.schedule(1), Err(ScheduleError("sum".into())));
    }
}
