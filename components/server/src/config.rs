//! `tikv-server`'s TOML config: TiKV's sections and kebab-case keys, only
//! those this transport-only store uses (`[log]`, `[server]`, `[storage]`,
//! `[pd]`, `[raftstore]`). Unknown keys are collected so the caller can warn
//! (TiKV's behaviour) or fail (`--config-check`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use tikv_util::config::ReadableDuration;

/// The whole config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct TikvConfig {
    /// `[log]`.
    pub log: LogConfig,
    /// `[server]`: addresses, labels and the raft client keys.
    pub server: tikv::server::Config,
    /// `[storage]`: only `data-dir`.
    pub storage: StorageConfig,
    /// `[pd]`: endpoints and retry policy.
    pub pd: pd_client::Config,
    /// `[raftstore]`: the ticks we drive, and the synthetic traffic (ours).
    pub raftstore: RaftstoreConfig,
    /// `[security]`: mutual TLS for PD and peer connections.
    pub security: security::SecurityConfig,
}

/// `[log]`, in TiKV's current layout (`level`, `[log.file] filename`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct LogConfig {
    /// `trace`, `debug`, `info`, `warn`, `error` or `fatal`.
    pub level: String,
    /// `[log.file]`.
    pub file: LogFileConfig,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".to_owned(),
            file: LogFileConfig::default(),
        }
    }
}

/// `[log.file]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct LogFileConfig {
    /// Log file path; empty logs to stderr.
    pub filename: String,
}

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct StorageConfig {
    /// Where the store keeps its identity (cluster id, store id).
    pub data_dir: String,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            data_dir: "./".to_owned(),
        }
    }
}

/// Most synthetic regions a store drives.
pub const MAX_SYNTHETIC_REGIONS: u64 = 100_000;

/// `[raftstore]`: TiKV's tick keys we honour, and the synthetic traffic
/// that stands in for raftstore (ours, prefixed `synthetic-`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct RaftstoreConfig {
    /// The base tick.
    pub raft_base_tick_interval: ReadableDuration,
    /// A leader heartbeats every this many base ticks.
    pub raft_heartbeat_ticks: usize,
    /// Interval of store heartbeats to PD.
    pub pd_store_heartbeat_tick_interval: ReadableDuration,
    /// Regions this store drives traffic for (ours).
    pub synthetic_regions: u64,
    /// How often the store list is read from PD to place peers (ours).
    pub synthetic_store_refresh_interval: ReadableDuration,
    /// Peers per region at most (ours; raftstore's replication factor).
    pub synthetic_max_replicas: usize,
}

impl Default for RaftstoreConfig {
    fn default() -> RaftstoreConfig {
        RaftstoreConfig {
            raft_base_tick_interval: ReadableDuration::secs(1),
            raft_heartbeat_ticks: 2,
            pd_store_heartbeat_tick_interval: ReadableDuration::secs(10),
            synthetic_regions: 16,
            synthetic_store_refresh_interval: ReadableDuration::secs(10),
            synthetic_max_replicas: 3,
        }
    }
}

/// A config that cannot be used; the text names the file, key or value.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl TikvConfig {
    /// Parses `text`; returns the config and the dotted paths of keys it
    /// does not know (e.g. `server.grpc-concurrency`).
    pub fn from_toml(text: &str) -> Result<(TikvConfig, Vec<String>), String> {
        let de = toml::Deserializer::new(text);
        let mut unknown = Vec::new();
        let cfg = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
            .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())?;
        Ok((cfg, unknown))
    }

    /// Reads and parses the file at `path`.
    pub fn from_file(path: &Path) -> Result<(TikvConfig, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!("cannot read config file {}: {}", path.display(), e))
        })?;
        TikvConfig::from_toml(&text)
            .map_err(|e| ConfigError(format!("invalid config file {}: {}", path.display(), e)))
    }

    /// Checks every section; the error names the section and key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_level(&self.log.level)?;
        self.server
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        self.pd
            .validate()
            .map_err(|e| ConfigError(format!("invalid [pd] config: {}", e)))?;
        self.security.validate().map_err(ConfigError)?;
        if self.storage.data_dir.is_empty() {
            return Err(ConfigError(
                "invalid [storage] config: data-dir must not be empty".to_owned(),
            ));
        }
        let r = &self.raftstore;
        let bad = |m: String| Err(ConfigError(format!("invalid [raftstore] config: {}", m)));
        if r.raft_base_tick_interval.is_zero() {
            return bad("raft-base-tick-interval must be positive".to_owned());
        }
        if r.raft_heartbeat_ticks == 0 {
            return bad("raft-heartbeat-ticks must be at least 1".to_owned());
        }
        if r.pd_store_heartbeat_tick_interval.is_zero() {
            return bad("pd-store-heartbeat-tick-interval must be positive".to_owned());
        }
        if r.synthetic_regions > MAX_SYNTHETIC_REGIONS {
            return bad(format!(
                "synthetic-regions must be at most {}, got {}",
                MAX_SYNTHETIC_REGIONS, r.synthetic_regions
            ));
        }
        if r.synthetic_store_refresh_interval.is_zero() {
            return bad("synthetic-store-refresh-interval must be positive".to_owned());
        }
        if r.synthetic_max_replicas == 0 {
            return bad("synthetic-max-replicas must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Parses a TiKV log level name.
pub fn parse_level(s: &str) -> Result<slog::Level, ConfigError> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Ok(slog::Level::Trace),
        "debug" => Ok(slog::Level::Debug),
        "info" => Ok(slog::Level::Info),
        "warn" | "warning" => Ok(slog::Level::Warning),
        "error" => Ok(slog::Level::Error),
        "fatal" | "critical" => Ok(slog::Level::Critical),
        _ => Err(ConfigError(format!(
            "invalid [log] config: level {:?} is not one of trace, debug, info, warn, error, fatal",
            s
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tikv_sections_and_keys() {
        let text = r#"
            [log]
            level = "warn"
            [log.file]
            filename = "/tmp/tikv.log"
            [server]
            addr = "127.0.0.1:20161"
            status-addr = "127.0.0.1:20181"
            labels = { zone = "lab" }
            raft-client-not-found-max-backoff = "30s"
            [storage]
            data-dir = "/tmp/s1"
            [pd]
            endpoints = ["127.0.0.1:2379", "127.0.0.1:2380"]
            [raftstore]
            raft-base-tick-interval = "100ms"
            pd-store-heartbeat-tick-interval = "2s"
            synthetic-regions = 4
        "#;
        let (c, unknown) = TikvConfig::from_toml(text).unwrap();
        assert!(unknown.is_empty(), "{:?}", unknown);
        c.validate().unwrap();
        assert_eq!(c.log.level, "warn");
        assert_eq!(c.log.file.filename, "/tmp/tikv.log");
        assert_eq!(c.server.status_addr, "127.0.0.1:20181");
        assert_eq!(c.server.labels["zone"], "lab");
        assert_eq!(c.storage.data_dir, "/tmp/s1");
        assert_eq!(c.pd.endpoints.len(), 2);
        assert_eq!(
            c.raftstore.raft_base_tick_interval,
            ReadableDuration::millis(100)
        );
        assert_eq!(c.raftstore.synthetic_regions, 4);
        // Unset keys keep their defaults.
        assert_eq!(c.raftstore.raft_heartbeat_ticks, 2);
    }

    #[test]
    fn unknown_sections_and_keys_are_listed() {
        let text = "[server]\ngrpc-concurrency = 4\n[rocksdb]\nmax-open-files = 1\n[raftstore]\nsynthetic-region = 3\n";
        let (_, unknown) = TikvConfig::from_toml(text).unwrap();
        assert_eq!(
            unknown,
            vec![
                "server.grpc-concurrency",
                "rocksdb",
                "raftstore.synthetic-region"
            ]
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = TikvConfig::from_toml("[server]\ngrpc-raft-conn-num = \"four\"\n").unwrap_err();
        assert!(e.contains("grpc-raft-conn-num"), "{}", e);
        let e = TikvConfig::from_toml("[raftstore]\nraft-base-tick-interval = \"1 parsec\"\n")
            .unwrap_err();
        assert!(e.contains("raft-base-tick-interval"), "{}", e);
        let e = TikvConfig::from_toml("[server\naddr = 1").unwrap_err();
        assert!(e.contains("line 1"), "{}", e);

        let check = |edit: fn(&mut TikvConfig), key: &str| {
            let mut c = TikvConfig::default();
            edit(&mut c);
            let e = c.validate().unwrap_err().0;
            assert!(e.contains(key), "{:?} should name {}", e, key);
        };
        check(|c| c.log.level = "loud".into(), "level");
        check(|c| c.pd.endpoints.clear(), "endpoints");
        check(|c| c.pd.endpoints = vec!["".into()], "pd");
        check(|c| c.storage.data_dir.clear(), "data-dir");
        check(|c| c.server.addr = "nowhere".into(), "addr");
        check(
            |c| c.raftstore.raft_base_tick_interval = ReadableDuration::millis(0),
            "raft-base-tick-interval",
        );
        check(
            |c| c.raftstore.raft_heartbeat_ticks = 0,
            "raft-heartbeat-ticks",
        );
        check(
            |c| c.raftstore.synthetic_regions = MAX_SYNTHETIC_REGIONS + 1,
            "synthetic-regions",
        );
        check(
            |c| c.raftstore.synthetic_max_replicas = 0,
            "synthetic-max-replicas",
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = TikvConfig::from_file(Path::new("/nonexistent/tikv.toml")).unwrap_err();
        assert!(e.0.contains("/nonexistent/tikv.toml"), "{}", e);
    }
}
