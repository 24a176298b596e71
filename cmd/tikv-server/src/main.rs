//! `tikv-server`: the patched transport as a store process. The command
//! line follows TiKV's (`cmd/tikv-server/src/main.rs`); flags override the
//! `--config` file, as in `overwrite_config_with_cmd_args`.

use std::path::PathBuf;
use std::process::exit;

use clap::Parser;
use server::TikvConfig;
// jemalloc, as upstream's tikv-server (`tikv_alloc`).
use tikv_alloc as _;

/// A transport-only TiKV store: joins PD, drives synthetic Raft traffic
/// through the patched resolver and raft client, serves /metrics.
#[derive(Parser, Debug)]
#[command(name = "tikv-server", version)]
struct Cli {
    /// TOML config file (TiKV's sections and kebab-case keys)
    #[arg(short = 'C', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the config file and exit; unknown keys are errors
    #[arg(long = "config-check")]
    config_check: bool,
    /// PD endpoints, comma separated
    #[arg(long = "pd", alias = "pd-endpoints", value_name = "PD_URL")]
    pd: Option<String>,
    /// Listening address (host:port; port 0 picks a free one)
    #[arg(short = 'A', long = "addr", value_name = "IP:PORT")]
    addr: Option<String>,
    /// Address other stores use to reach this one
    #[arg(long = "advertise-addr", value_name = "IP:PORT")]
    advertise_addr: Option<String>,
    /// Status server address (empty turns it off)
    #[arg(long = "status-addr", value_name = "IP:PORT")]
    status_addr: Option<String>,
    /// Data directory (the store's identity and lock)
    #[arg(short = 's', long = "data-dir", value_name = "PATH")]
    data_dir: Option<String>,
    /// Log file (default: stderr)
    #[arg(short = 'f', long = "log-file", value_name = "FILE")]
    log_file: Option<String>,
    /// Log level: trace, debug, info, warn, error, fatal
    #[arg(short = 'L', long = "log-level", value_name = "LEVEL")]
    log_level: Option<String>,
    /// Store labels, e.g. zone=lab,host=h1
    #[arg(long = "labels", value_name = "KEY=VALUE,...")]
    labels: Option<String>,
    /// Synthetic regions to drive traffic for ([raftstore] synthetic-regions)
    #[arg(long = "regions", value_name = "N")]
    regions: Option<u64>,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("tikv-server: error: {}", msg);
    exit(1)
}

fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("--labels: {:?} is not key=value", p))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn main() {
    let cli = Cli::parse();
    let (mut cfg, unknown) = match &cli.config {
        Some(path) => TikvConfig::from_file(path).unwrap_or_else(|e| fail(e)),
        None => (TikvConfig::default(), vec![]),
    };
    if let Some(pd) = &cli.pd {
        cfg.pd.endpoints = pd
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
    }
    if let Some(a) = cli.addr {
        cfg.server.addr = a;
    }
    if let Some(a) = cli.advertise_addr {
        cfg.server.advertise_addr = a;
    }
    if let Some(a) = cli.status_addr {
        cfg.server.status_addr = a;
    }
    if let Some(d) = cli.data_dir {
        cfg.storage.data_dir = d;
    }
    if let Some(f) = cli.log_file {
        cfg.log.file.filename = f;
    }
    if let Some(l) = cli.log_level {
        cfg.log.level = l;
    }
    if let Some(l) = &cli.labels {
        for (k, v) in parse_labels(l).unwrap_or_else(|e| fail(e)) {
            cfg.server.labels.insert(k, v);
        }
    }
    if let Some(n) = cli.regions {
        cfg.raftstore.synthetic_regions = n;
    }
    if let Err(e) = cfg.validate() {
        fail(e);
    }
    if cli.config_check {
        if !unknown.is_empty() {
            fail(format!(
                "config check failed: unknown config keys: {}",
                unknown.join(", ")
            ));
        }
        println!("config check successful");
        return;
    }
    if let Err(e) = server::run_tikv(cfg, &unknown) {
        fail(e);
    }
}
