//! The drill's report: one row per expectation, the same for the
//! in-process walk and the walk on real processes, as a table or JSON.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

/// One checked expectation.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The step of the walk, e.g. `remove-tombstone`.
    pub step: String,
    /// What should hold.
    pub expect: String,
    /// What was seen.
    pub observed: String,
    /// Whether it held.
    pub ok: bool,
}

/// A walk's report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `in-process` or `processes`.
    pub mode: String,
    /// `old` (gRPC 2-UNKNOWN) or `new` (header UNKNOWN).
    pub pd_flavor: String,
    /// Every expectation, in order.
    pub steps: Vec<Step>,
    /// What the walk's counters said over time (for `--plot`).
    pub timeline: Vec<Sample>,
    #[serde(skip)]
    started: Option<Instant>,
}

/// The walk's counters at one moment: PD's and the connections' for the
/// store the step is about, the messages of the sending store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// PD GetStore calls for the store (PD's own count).
    pub get_store_calls: u64,
    /// Connection attempts the sender made to it.
    pub connection_attempts: u64,
    /// Messages the sender delivered.
    pub delivered: u64,
    /// Messages the sender's `send` refused.
    pub refused: u64,
    /// Messages the sender reported unreachable.
    pub reported: u64,
}

/// One point of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Milliseconds since the walk began.
    pub t_ms: u64,
    /// The step the walk was in.
    pub step: String,
    /// The counters then.
    #[serde(flatten)]
    pub counters: Counters,
}

impl Report {
    /// An empty report.
    pub fn new(mode: &str, pd_flavor: &str) -> Report {
        Report {
            mode: mode.to_owned(),
            pd_flavor: pd_flavor.to_owned(),
            steps: vec![],
            timeline: vec![],
            started: None,
        }
    }

    /// Records the counters now, during `step` (the first sample starts
    /// the clock).
    pub fn sample(&mut self, step: &str, counters: Counters) {
        let start = *self.started.get_or_insert_with(Instant::now);
        self.timeline.push(Sample {
            t_ms: start.elapsed().as_millis() as u64,
            step: step.to_owned(),
            counters,
        });
    }

    /// Records an expectation; returns `ok`.
    pub fn check(
        &mut self,
        step: &str,
        expect: &str,
        observed: impl Into<String>,
        ok: bool,
    ) -> bool {
        self.steps.push(Step {
            step: step.to_owned(),
            expect: expect.to_owned(),
            observed: observed.into(),
            ok,
        });
        ok
    }

    /// True when every expectation held.
    pub fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.ok)
    }

    /// The rows that failed, one per line.
    pub fn failures(&self) -> String {
        self.steps
            .iter()
            .filter(|s| !s.ok)
            .map(|s| format!("{}: expected {}, observed {}", s.step, s.expect, s.observed))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A fixed-width table.
    pub fn table(&self) -> String {
        let w = |f: fn(&Step) -> &str, min: usize| {
            self.steps
                .iter()
                .map(|s| f(s).len())
                .max()
                .unwrap_or(0)
                .max(min)
        };
        let (a, b, c) = (
            w(|s| &s.step, 4),
            w(|s| &s.expect, 6),
            w(|s| &s.observed, 8),
        );
        let mut out = format!(
            "{:<a$} | {:<b$} | {:<c$} | ok\n{}\n",
            "step",
            "expect",
            "observed",
            "-".repeat(a + b + c + 12),
        );
        for s in &self.steps {
            out.push_str(&format!(
                "{:<a$} | {:<b$} | {:<c$} | {}\n",
                s.step,
                s.expect,
                s.observed,
                if s.ok { "yes" } else { "NO" }
            ));
        }
        out.push_str(&format!(
            "\n{} ({} mode, PD {}): {}/{} expectations held\n",
            if self.passed() { "PASS" } else { "FAIL" },
            self.mode,
            self.pd_flavor,
            self.steps.iter().filter(|s| s.ok).count(),
            self.steps.len()
        ));
        out
    }
}

/// A one-line progress indicator on stderr, shown only on a terminal.
#[derive(Clone, Copy)]
pub struct Progress {
    on: bool,
}

impl Progress {
    /// Shown when `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Progress {
        Progress {
            on: enabled && std::io::stderr().is_terminal(),
        }
    }

    /// Silent.
    pub fn off() -> Progress {
        Progress { on: false }
    }

    /// Rewrites the line: what we wait for and for how long so far.
    pub fn update(&self, what: &str, waited: Duration) {
        if self.on {
            let mut e = std::io::stderr();
            let _ = write!(
                e,
                "\r\x1b[2K  waiting: {} ({:.1}s)",
                what,
                waited.as_secs_f64()
            );
            let _ = e.flush();
        }
    }

    /// Clears the line.
    pub fn done(&self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }

    /// Polls `f` until it returns `Some`, or `timeout` passes; the line
    /// shows `what` meanwhile.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let start = Instant::now();
        let r = loop {
            if let Some(v) = f() {
                break Some(v);
            }
            if start.elapsed() > timeout {
                break None;
            }
            self.update(what, start.elapsed());
            std::thread::park_timeout(Duration::from_millis(20));
        };
        self.done();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_verdict() {
        let mut r = Report::new("processes", "new");
        assert!(r.check("a", "x", "x", true));
        assert!(r.passed());
        assert!(!r.check("b", "y", "z", false));
        assert!(!r.passed());
        assert_eq!(r.failures(), "b: expected y, observed z");
        let t = r.table();
        assert!(t.contains("FAIL (processes mode, PD new): 1/2"), "{}", t);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["steps"][1]["ok"], false);
    }

    #[test]
    fn wait_returns_what_f_found_or_none_at_the_deadline() {
        let p = Progress::off();
        let mut n = 0;
        assert_eq!(
            p.wait("n", Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        assert_eq!(
            p.wait("never", Duration::from_millis(30), || None::<()>),
            None
        );
    }
}
