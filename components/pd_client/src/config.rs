//! PD client configuration (TiKV's `[pd]` section, the parts we use).

use std::time::Duration;

use tikv_util::config::ReadableDuration;

use crate::errors::{other, Result};

/// Default: at most one reconnect attempt per second (`REQUEST_RECONNECT_INTERVAL`).
pub const REQUEST_RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// PD client configuration.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Config {
    /// PD endpoints, `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    /// Pause between retries of a failed request.
    pub retry_interval: ReadableDuration,
    /// How many times a request is tried when transport or leadership fails.
    pub retry_max_count: usize,
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
            retry_max_count: 10,
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

    /// Checks the values; endpoints must be non-empty `host:port` strings.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(other("pd.endpoints is empty"));
        }
        for e in &self.endpoints {
            crate::util::normalize_endpoint(e)?;
        }
        if self.retry_max_count == 0 {
            return Err(other("pd.retry-max-count must be at least 1"));
        }
        if self.request_timeout.is_zero() {
            return Err(other("pd.request-timeout must be positive"));
        }
        Ok(())
    }
}
