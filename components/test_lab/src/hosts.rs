//! Hosts of their own for lab processes: one network namespace per host,
//! each joined by a veth pair to a bridge in the test's namespace, on a /24
//! that exists only on those links. A host can be blackholed (frames still
//! reach it and nobody answers, so a connect hangs until its timeout, as to
//! a powered-off machine) and healed. This needs root (`ip netns`); the
//! kernel here has no `netem`, hence the recipe:
//!
//! - every other member gets a permanent neighbour entry for the host's
//!   address (`ip neigh replace ADDR lladdr MAC dev DEV nud permanent`), so
//!   no ARP failure ever answers for it;
//! - the address is removed inside the host's namespace
//!   (`ip addr del ADDR/24 dev eth0`): its frames arrive and are dropped.
//!
//! Healing adds the address back. Every namespace and link carries the
//! lab's prefix: they are removed on drop (also while a test panics), and
//! leftovers of a killed run are removed when the next lab starts.

use std::process::Command;

/// The prefix of every namespace and link a host lab creates.
pub const PREFIX: &str = "tkvlab";
/// The lab's /24: addresses that exist only on the lab's links.
pub const NET: &str = "10.231.7";
const BRIDGE: &str = "tkvlab-br";

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip {}: {}", args.join(" "), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut full = vec!["netns", "exec", ns, "ip"];
    full.extend_from_slice(args);
    ip(&full)
}

/// Why host tests cannot run here, if they cannot: not root, or no `ip
/// netns`. Under `CI=true` a caller should fail on it, elsewhere say it.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("host tests need root (ip netns, veth pairs)".into());
    }
    match ip(&["netns", "list"]) {
        Ok(_) => None,
        Err(e) => Some(format!("host tests need `ip netns`: {}", e)),
    }
}

/// Removes every namespace and link a lab of ours left behind.
pub fn remove_leftovers() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if ns.starts_with(PREFIX) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for l in links.lines() {
            // "7: tkvlab-h1@if6: <...>"
            let name = l.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or("");
            if name.starts_with(PREFIX) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// One host: a namespace with `eth0` at `addr`.
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace.
    pub ns: String,
    /// Its address (no prefix length).
    pub addr: String,
    /// The veth end on the bridge, in the test's namespace.
    pub link: String,
    mac: String,
}

impl Host {
    /// `cmd` (a program and its arguments) as a command that runs inside
    /// this host (`ip netns exec` execs it: its pid is the program's).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

/// One host lab at a time in a process: they share the bridge, the /24
/// and the leftover cleanup.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds off every host lab of this process while the guard lives: for a
/// test that runs a host lab in a child process (`tikv-drill --hosts`).
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB.lock().unwrap_or_else(|e| e.into_inner())
}

/// A set of hosts on one bridge; the test's own namespace is the bridge's
/// address `NET.254`.
pub struct HostLab {
    hosts: Vec<Host>,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl HostLab {
    /// Creates `n` hosts, `NET.1` to `NET.n`, after removing leftovers.
    pub fn new(n: usize) -> Result<HostLab, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        if n == 0 || n > 200 {
            return Err(format!("a host lab has 1 to 200 hosts, not {}", n));
        }
        let one = exclusive();
        remove_leftovers();
        let mut lab = HostLab {
            hosts: Vec::new(),
            _one: one,
        };
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}.254/24", NET), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for i in 1..=n {
            let ns = format!("{}-n{}", PREFIX, i);
            let link = format!("{}-h{}", PREFIX, i);
            let peer = format!("{}-p{}", PREFIX, i);
            let addr = format!("{}.{}", NET, i);
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            in_ns(&ns, &["link", "set", &peer, "name", "eth0"])?;
            in_ns(
                &ns,
                &["addr", "add", &format!("{}/24", addr), "dev", "eth0"],
            )?;
            in_ns(&ns, &["link", "set", "eth0", "up"])?;
            in_ns(&ns, &["link", "set", "lo", "up"])?;
            ip(&["link", "set", &link, "master", BRIDGE])?;
            ip(&["link", "set", &link, "up"])?;
            let mac = in_ns(&ns, &["-o", "link", "show", "eth0"])?
                .split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1)
                .ok_or("no MAC for eth0")?
                .to_owned();
            lab.hosts.push(Host {
                ns,
                addr,
                link,
                mac,
            });
        }
        Ok(lab)
    }

    /// Host `i` (1-based, as its address).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// Blackholes host `i`: every other member keeps a permanent neighbour
    /// entry for it, and its address leaves its namespace.
    pub fn blackhole(&self, i: usize) -> Result<(), String> {
        let h = self.host(i);
        let neigh = |dev| {
            [
                "neigh",
                "replace",
                &h.addr,
                "lladdr",
                &h.mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]
        };
        ip(&neigh(BRIDGE))?;
        for o in self.hosts.iter().filter(|o| o.ns != h.ns) {
            in_ns(&o.ns, &neigh("eth0"))?;
        }
        in_ns(
            &h.ns,
            &["addr", "del", &format!("{}/24", h.addr), "dev", "eth0"],
        )?;
        Ok(())
    }

    /// Puts host `i`'s address back.
    pub fn heal(&self, i: usize) -> Result<(), String> {
        let h = self.host(i);
        in_ns(
            &h.ns,
            &["addr", "replace", &format!("{}/24", h.addr), "dev", "eth0"],
        )?;
        Ok(())
    }
}

impl Drop for HostLab {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["link", "del", BRIDGE]);
        remove_leftovers();
    }
}
