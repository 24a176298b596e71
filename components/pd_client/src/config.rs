//! PD client configuration (TiKV's `[pd]` section, the parts we use).

use std::time::Duration;

use tikv_util::config::ReadableDuration;

use crate::errors::{other, Result};

/// Default: at most one reconnect attempt per second (`REQUEST_RECONNECT_INTERVAL`).
pub const REQUEST_RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Attempts of one request when transport or leadership fails (upstream's
/// `LEADER_CHANGE_RETRY`, tikv/tikv `components/pd_client/src/client.rs`).
pub const REQUEST_RETRY_COUNT: usize = 10;

/// PD client configuration.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Config {
    /// PD endpoints, `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// Pause between retries of a failed request.
    pub retry_interval: ReadableDuration,
    /// How many more rounds the endpoints are tried at start when none
    /// answers: -1 (or the default, `isize::MAX`) waits for PD as long as it
    /// takes, as TiKV does (tikv/tikv `components/pd_client/src/config.rs`).
    /// A request is retried at most [`REQUEST_RETRY_COUNT`] times, fewer
    /// when this is smaller.
    pub retry_max_count: isize,
    /// While PD is unreachable at start, one log line per this many rounds.
    pub retry_log_every: usize,
    /// Minimum interval between two reconnect attempts.
    pub reconnect_interval: ReadableDuration,
    /// Deadline of one RPC.
    pub request_timeout: ReadableDuration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            retry_interval: ReadableDuration::millis(300),
            retry_max_count: isize::MAX,
            retry_log_every: 10,
            reconnect_interval: ReadableDuration(REQUEST_RECONNECT_INTERVAL),
            request_timeout: ReadableDuration::secs(2),
        }
    }
}

impl Config {
    /// A config with the given endpoints and defaults for the rest.
    pub fn new(endpoints: Vec<String>) -> Config {
        Config {
            endpoints,
            ..Default::default()
        }
    }

    /// Rounds of retries at start: `None` when unlimited.
    pub fn start_retries(&self) -> Option<u64> {
        match self.retry_max_count {
            -1 | isize::MAX => None,
            n => Some(n.max(0) as u64),
        }
    }

    /// Attempts of one request: [`REQUEST_RETRY_COUNT`], or
    /// `retry-max-count` when that is smaller (at least one attempt).
    pub fn request_attempts(&self) -> usize {
        match self.start_retries() {
            Some(n) => (n as usize).clamp(1, REQUEST_RETRY_COUNT),
            None => REQUEST_RETRY_COUNT,
        }
    }

    /// Checks the values; endpoints must be non-empty `host:port` strings.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(other("pd.endpoints is empty"));
        }
        for e in &self.endpoints {
            crate::util::normalize_endpoint(e)?;
        }
        if self.retry_max_count < -1 {
            return Err(other(format!(
                "pd.retry-max-count is {}: it must be -1 (unlimited) or at least 0",
                self.retry_max_count
            )));
        }
        if self.retry_log_every == 0 {
            return Err(other("pd.retry-log-every must be at least 1"));
        }
        if self.request_timeout.is_zero() {
            return Err(other("pd.request-timeout must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_pd_by_default_as_tikv() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.retry_max_count, isize::MAX);
        assert_eq!(c.start_retries(), None);
        assert_eq!(c.request_attempts(), REQUEST_RETRY_COUNT);
        assert_eq!(c.retry_log_every, 10);
    }

    #[test]
    fn retry_max_count_minus_one_is_unlimited_below_is_rejected() {
        let mut c = Config {
            retry_max_count: -1,
            ..Config::default()
        };
        c.validate().unwrap();
        assert_eq!(c.start_retries(), None);
        c.retry_max_count = -2;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("pd.retry-max-count") && e.contains("-2"),
            "{}",
            e
        );
        c.retry_max_count = 0;
        c.validate().unwrap();
        assert_eq!((c.start_retries(), c.request_attempts()), (Some(0), 1));
        c.retry_max_count = 3;
        assert_eq!((c.start_retries(), c.request_attempts()), (Some(3), 3));
        c.retry_max_count = 1000;
        assert_eq!(c.request_attempts(), REQUEST_RETRY_COUNT);
        c.retry_log_every = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("retry-log-every"));
    }

    #[test]
    fn minus_one_parses_from_toml() {
        let c: Config = toml::from_str("retry-max-count = -1\nretry-log-every = 3").unwrap();
        assert_eq!((c.retry_max_count, c.retry_log_every), (-1, 3));
    }
}
