//! The transport-only `tikv-server` (upstream keeps the same split:
//! `cmd/tikv-server` parses the command line, `components/server` runs the
//! store). It holds everything of a TiKV store that this fork touches, and
//! nothing it does not: no storage engine, no raftstore. Synthetic Raft
//! traffic stands in for raftstore so the transport works as in production.

#![deny(missing_docs)]

pub mod config;
pub mod ident;
pub mod node;
pub mod server;
pub mod status_server;
pub mod synthetic;

use std::fs::OpenOptions;

use slog::{info, warn, Drain, Logger};

pub use crate::config::{ConfigError, TikvConfig};
pub use crate::server::TikvServer;

/// The logger `[log]` asks for: TiKV's line format, to the file or stderr.
pub fn build_logger(cfg: &TikvConfig) -> Result<Logger, String> {
    let level = config::parse_level(&cfg.log.level).map_err(|e| e.0)?;
    if cfg.log.file.filename.is_empty() {
        return Ok(tikv_util::logger::stderr_logger(level));
    }
    let path = &cfg.log.file.filename;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open log file {}: {}", path, e))?;
    let drain = tikv_util::logger::TikvFormat::new(file, level).fuse();
    Ok(Logger::root(drain, slog::o!()))
}

/// Runs the store until SIGTERM or SIGINT, then stops it (pending messages
/// reported, nothing deregistered) and returns. `unknown_keys` are warned
/// about once the logger is up, as TiKV does.
pub fn run_tikv(cfg: TikvConfig, unknown_keys: &[String]) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Registered first: a signal during start-up is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {}", e))?;
    // As tikv-server: FAILPOINTS="name=actions;..." is read at start.
    #[cfg(feature = "failpoints")]
    let _scenario = fail::FailScenario::setup();
    let logger = build_logger(&cfg)?;
    for k in unknown_keys {
        warn!(logger, "unknown config key, ignored"; "key" => k);
    }
    info!(logger, "starting tikv-server"; "version" => node::STORE_VERSION,
        "addr" => &cfg.server.addr, "pd" => cfg.pd.endpoints.join(","),
        "data_dir" => &cfg.storage.data_dir);
    // The signal ends a wait for PD at start too (by default the store waits
    // for PD as long as it takes, as TiKV does): a thread takes the first
    // signal, sets the flag the wait looks at, and hands the signal on.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = tx.send(sig);
                }
            })
            .map_err(|e| format!("cannot start the signal thread: {}", e))?;
    }
    let mut server = match TikvServer::start_with_stop(&cfg, logger.clone(), &stop) {
        Err(server::StartError::Stopped) => {
            info!(logger, "received signal while waiting for PD, exit";
                "signal" => rx.try_recv().ok());
            return Ok(());
        }
        Err(server::StartError::Failed(e)) => return Err(e),
        Ok(s) => s,
    };
    // One line on stdout for scripts and the process tests: the store is
    // registered and serving.
    println!(
        "{}",
        serde_json::json!({
            "store_id": server.store_id,
            "addr": server.addr,
            "status_addr": server.status_addr,
        })
    );
    let sig = rx.recv().ok();
    info!(logger, "received signal, stopping"; "signal" => sig);
    server.stop();
    Ok(())
}
