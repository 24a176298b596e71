//! A lab cluster of real processes: one `test-pd` and `tikv-server`s, each
//! with its data dir and log file in one temporary directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::hosts::Host;
use crate::http::{self, HttpClient};
use crate::process::{bin, LabProcess};

/// The stores' config in the lab: short ticks and backoffs so the walk
/// takes seconds. Every key is one `tikv-server` documents.
pub const LAB_CONFIG: &str = r#"
[log]
level = "info"

[server]
raft-client-initial-reconnect-backoff = "100ms"
raft-client-max-backoff = "1s"
raft-client-not-found-max-backoff = "1s"
raft-client-not-found-log-interval = "10s"
raft-client-connect-timeout = "1s"
raft-client-call-confirm-window = "300ms"
store-not-found-cache-ttl = "100ms"
grpc-keepalive-time = "1s"
grpc-keepalive-timeout = "1s"

[pd]
retry-interval = "100ms"

[raftstore]
raft-base-tick-interval = "100ms"
raft-heartbeat-ticks = 1
pd-store-heartbeat-tick-interval = "500ms"
synthetic-regions = 8
synthetic-store-refresh-interval = "300ms"
"#;

/// A running store process.
pub struct LabStore {
    /// Its store id.
    pub id: u64,
    /// Its raft address.
    pub addr: String,
    /// Its status server, `host:port`.
    pub status: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// The process.
    pub process: LabProcess,
}

/// The lab cluster.
pub struct Lab {
    /// `old` or `new`.
    pub flavor: String,
    /// test-pd's gRPC endpoints, comma separated.
    pub pd_endpoints: String,
    /// test-pd's HTTP API, `host:port`.
    pub pd_http: String,
    /// The cluster id test-pd reports.
    pub cluster_id: u64,
    /// Running stores by id.
    pub stores: BTreeMap<u64, LabStore>,
    /// The test-pd process.
    pub pd: LabProcess,
    /// The client for the stores' status servers: HTTPS with the lab's
    /// certificate when the lab runs `[security]`.
    pub http: HttpClient,
    config: PathBuf,
    dir: tempfile::TempDir,
    /// PD's ports while it is stopped (a local PD only).
    pd_ports: Vec<crate::port_hold::PortHold>,
    /// Killed stores' ports.
    held_ports: Vec<crate::port_hold::PortHold>,
}

/// Holds each of `addrs`, the ports of a process (`who`) that is gone (see
/// [`port_hold`](crate::port_hold)). A process inside a host has its
/// addresses in the host's namespace, not on this side: nothing to hold.
fn hold_ports(addrs: &[&str], who: &str) -> Vec<crate::port_hold::PortHold> {
    let mut held = Vec::new();
    for addr in addrs {
        match crate::port_hold::PortHold::bind(addr) {
            Ok(h) => held.push(h),
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {}
            Err(e) => eprintln!("lab: {}'s port {} stays unheld: {}", who, addr, e),
        }
    }
    held
}

impl Lab {
    /// Starts test-pd with `flavor` (`old` or `new`).
    pub fn start(flavor: &str) -> Result<Lab, String> {
        Lab::start_with(flavor, &[])
    }

    /// As [`start`](Self::start), with `extra` test-pd arguments.
    pub fn start_with(flavor: &str, extra: &[&str]) -> Result<Lab, String> {
        Lab::start_secure(flavor, extra, None)
    }

    /// As [`start_with`](Self::start_with); with `security`, a `[security]`
    /// section (TOML text) given to test-pd and to every store.
    pub fn start_secure(
        flavor: &str,
        extra: &[&str],
        security: Option<&str>,
    ) -> Result<Lab, String> {
        Lab::start_inner(flavor, extra, security, None)
    }

    /// As [`start`](Self::start), with test-pd inside `host` (gRPC on
    /// port 2379, HTTP on 2380 of the host's address).
    pub fn start_in(flavor: &str, host: &Host) -> Result<Lab, String> {
        Lab::start_inner(flavor, &[], None, Some(host))
    }

    fn start_inner(
        flavor: &str,
        extra: &[&str],
        security: Option<&str>,
        host: Option<&Host>,
    ) -> Result<Lab, String> {
        let dir = tempfile::Builder::new()
            .prefix("tikv-lab-")
            .tempdir()
            .map_err(|e| format!("temp dir: {}", e))?;
        let (mut cmd, ip) = match host {
            Some(h) => (h.command(&bin("test-pd")?), h.addr.clone()),
            None => (Command::new(bin("test-pd")?), "127.0.0.1".to_owned()),
        };
        if let Some(sec) = security {
            let p = dir.path().join("test-pd.toml");
            std::fs::write(&p, sec).map_err(|e| format!("{}: {}", p.display(), e))?;
            cmd.arg("--config").arg(p);
        }
        let (grpc, http) = if host.is_some() {
            (format!("{}:2379", ip), format!("{}:2380", ip))
        } else {
            (format!("{}:0", ip), format!("{}:0", ip))
        };
        cmd.args(["--addr", &grpc, "--http-addr", &http])
            .args(["--flavor", flavor])
            .args(extra);
        let pd = LabProcess::spawn("test-pd", cmd, &dir.path().join("test-pd.stderr"))?;
        let config = dir.path().join("tikv.toml");
        let text = format!("{}\n{}", LAB_CONFIG, security.unwrap_or(""));
        // The stores' own parser, so the lab's client takes the [security]
        // they take.
        let (cfg, _) = server::config::TikvConfig::from_toml(&text)?;
        let http = HttpClient::with_security(&security::SecurityManager::new(&cfg.security)?)?;
        std::fs::write(&config, text).map_err(|e| format!("{}: {}", config.display(), e))?;
        Ok(Lab {
            flavor: flavor.to_owned(),
            pd_endpoints: pd.field("pd"),
            pd_http: pd.field("http"),
            cluster_id: pd.ready["cluster_id"].as_u64().unwrap_or(0),
            stores: BTreeMap::new(),
            pd,
            http,
            config,
            dir,
            pd_ports: Vec::new(),
            held_ports: Vec::new(),
        })
    }

    /// The lab's temporary directory (logs, data dirs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A data dir path for `name` (not created).
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The command that starts a store with data dir `name`, the lab
    /// config, its log in the lab dir, and free ports unless `extra` (added
    /// last) names `--addr` or `--status-addr`.
    pub fn store_command(&self, name: &str, extra: &[&str]) -> Result<Command, String> {
        self.store_command_for(Command::new(bin("tikv-server")?), name, extra)
    }

    /// As [`store_command`](Self::store_command), the store inside `host`
    /// (raft on port 20160, status on 20180 of the host's address).
    pub fn store_command_in(
        &self,
        name: &str,
        host: &Host,
        extra: &[&str],
    ) -> Result<Command, String> {
        let (addr, status) = (
            format!("{}:20160", host.addr),
            format!("{}:20180", host.addr),
        );
        let mut all = vec!["--addr", &addr, "--status-addr", &status];
        all.extend_from_slice(extra);
        self.store_command_for(host.command(&bin("tikv-server")?), name, &all)
    }

    /// Starts a store inside `host` with data dir `name`; returns its id.
    pub fn start_store_in(&mut self, name: &str, host: &Host) -> Result<u64, String> {
        let cmd = self.store_command_in(name, host, &[])?;
        self.spawn_store(name, cmd)
    }

    fn store_command_for(
        &self,
        mut cmd: Command,
        name: &str,
        extra: &[&str],
    ) -> Result<Command, String> {
        if !extra.contains(&"--config") {
            cmd.arg("--config").arg(&self.config);
        }
        cmd.args(["--pd", &self.pd_endpoints])
            .arg("--data-dir")
            .arg(self.data_dir(name))
            .arg("--log-file")
            .arg(self.dir.path().join(format!("{}.log", name)));
        // Free ports unless `extra` names the address.
        for flag in ["--addr", "--status-addr"] {
            if !extra.contains(&flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        cmd.args(extra);
        Ok(cmd)
    }

    /// Writes the lab's store config with `overrides` (`key`, TOML value)
    /// replacing the lab's own lines for those keys into `file` in the lab
    /// dir; returns its path, for `--config` in `extra`.
    pub fn store_config_with(
        &self,
        file: &str,
        overrides: &[(&str, &str)],
    ) -> Result<PathBuf, String> {
        let text = std::fs::read_to_string(&self.config).map_err(|e| e.to_string())?;
        let mut out = String::new();
        for line in text.lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            match overrides.iter().find(|(k, _)| *k == key) {
                Some((k, v)) => out.push_str(&format!("{} = {}\n", k, v)),
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        for (k, _) in overrides {
            if !text
                .lines()
                .any(|l| l.split('=').next().unwrap_or("").trim() == *k)
            {
                return Err(format!("the lab config has no key {}", k));
            }
        }
        let path = self.dir.path().join(file);
        std::fs::write(&path, out).map_err(|e| format!("{}: {}", path.display(), e))?;
        Ok(path)
    }

    /// Starts a store on a free port with data dir `name`; returns its id.
    pub fn start_store(&mut self, name: &str) -> Result<u64, String> {
        self.start_store_with(name, &[])
    }

    /// Spawns `cmd` (a store command) and adds the ready store to the lab.
    fn spawn_store(&mut self, name: &str, cmd: Command) -> Result<u64, String> {
        let p = LabProcess::spawn(
            &format!("tikv-server {}", name),
            cmd,
            &self.stderr_path(name),
        )?;
        self.adopt_store(name, p)
    }

    /// As [`start_store`](Self::start_store), with `extra` arguments.
    pub fn start_store_with(&mut self, name: &str, extra: &[&str]) -> Result<u64, String> {
        let cmd = self.store_command(name, extra)?;
        self.spawn_store(name, cmd)
    }

    /// Where store `name`'s stderr goes.
    pub fn stderr_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{}.stderr", name))
    }

    /// Where store `name` logs.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{}.log", name))
    }

    /// SIGKILLs test-pd (its state is lost; restart it with
    /// [`restart_pd`](Self::restart_pd)). Its ports stay reserved until
    /// then: dialing PD is refused, as a dead PD's port is.
    pub fn stop_pd(&mut self) {
        self.pd.kill();
        // Kept until `restart_pd`: without it another process could bind
        // the port, or a store dialing PD get it as its own ephemeral port
        // and connect to itself, and the store would meet something that
        // is not PD.
        self.pd_ports = hold_ports(&[&self.pd_endpoints, &self.pd_http], "test-pd");
    }

    /// Starts a fresh test-pd on the addresses the stopped one had, so the
    /// stores' `--pd` finds it (a new cluster unless given `--cluster-id`
    /// in `extra`).
    pub fn restart_pd(&mut self, extra: &[&str]) -> Result<(), String> {
        let mut cmd = Command::new(bin("test-pd")?);
        cmd.args(["--addr", &self.pd_endpoints, "--http-addr", &self.pd_http])
            .args(["--flavor", &self.flavor])
            .args(extra);
        let stderr = self.dir.path().join("test-pd.restarted.stderr");
        self.pd_ports.clear();
        self.pd = LabProcess::spawn("test-pd", cmd, &stderr)?;
        self.cluster_id = self.pd.ready["cluster_id"].as_u64().unwrap_or(0);
        Ok(())
    }

    /// A fresh id from PD's allocator (what a new store gets): for a store
    /// that peers point at before it registers.
    pub fn alloc_store_id(&self) -> Result<u64, String> {
        let pd = pd_client::RpcClient::new(
            &pd_client::Config::new(self.pd_endpoints.split(',').map(str::to_owned).collect()),
            None,
            tikv_util::logger::discard(),
        )
        .map_err(|e| format!("PD client: {}", e))?;
        pd_client::PdClient::alloc_id(&pd).map_err(|e| format!("alloc id: {}", e))
    }

    /// Gives store `on`'s regions a peer on `store` (`PUT
    /// /debug/synthetic/peer_store/<store>`, as a conf change would).
    pub fn add_peer_store(&self, on: u64, store: u64) -> Result<(), String> {
        let url = self.status_url(on, &format!("/debug/synthetic/peer_store/{}", store))?;
        match self.http.request("PUT", &url, "")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("PUT {}: {} {}", url, code, body)),
        }
    }

    /// Starts store `name` as store `id` (its `store_ident.json` written
    /// first, as a store that was given its id before it registered).
    pub fn start_store_as(&mut self, name: &str, id: u64) -> Result<u64, String> {
        let dir = self.data_dir(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {}", dir.display(), e))?;
        server::ident::StoreIdent {
            cluster_id: self.cluster_id,
            store_id: id,
        }
        .save(&dir)?;
        self.start_store(name)
    }

    /// Adds a store process spawned from [`store_command`](Self::store_command)
    /// (and ready) to the lab; returns its id.
    pub fn adopt_store(&mut self, name: &str, p: LabProcess) -> Result<u64, String> {
        let data_dir = self.data_dir(name);
        let log = self.log_path(name);
        let id = p.ready["store_id"]
            .as_u64()
            .ok_or_else(|| format!("{} printed no store id: {}", name, p.ready))?;
        let store = LabStore {
            id,
            addr: p.field("addr"),
            status: p.field("status_addr"),
            data_dir,
            log,
            process: p,
        };
        self.stores.insert(id, store);
        Ok(id)
    }

    /// SIGKILLs store `id`. It stays in [`stores`](Self::stores) (its
    /// data dir and log), and its raft and status ports stay reserved for
    /// the lab's life, so stores still dialing it are refused as by a dead
    /// process and never reach whatever else could take the port.
    pub fn kill_store(&mut self, id: u64) -> Result<(), String> {
        let s = self
            .stores
            .get_mut(&id)
            .ok_or_else(|| format!("store {} is not in the lab", id))?;
        s.process.kill();
        let held = hold_ports(&[&s.addr, &s.status], &format!("store {}", id));
        self.held_ports.extend(held);
        Ok(())
    }

    /// Store `id`, running.
    pub fn store(&self, id: u64) -> Result<&LabStore, String> {
        self.stores
            .get(&id)
            .ok_or_else(|| format!("store {} is not running", id))
    }

    /// The URL of `path` on store `id`'s status server (`https` in a TLS
    /// lab).
    pub fn status_url(&self, id: u64, path: &str) -> Result<String, String> {
        Ok(format!(
            "{}://{}{}",
            self.http.scheme(),
            self.store(id)?.status,
            path
        ))
    }

    /// Store `id`'s raft client view (`/debug/raft_client`).
    pub fn raft_client(&self, id: u64) -> Result<Value, String> {
        self.http
            .get_json(&self.status_url(id, "/debug/raft_client")?)
    }

    /// What store `id` resolves `store` to (`/debug/resolve/<store>`).
    pub fn resolve(&self, id: u64, store: u64) -> Result<Value, String> {
        self.http
            .get_json(&self.status_url(id, &format!("/debug/resolve/{}", store))?)
    }

    /// A counter or gauge without labels from store `id`'s `/metrics`.
    pub fn metric(&self, id: u64, name: &str) -> Result<f64, String> {
        let text = self.metrics(id)?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| format!("no {} in store {}'s metrics", name, id))
    }

    /// Store `id`'s `/status`.
    pub fn status(&self, id: u64) -> Result<Value, String> {
        self.http.get_json(&self.status_url(id, "/status")?)
    }

    /// Store `id`'s `/metrics` text.
    pub fn metrics(&self, id: u64) -> Result<String, String> {
        self.http.get_text(&self.status_url(id, "/metrics")?)
    }

    /// A PD API call: `method /pd/api/v1/...`.
    pub fn pd_api(&self, method: &str, path: &str) -> Result<(u16, String), String> {
        http::request(method, &format!("http://{}{}", self.pd_http, path), "")
    }

    /// test-pd's counters.
    pub fn counters(&self) -> Result<Value, String> {
        http::get_json(&format!("http://{}/test-pd/api/v1/counters", self.pd_http))
    }

    /// GetStore calls test-pd received for `store_id`.
    pub fn get_store_calls(&self, store_id: u64) -> Result<u64, String> {
        Ok(
            self.counters()?["per_store"]["GetStore"][store_id.to_string()]
                .as_u64()
                .unwrap_or(0),
        )
    }

    /// The store's `state_name` in PD, or `None` when PD answers 404.
    pub fn pd_state(&self, store_id: u64) -> Result<Option<String>, String> {
        let (code, body) = self.pd_api("GET", &format!("/pd/api/v1/store/{}", store_id))?;
        match code {
            200 => {
                let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
                Ok(v["store"]["state_name"].as_str().map(str::to_owned))
            }
            404 => Ok(None),
            c => Err(format!("GET store {}: {} {}", store_id, c, body)),
        }
    }

    /// The region count PD has from the store's last heartbeat.
    pub fn pd_region_count(&self, store_id: u64) -> Result<u64, String> {
        let v = http::get_json(&format!(
            "http://{}/pd/api/v1/store/{}",
            self.pd_http, store_id
        ))?;
        Ok(v["status"]["region_count"].as_u64().unwrap_or(0))
    }

    /// Warn and error lines in store `id`'s log naming `about`.
    pub fn warn_lines_about(&self, id: u64, about: u64) -> Result<usize, String> {
        let log = &self.store(id)?.log;
        let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {}", log.display(), e))?;
        let key = format!("store_id={}]", about);
        Ok(text
            .lines()
            .filter(|l| (l.contains("[WARN]") || l.contains("[ERROR]")) && l.contains(&key))
            .count())
    }
}
