//! The slice of TiKV's `tikv_util` that store resolution and the raft client
//! need: readable config values, a named worker thread, an async timer, and
//! slog setup with TiKV's log line format plus a capturing drain for tests.

#![deny(missing_docs)]

pub mod config;
pub mod logger;
pub mod timer;
pub mod worker;

/// Log/metric throttling helper: true when `interval` has passed
/// since `*last` (or `*last` is unset), updating `*last` to `now` in that case.
pub fn throttle_elapsed(
    last: &mut Option<std::time::Instant>,
    now: std::time::Instant,
    interval: std::time::Duration,
) -> bool {
    match *last {
        Some(t) if now.saturating_duration_since(t) < interval => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

/// The wall clock in nanoseconds since the Unix epoch (0 before it), as
/// TiKV stamps `BatchRaftMessage.last_observed_time`.
pub fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn throttle_allows_first_then_waits_interval() {
        let mut last = None;
        let t0 = Instant::now();
        let iv = Duration::from_secs(10);
        assert!(super::throttle_elapsed(&mut last, t0, iv));
        assert!(!super::throttle_elapsed(
            &mut last,
            t0 + Duration::from_secs(9),
            iv
        ));
        assert!(super::throttle_elapsed(
            &mut last,
            t0 + Duration::from_secs(10),
            iv
        ));
        assert!(!super::throttle_elapsed(
            &mut last,
            t0 + Duration::from_secs(11),
            iv
        ));
    }
}
