//! The `[server]` config section: the keys the raft client and resolver
//! read, with TiKV's names and defaults, plus this fork's not-found keys.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tikv_util::config::{ReadableDuration, ReadableSize};

/// Default `raft-client-queue-size`.
/// (upstream's since tikv/tikv PR #17821), split across the connections.
pub const DEFAULT_RAFT_CLIENT_QUEUE_SIZE: usize = 16384;

/// `[server]` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Config {
    /// Address the raft service listens on (`host:port`; port 0 picks a
    /// free one, which is then advertised).
    pub addr: String,
    /// Address other stores and clients use to reach this store; empty
    /// means `addr`. Must not be an unspecified host such as 0.0.0.0.
    pub advertise_addr: String,
    /// Address of the status server (`/metrics`, `/status`); empty turns it
    /// off.
    pub status_addr: String,
    /// Store labels sent to PD, e.g. `{ zone = "lab" }`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Connections per peer store.
    pub grpc_raft_conn_num: usize,
    /// Messages queued per peer store, split across its connections.
    pub raft_client_queue_size: usize,
    /// Backoff cap between reconnects, and the retry delay for resolution
    /// errors other than not-found.
    pub raft_client_max_backoff: ReadableDuration,
    /// First reconnect backoff, doubled on each failure.
    pub raft_client_initial_reconnect_backoff: ReadableDuration,
    /// Messages per `BatchRaft` batch.
    pub raft_msg_max_batch_size: usize,
    /// Bytes per gRPC message.
    pub max_grpc_send_msg_len: ReadableSize,
    /// Room kept free in a batch below `max-grpc-send-msg-len` for what the
    /// cheap size estimate misses (at most half of it is used).
    pub raft_client_grpc_send_msg_buffer: ReadableSize,
    /// The HTTP/2 stream window of a raft connection.
    pub grpc_stream_initial_window_size: ReadableSize,
    /// gRPC keepalive ping interval.
    pub grpc_keepalive_time: ReadableDuration,
    /// gRPC keepalive ping timeout.
    pub grpc_keepalive_timeout: ReadableDuration,
    /// How long a connection waits for the channel to become ready.
    pub raft_client_connect_timeout: ReadableDuration,
    /// Backoff cap while PD answers "store not found" (ours).
    pub raft_client_not_found_max_backoff: ReadableDuration,
    /// At most one not-found warning per store per interval (ours).
    pub raft_client_not_found_log_interval: ReadableDuration,
    /// How long the resolver serves a cached not-found answer (ours).
    pub store_not_found_cache_ttl: ReadableDuration,
    /// How long a call must stay up after its first write before what was
    /// written counts as delivered (ours). A refusal within it (UNIMPLEMENTED,
    /// store-not-match) loses nothing; only a call that reached it resets the
    /// reconnect backoff.
    pub raft_client_call_confirm_window: ReadableDuration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: "127.0.0.1:20160".to_owned(),
            advertise_addr: String::new(),
            status_addr: "127.0.0.1:20180".to_owned(),
            labels: Default::default(),
            grpc_raft_conn_num: 1,
            raft_client_queue_size: DEFAULT_RAFT_CLIENT_QUEUE_SIZE,
            raft_client_max_backoff: ReadableDuration::secs(5),
            raft_client_initial_reconnect_backoff: ReadableDuration::secs(1),
            raft_msg_max_batch_size: 256,
            max_grpc_send_msg_len: ReadableSize::mb(10),
            raft_client_grpc_send_msg_buffer: ReadableSize::kb(512),
            grpc_stream_initial_window_size: ReadableSize::mb(2),
            grpc_keepalive_time: ReadableDuration::secs(10),
            grpc_keepalive_timeout: ReadableDuration::secs(3),
            raft_client_connect_timeout: ReadableDuration::secs(3),
            raft_client_not_found_max_backoff: ReadableDuration::secs(60),
            raft_client_not_found_log_interval: ReadableDuration::secs(60),
            store_not_found_cache_ttl: ReadableDuration::secs(1),
            raft_client_call_confirm_window: ReadableDuration::secs(1),
        }
    }
}

/// A rejected config value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid [server] config: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Rejects values the raft client cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        check_listen_addr("addr", &self.addr).map_err(ConfigError)?;
        if !self.status_addr.is_empty() {
            check_listen_addr("status-addr", &self.status_addr).map_err(ConfigError)?;
        }
        if !self.advertise_addr.is_empty() {
            check_listen_addr("advertise-addr", &self.advertise_addr).map_err(ConfigError)?;
            let (host, port) = self.advertise_addr.rsplit_once(':').unwrap_or_default();
            if port == "0" || is_unspecified_host(host) {
                return err(format!(
                    "advertise-addr {:?} must name a host and port other stores can reach",
                    self.advertise_addr
                ));
            }
        }
        for (k, v) in &self.labels {
            if !is_valid_label(k) || !is_valid_label(v) {
                return err(format!(
                    "labels: {:?} = {:?} is not a valid label (letters, digits, '-', '_', '.', '/')",
                    k, v
                ));
            }
        }
        if self.grpc_raft_conn_num == 0 {
            return err("grpc-raft-conn-num must be at least 1".into());
        }
        if self.raft_client_queue_size == 0 {
            return err("raft-client-queue-size must be at least 1".into());
        }
        if self.raft_client_queue_size < self.grpc_raft_conn_num {
            return err(format!(
                "raft-client-queue-size ({}) must be at least grpc-raft-conn-num ({})",
                self.raft_client_queue_size, self.grpc_raft_conn_num
            ));
        }
        if self.raft_client_initial_reconnect_backoff.is_zero() {
            return err("raft-client-initial-reconnect-backoff must be positive".into());
        }
        if self.raft_client_max_backoff < self.raft_client_initial_reconnect_backoff {
            return err(format!(
                "raft-client-max-backoff ({}) must not be less than raft-client-initial-reconnect-backoff ({})",
                self.raft_client_max_backoff, self.raft_client_initial_reconnect_backoff
            ));
        }
        if self.raft_client_not_found_max_backoff < self.raft_client_initial_reconnect_backoff {
            return err(format!(
                "raft-client-not-found-max-backoff ({}) must not be less than raft-client-initial-reconnect-backoff ({})",
                self.raft_client_not_found_max_backoff, self.raft_client_initial_reconnect_backoff
            ));
        }
        if self.raft_msg_max_batch_size == 0 {
            return err("raft-msg-max-batch-size must be at least 1".into());
        }
        if self.max_grpc_send_msg_len.0 == 0 || self.max_grpc_send_msg_len.0 > i32::MAX as u64 {
            return err(format!(
                "max-grpc-send-msg-len must be between 1B and 2GiB, got {}",
                self.max_grpc_send_msg_len
            ));
        }
        let window = self.grpc_stream_initial_window_size.0;
        if window < 64 * 1024 || window > i32::MAX as u64 {
            return err(format!(
                "grpc-stream-initial-window-size must be between 64KiB and 2GiB, got {}",
                self.grpc_stream_initial_window_size
            ));
        }
        if self.raft_client_call_confirm_window.is_zero() {
            return err("raft-client-call-confirm-window must be positive".into());
        }
        if self.raft_client_connect_timeout.is_zero() {
            return err("raft-client-connect-timeout must be positive".into());
        }
        if self.grpc_keepalive_time.is_zero() || self.grpc_keepalive_timeout.is_zero() {
            return err("grpc-keepalive-time and grpc-keepalive-timeout must be positive".into());
        }
        Ok(())
    }

    /// The address this store announces: `advertise-addr`, else `addr`.
    pub fn advertised_addr(&self) -> &str {
        if self.advertise_addr.is_empty() {
            &self.addr
        } else {
            &self.advertise_addr
        }
    }

    /// Queue capacity of one connection.
    pub fn queue_size_per_conn(&self) -> usize {
        (self.raft_client_queue_size / self.grpc_raft_conn_num).max(1)
    }

    /// The estimated bytes a batch may hold for a gRPC message of at most
    /// `max_bytes`: less `raft-client-grpc-send-msg-buffer`, but never less
    /// than half of it.
    pub fn batch_budget(&self, max_bytes: usize) -> usize {
        let buffer = (self.raft_client_grpc_send_msg_buffer.0 as usize).min(max_bytes / 2);
        (max_bytes - buffer).max(1)
    }

    /// The initial reconnect backoff as a `Duration`.
    pub fn initial_backoff(&self) -> Duration {
        self.raft_client_initial_reconnect_backoff.0
    }
}

/// `host:port` with a numeric port (0 allowed: a free port is picked).
fn check_listen_addr(key: &str, addr: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{} {:?} is not host:port ({})", key, addr, why));
    if addr.is_empty() {
        return bad("empty");
    }
    if addr.contains("://") || addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("no scheme or spaces allowed");
    }
    match addr.rsplit_once(':') {
        None => bad("no port"),
        Some((h, _)) if h.is_empty() || h == "[]" => bad("no host"),
        Some((_, p)) if p.parse::<u16>().is_err() => bad("port must be 0-65535"),
        Some(_) => Ok(()),
    }
}

fn is_unspecified_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_unspecified())
        .unwrap_or(false)
}

/// TiKV's label rule, simplified: non-empty, ASCII letters, digits and
/// `-_./`, starting and ending with a letter or digit (`$` may lead).
fn is_valid_label(s: &str) -> bool {
    let body = s.strip_prefix('$').unwrap_or(s);
    !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && body.starts_with(|c: char| c.is_ascii_alphanumeric())
        && body.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct TikvConfig {
        server: Config,
    }

    #[test]
    fn parse_tikv_style_server_section() {
        let text = r#"
            [server]
            addr = "127.0.0.1:20161"
            grpc-raft-conn-num = 4
            raft-client-queue-size = 1024
            raft-client-max-backoff = "2s"
            raft-client-initial-reconnect-backoff = "100ms"
            raft-msg-max-batch-size = 64
            max-grpc-send-msg-len = "1MiB"
            grpc-keepalive-time = "5s"
            grpc-keepalive-timeout = "1s"
            raft-client-not-found-max-backoff = "30s"
            raft-client-not-found-log-interval = "1m"
            raft-client-call-confirm-window = "250ms"
        "#;
        let c: TikvConfig = toml::from_str(text).unwrap();
        let s = c.server;
        s.validate().unwrap();
        assert_eq!(s.addr, "127.0.0.1:20161");
        assert_eq!(s.grpc_raft_conn_num, 4);
        assert_eq!(s.raft_client_queue_size, 1024);
        assert_eq!(s.queue_size_per_conn(), 256);
        assert_eq!(s.raft_client_max_backoff, ReadableDuration::secs(2));
        assert_eq!(
            s.raft_client_initial_reconnect_backoff,
            ReadableDuration::millis(100)
        );
        assert_eq!(s.raft_msg_max_batch_size, 64);
        assert_eq!(s.max_grpc_send_msg_len, ReadableSize::mb(1));
        assert_eq!(
            s.raft_client_not_found_max_backoff,
            ReadableDuration::secs(30)
        );
        assert_eq!(
            s.raft_client_not_found_log_interval,
            ReadableDuration::secs(60)
        );
        assert_eq!(
            s.raft_client_call_confirm_window,
            ReadableDuration::millis(250)
        );
        // Unset keys keep TiKV's defaults.
        assert_eq!(s.store_not_found_cache_ttl, ReadableDuration::secs(1));
        // A plain number of bytes is accepted as TiKV's integer form.
        let c: TikvConfig = toml::from_str("[server]\nmax-grpc-send-msg-len = 10485760").unwrap();
        assert_eq!(c.server.max_grpc_send_msg_len, ReadableSize::mb(10));
    }

    #[test]
    fn addresses_and_labels_are_checked_naming_the_key() {
        let ok: TikvConfig = toml::from_str(
            "[server]\naddr = \"0.0.0.0:0\"\nadvertise-addr = \"10.0.0.1:20160\"\nlabels = { zone = \"lab-1\", host = \"h1\" }",
        )
        .unwrap();
        ok.server.validate().unwrap();
        assert_eq!(ok.server.advertised_addr(), "10.0.0.1:20160");
        assert_eq!(Config::default().advertised_addr(), "127.0.0.1:20160");
        let bad = |edit: fn(&mut Config), key: &str| {
            let mut c = Config::default();
            edit(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{} should name {}", e, key);
        };
        bad(|c| c.addr = String::new(), "addr");
        bad(|c| c.addr = "127.0.0.1".into(), "addr");
        bad(|c| c.addr = "http://127.0.0.1:1".into(), "addr");
        bad(|c| c.addr = "127.0.0.1:99999".into(), "addr");
        bad(|c| c.status_addr = ":20180".into(), "status-addr");
        bad(
            |c| c.advertise_addr = "0.0.0.0:20160".into(),
            "advertise-addr",
        );
        bad(|c| c.advertise_addr = "[::]:20160".into(), "advertise-addr");
        bad(|c| c.advertise_addr = "10.0.0.1:0".into(), "advertise-addr");
        bad(
            |c| {
                c.labels.insert("zone".into(), "".into());
            },
            "labels",
        );
        bad(
            |c| {
                c.labels.insert("-zone".into(), "a".into());
            },
            "labels",
        );
        // An empty status address turns the status server off.
        let mut c = Config::default();
        c.status_addr.clear();
        c.validate().unwrap();
    }

    #[test]
    fn defaults_match_tikv() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.grpc_raft_conn_num, 1);
        // Upstream master: 16384 since tikv/tikv PR #17821, split across
        // the connections (PR #19543).
        assert_eq!(c.raft_client_queue_size, 16384);
        assert_eq!(c.queue_size_per_conn(), 16384);
        let four = Config {
            grpc_raft_conn_num: 4,
            ..Config::default()
        };
        assert_eq!(four.queue_size_per_conn(), 4096);
        assert_eq!(c.raft_client_max_backoff, ReadableDuration::secs(5));
        assert_eq!(
            c.raft_client_initial_reconnect_backoff,
            ReadableDuration::secs(1)
        );
        assert_eq!(c.raft_msg_max_batch_size, 256);
        assert_eq!(c.max_grpc_send_msg_len, ReadableSize::mb(10));
        assert_eq!(c.raft_client_grpc_send_msg_buffer, ReadableSize::kb(512));
        assert_eq!(c.grpc_stream_initial_window_size, ReadableSize::mb(2));
        // The batch budget keeps the buffer free, or half a small limit.
        assert_eq!(c.batch_budget(10 << 20), (10 << 20) - (512 << 10));
        assert_eq!(c.batch_budget(2048), 1024);
        assert_eq!(
            c.raft_client_not_found_max_backoff,
            ReadableDuration::secs(60)
        );
        assert_eq!(
            c.raft_client_not_found_log_interval,
            ReadableDuration::secs(60)
        );
    }

    #[test]
    fn invalid_values_rejected() {
        let cases: Vec<(&str, &str)> = vec![
            ("grpc-raft-conn-num = 0", "grpc-raft-conn-num"),
            ("raft-client-queue-size = 0", "raft-client-queue-size"),
            ("grpc-raft-conn-num = 8\nraft-client-queue-size = 4", "at least grpc-raft-conn-num"),
            (
                "raft-client-max-backoff = \"100ms\"\nraft-client-initial-reconnect-backoff = \"1s\"",
                "raft-client-max-backoff",
            ),
            ("raft-client-initial-reconnect-backoff = \"0s\"", "must be positive"),
            ("raft-client-not-found-max-backoff = \"10ms\"", "raft-client-not-found-max-backoff"),
            ("raft-msg-max-batch-size = 0", "raft-msg-max-batch-size"),
            ("max-grpc-send-msg-len = 0", "max-grpc-send-msg-len"),
            ("max-grpc-send-msg-len = \"4GiB\"", "max-grpc-send-msg-len"),
            ("raft-client-call-confirm-window = \"0s\"", "raft-client-call-confirm-window"),
            ("grpc-stream-initial-window-size = \"1KiB\"", "grpc-stream-initial-window-size"),
            ("grpc-stream-initial-window-size = \"4GiB\"", "grpc-stream-initial-window-size"),
        ];
        for (body, needle) in cases {
            let c: TikvConfig = toml::from_str(&format!("[server]\n{}", body)).unwrap();
            let e = c.server.validate().unwrap_err();
            assert!(e.0.contains(needle), "{}: {}", body, e);
        }
        // Values that do not parse at all are rejected by the parser.
        for body in [
            "raft-client-max-backoff = \"5 parsecs\"",
            "grpc-raft-conn-num = -1",
            "max-grpc-send-msg-len = \"10XB\"",
        ] {
            assert!(
                toml::from_str::<TikvConfig>(&format!("[server]\n{}", body)).is_err(),
                "{}",
                body
            );
        }
    }
}
