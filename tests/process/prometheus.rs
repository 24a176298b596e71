//! What operators see, on real parts: the alert rules under `promtool`, the
//! Grafana dashboard against the metrics the fork exports, and a real
//! Prometheus (Debian's `prometheus`, installed by `make setup`) scraping a
//! lab cluster of three tikv-servers while a store is removed and another
//! registers late. Assertions go through Prometheus's HTTP API: the alerts'
//! own history (`ALERTS{alertstate=...}`) says they went pending and fired,
//! `/api/v1/alerts` that they resolved.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_lab::http::HttpClient;
use test_lab::Lab;

const RULES: &str = "metrics/alertmanager/tikv.rules.yml";
const RULE_TESTS: &str = "metrics/alertmanager/tikv.rules.test.yml";
const DASHBOARD: &str = "metrics/grafana/tikv_raft_client.json";
const WAIT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{} not found: `make setup` installs Debian's prometheus package (it brings promtool)",
        name
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{:?}: {}", cmd, e));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{:?} failed:\n{}", cmd, text);
    text
}

#[test]
fn alert_rules_pass_promtool() {
    let out = run(Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(root().join(RULES)));
    assert!(out.contains("SUCCESS: 6 rules found"), "{}", out);
    let out = run(Command::new(tool("promtool"))
        .args(["test", "rules"])
        .arg(root().join(RULE_TESTS)));
    assert!(out.contains("SUCCESS"), "{}", out);
}

/// The metric names registered in a metrics.rs (the first string literal of
/// each `register_*!` call).
fn registered(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut names = vec![];
    for part in text.split("register_").skip(1) {
        if let Some(lit) = part.split('"').nth(1) {
            names.push(lit.to_owned());
        }
    }
    assert!(!names.is_empty(), "{}", path.display());
    names
}

fn panel_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = vec![];
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        for t in p["targets"].as_array().unwrap() {
            out.push((
                p["title"].as_str().unwrap().to_owned(),
                t["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(DASHBOARD)).unwrap()).unwrap()
}

/// Every metric the fork exports has a panel, every panel has a unit and a
/// per-instance legend, and the dashboard has a Prometheus datasource
/// variable its panels use.
#[test]
fn dashboard_covers_every_metric() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["type"] == "datasource"
        && v["query"] == "prometheus"
        && v["name"] == "datasource"));
    let exprs = panel_exprs(&d);
    let mut metrics = registered(&root().join("src/server/metrics.rs"));
    metrics.extend(registered(
        &root().join("components/pd_client/src/metrics.rs"),
    ));
    assert!(metrics.len() >= 16, "{:?}", metrics);
    for m in &metrics {
        assert!(
            exprs.iter().any(|(_, e)| e.contains(m.as_str())),
            "no panel shows {}",
            m
        );
    }
    let rows: Vec<_> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        ["Resolver", "Raft client", "Raft service", "PD client"]
    );
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            p["fieldConfig"]["defaults"]["unit"].is_string(),
            "{}",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            assert!(
                t["legendFormat"].as_str().unwrap().contains("{{instance}}"),
                "{}",
                p["title"]
            );
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    http: HttpClient,
    targets: PathBuf,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rules as shipped, with every `for:` shortened to `hold` so the walk
/// sees pending turn into firing in seconds.
fn test_rules(dir: &Path, hold: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join(RULES)).unwrap();
    let mut n = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                n += 1;
                format!("    for: {}", hold)
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert_eq!(n, 4, "the rules with a `for:`");
    let p = dir.join("rules.yml");
    std::fs::write(&p, out.join("\n")).unwrap();
    p
}

impl Prometheus {
    /// Scrapes `targets` every second and evaluates the test copy of the
    /// rules every second. `tls`: (ca, cert, key) for `scheme: https`.
    fn start(dir: &Path, targets: &[String], tls: Option<(&str, &str, &str)>) -> Prometheus {
        let rules = test_rules(dir, "3s");
        let sd = dir.join("targets.json");
        let tls_cfg = match tls {
            Some((ca, cert, key)) => format!(
                "    scheme: https\n    tls_config:\n      ca_file: {:?}\n      cert_file: {:?}\n      key_file: {:?}\n",
                ca, cert, key
            ),
            None => String::new(),
        };
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 900ms\n\
             rule_files:\n  - {:?}\n\
             scrape_configs:\n  - job_name: tikv\n{}    file_sd_configs:\n      - files: [{:?}]\n        refresh_interval: 1s\n",
            rules, tls_cfg, sd
        );
        let cfg_path = dir.join("prometheus.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        run(Command::new(tool("promtool"))
            .arg("check")
            .arg("config")
            .arg(&cfg_path));
        // The port is free when picked, not necessarily when Prometheus
        // binds it: a Prometheus that exits at start is retried on another.
        for attempt in 1..=3 {
            let log = dir.join(format!("prometheus.{}.log", attempt));
            let port = free_port();
            let child = Command::new(tool("prometheus"))
                .arg(format!("--config.file={}", cfg_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("data.{}", attempt)).display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{}", port))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start prometheus");
            let mut p = Prometheus {
                child,
                url: format!("http://127.0.0.1:{}", port),
                http: HttpClient::plain(),
                targets: sd.clone(),
                log,
            };
            p.set_targets(targets);
            let url = format!("{}/-/ready", p.url);
            let deadline = Instant::now() + WAIT;
            loop {
                if matches!(p.http.request("GET", &url, ""), Ok((200, _))) {
                    return p;
                }
                if p.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Prometheus not ready within {:?}:\n{}",
                    WAIT,
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                );
                std::thread::park_timeout(Duration::from_millis(100));
            }
            eprintln!(
                "prometheus exited at start (attempt {}):\n{}",
                attempt,
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
        panic!("prometheus exited at start three times");
    }

    fn set_targets(&mut self, targets: &[String]) {
        let v = serde_json::json!([{ "targets": targets, "labels": {} }]);
        let tmp = self.targets.with_extension("tmp");
        std::fs::write(&tmp, v.to_string()).unwrap();
        std::fs::rename(&tmp, &self.targets).unwrap();
    }

    fn wait<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        self.wait_explained(what, f, String::new)
    }

    /// `wait`, whose failure also prints what `explain` says of the state
    /// (the series and views the condition was computed from).
    fn wait_explained<T>(
        &self,
        what: &str,
        mut f: impl FnMut() -> Option<T>,
        explain: impl Fn() -> String,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not within {:?}\n{}\nprometheus log:\n{}",
                what,
                WAIT,
                explain(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::park_timeout(Duration::from_millis(200));
        }
    }

    fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let q: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", k, encode(v)))
            .collect();
        let url = format!("{}{}?{}", self.url, path, q.join("&"));
        let v = self
            .http
            .get_json(&url)
            .unwrap_or_else(|e| panic!("{}: {}", url, e));
        assert_eq!(v["status"], "success", "{}: {}", url, v);
        v["data"].clone()
    }

    /// An instant query's result vector.
    fn query(&self, q: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", q)])["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The series a range query returned over `since`..now.
    fn query_range(&self, q: &str, since: std::time::SystemTime) -> Vec<Value> {
        let secs = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                .to_string()
        };
        self.api(
            "/api/v1/query_range",
            &[
                ("query", q),
                ("start", &secs(since)),
                ("end", &secs(std::time::SystemTime::now())),
                ("step", "1"),
            ],
        )["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Alerts now: (alertname, state, instance, store_id).
    fn alerts(&self) -> Vec<(String, String, String, String)> {
        let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
        self.api("/api/v1/alerts", &[])["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                (
                    s(&a["labels"]["alertname"]),
                    s(&a["state"]),
                    s(&a["labels"]["instance"]),
                    s(&a["labels"]["store_id"]),
                )
            })
            .collect()
    }

    /// Instances on which `alert` for `store_id` was ever in `state`, from
    /// Prometheus's own `ALERTS` series (nothing missed between two polls).
    fn ever(&self, alert: &str, state: &str, store_id: u64) -> Vec<String> {
        let q = format!(
            "max_over_time(ALERTS{{alertname=\"{}\",alertstate=\"{}\",store_id=\"{}\"}}[30m])",
            alert, state, store_id
        );
        self.instances(&q)
    }

    /// The `instance` labels of `q`'s series, sorted.
    fn instances(&self, q: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .query(q)
            .iter()
            .map(|r| r["metric"]["instance"].as_str().unwrap_or("").to_owned())
            .collect();
        v.sort();
        v
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{:02X}", b));
        }
    }
    out
}

fn status_addrs(lab: &Lab, ids: &[u64]) -> Vec<String> {
    ids.iter()
        .map(|&id| lab.store(id).unwrap().status.clone())
        .collect()
}

/// Three tikv-servers scraped by a real Prometheus: a store not registered
/// yet raises the not-found alert (pending, then firing) and clears it when
/// it registers; a removed store raises the tombstone alert on both
/// survivors; the stale regions show in Prometheus, the debug view and the
/// log; and every dashboard panel's query returns data.
#[test]
fn prometheus_scrapes_a_lab_cluster_through_a_removal() {
    let t0 = std::time::SystemTime::now();
    let mut lab = Lab::start("new").unwrap();
    let a = lab.start_store("store-a").unwrap();
    let b = lab.start_store("store-b").unwrap();
    let c = lab.start_store("store-c").unwrap();
    let pdir = tempfile::tempdir().unwrap();
    let mut prom = Prometheus::start(pdir.path(), &status_addrs(&lab, &[a, b, c]), None);
    prom.wait("three targets up", || {
        (prom.query("up{job=\"tikv\"} == 1").len() == 3).then_some(())
    });
    // Every store resolved the two others (a series per store pair).
    prom.wait("the raft clients resolved every pair", || {
        (prom
            .query("tikv_server_raft_client_resolve_total{verdict=\"success\"} > 0")
            .len()
            >= 6)
            .then_some(())
    });

    // A store that is not registered yet: store a has peers on it.
    let d = lab.alloc_store_id().unwrap();
    lab.add_peer_store(a, d).unwrap();
    let inst_a = lab.store(a).unwrap().status.clone();
    prom.wait("not-found alert firing for the unregistered store", || {
        (prom.ever("TiKV_raft_client_store_not_found", "firing", d) == [inst_a.clone()])
            .then_some(())
    });
    assert_eq!(
        prom.ever("TiKV_raft_client_store_not_found", "pending", d),
        std::slice::from_ref(&inst_a),
        "pending before firing"
    );
    let age = prom.query(&format!(
        "time() - tikv_server_raft_client_not_found_since_seconds{{store_id=\"{}\"}}",
        d
    ));
    assert_eq!(age.len(), 1, "{:?}", age);
    // It registers: the episode ends, the series goes, the alert resolves.
    assert_eq!(lab.start_store_as("store-d", d).unwrap(), d);
    prom.set_targets(&status_addrs(&lab, &[a, b, c, d]));
    // While it was unknown, store a kept the regions whose messages to d it
    // reported; found again, d's list and its series go.
    let stale_d = format!(
        "tikv_server_raft_client_stale_regions{{store_id=\"{}\"}}",
        d
    );
    assert!(
        prom.query_range(&stale_d, t0)
            .iter()
            .any(|r| r["metric"]["instance"] == inst_a.as_str()),
        "store a's regions sending to unregistered store {} never scraped",
        d
    );
    prom.wait("the not-found alert resolved", || {
        let active = prom
            .alerts()
            .into_iter()
            .any(|(n, _, _, s)| n == "TiKV_raft_client_store_not_found" && s == d.to_string());
        (!active
            && prom
                .query("tikv_server_raft_client_not_found_since_seconds")
                .is_empty())
        .then_some(())
    });
    prom.wait("store d's stale regions forgotten", || {
        let view = lab.raft_client(a).ok()?;
        (view["pool"]["stale_regions"].get(d.to_string()).is_none()
            && prom.query(&stale_d).is_empty())
        .then_some(())
    });

    // Store c is removed: killed, deleted, buried. Both survivors' stale
    // peers on it drive their raft clients to the tombstone verdict.
    lab.kill_store(c).unwrap();
    let (code, _) = lab
        .pd_api("DELETE", &format!("/pd/api/v1/store/{}", c))
        .unwrap();
    assert_eq!(code, 200);
    let (code, _) = lab
        .pd_api(
            "POST",
            &format!("/pd/api/v1/store/{}/state?state=Tombstone", c),
        )
        .unwrap();
    assert_eq!(code, 200);
    let mut survivors = status_addrs(&lab, &[a, b]);
    survivors.sort();
    let firing_on = |prom: &Prometheus| {
        let mut firing: Vec<String> = prom
            .alerts()
            .into_iter()
            .filter(|(n, st, _, s)| {
                n == "TiKV_raft_client_store_tombstone" && st == "firing" && *s == c.to_string()
            })
            .map(|(_, _, i, _)| i)
            .collect();
        firing.sort();
        firing
    };
    // Store d, registered after c, may have peers on c too: every node
    // that reached the verdict fires, a and b among them.
    let verdict_on = |prom: &Prometheus| {
        prom.instances(&format!(
            "tikv_server_raft_client_resolve_total{{verdict=\"tombstone\",store_id=\"{}\"}} > 0",
            c
        ))
    };
    let done = |prom: &Prometheus| {
        let firing = firing_on(prom);
        survivors.iter().all(|s| firing.contains(s)) && firing == verdict_on(prom)
    };
    prom.wait_explained(
        "tombstone alert firing on both survivors (and only where the verdict is)",
        || done(&prom).then_some(()),
        || {
            format!(
                "survivors {:?}, firing on {:?}\nseries: {:?}\nviews: {} / {}",
                survivors,
                firing_on(&prom),
                prom.query(&format!(
                    "tikv_server_raft_client_resolve_total{{verdict=\"tombstone\",store_id=\"{}\"}}",
                    c
                )),
                lab.raft_client(a).map(|v| v["pool"].clone()).unwrap_or_default(),
                lab.raft_client(b).map(|v| v["pool"].clone()).unwrap_or_default(),
            )
        },
    );
    // increase() itself sees the verdict on both survivors, not only the
    // alert's clause for a series born holding its first event: each
    // survivor's per-store series for c existed at 0 (scraped while the
    // pairs were resolved, long before the removal), so the verdict is a
    // rise from 0 to 1.
    let increase_q = format!(
        "increase(tikv_server_raft_client_resolve_total{{verdict=\"tombstone\",store_id=\"{}\"}}[10m]) > 0",
        c
    );
    prom.wait_explained(
        "increase() of the tombstone verdict above 0 on both survivors",
        || {
            let on = prom.instances(&increase_q);
            survivors.iter().all(|s| on.contains(s)).then_some(())
        },
        || {
            format!(
                "{:?}",
                prom.query_range(&increase_q.replace(" > 0", ""), t0)
            )
        },
    );
    // The regions still pointing at c: in Prometheus, the view and the log.
    let stale_q = format!(
        "tikv_server_raft_client_stale_regions{{store_id=\"{}\"}} > 0",
        c
    );
    let stale_on = |prom: &Prometheus| {
        let on = prom.instances(&stale_q);
        survivors.iter().all(|s| on.contains(s))
    };
    prom.wait_explained(
        "stale regions of store c scraped from both survivors",
        || stale_on(&prom).then_some(()),
        || {
            format!(
                "series: {:?}\nviews: {} / {}",
                prom.query(&stale_q),
                lab.raft_client(a).unwrap_or_default(),
                lab.raft_client(b).unwrap_or_default(),
            )
        },
    );
    let view = lab.raft_client(a).unwrap();
    let regions = view["pool"]["stale_regions"][c.to_string()]["regions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!regions.is_empty(), "{}", view["pool"]);
    let log = std::fs::read_to_string(lab.log_path("store-a")).unwrap();
    assert!(
        log.lines().any(|l| l.contains(
            "regions still have peers on it, remove them with pd-ctl operator add remove-peer"
        ) && l.contains("[region_ids=")
            && l.contains(&format!("[store_id={}]", c))),
        "no stale-region line in store a's log"
    );

    // The reason is labelled `type`, as upstream's alert on
    // tikv_server_report_failure_msg_total{type="unreachable"} expects.
    assert!(
        !prom
            .query(&format!(
                "tikv_server_report_failure_msg_total{{type=\"tombstone\",store_id=\"{}\"}}",
                c
            ))
            .is_empty(),
        "no report_failure_msg series with type=\"tombstone\" for store {}",
        c
    );

    // Every panel's query has data over the walk.
    for (title, expr) in panel_exprs(&dashboard()) {
        let q = expr.replace("$instance", ".*");
        let got = prom.query_range(&q, t0);
        assert!(!got.is_empty(), "panel {:?}: {} returned no data", title, q);
    }
}

/// With `[security]` set the status servers serve HTTPS only; Prometheus
/// scrapes them with `scheme: https`, the CA and a client certificate whose
/// CN need not be in `cert-allowed-cn` (as the README's Security section
/// says).
#[test]
fn prometheus_scrapes_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = security::test_certs::Ca::new("lab-ca");
    let set = ca.write(dir.path(), "tikv", "tikv");
    let sec = format!(
        "[security]\nca-path = {:?}\ncert-path = {:?}\nkey-path = {:?}\ncert-allowed-cn = [\"tikv\"]\n",
        set.ca_path, set.cert_path, set.key_path
    );
    let mut lab = Lab::start_secure("new", &[], Some(&sec)).unwrap();
    let a = lab.start_store("a").unwrap();
    let b = lab.start_store("b").unwrap();
    let scraper = ca.write(dir.path(), "prometheus", "prometheus");
    let pdir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(
        pdir.path(),
        &status_addrs(&lab, &[a, b]),
        Some((
            scraper.ca_path.as_str(),
            scraper.cert_path.as_str(),
            scraper.key_path.as_str(),
        )),
    );
    prom.wait("both HTTPS targets up", || {
        (prom.query("up{job=\"tikv\"} == 1").len() == 2).then_some(())
    });
    prom.wait("raft client metrics scraped over HTTPS", || {
        (prom
            .query("tikv_server_raft_client_resolve_total{verdict=\"success\"} > 0")
            .len()
            == 2)
            .then_some(())
    });
}
