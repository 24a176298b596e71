//! `test-pd`: the embedded PD (`components/test_pd`) as a process, with a
//! subset of PD's HTTP API (see `http.rs`) so operator scripts written for
//! PD work against it. Starts as a fresh, unbootstrapped cluster: the first
//! tikv-server bootstraps it, as with a real PD.
//!
//! When it serves, it prints one JSON line on stdout:
//! `{"pd":"127.0.0.1:2379,...","http":"127.0.0.1:2381","cluster_id":N}`.

mod http;

use std::convert::Infallible;
use std::process::exit;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use hyper::service::{make_service_fn, service_fn};
use test_pd::{NotFoundShape, Server as PdServer};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Flavor {
    /// Old PD: "invalid store ID N, not found" as gRPC status 2-UNKNOWN
    Old,
    /// Newer PD: the same text in a response header error of type UNKNOWN
    New,
}

/// The embedded PD as a process, for lab clusters and process tests.
#[derive(Parser, Debug)]
#[command(name = "test-pd", version)]
struct Cli {
    /// gRPC address of the first member (the leader); port 0 picks one
    #[arg(
        long = "addr",
        default_value = "127.0.0.1:2379",
        value_name = "IP:PORT"
    )]
    addr: String,
    /// HTTP API address; port 0 picks one
    #[arg(
        long = "http-addr",
        default_value = "127.0.0.1:0",
        value_name = "IP:PORT"
    )]
    http_addr: String,
    /// How PD answers GetStore for an id it does not know
    #[arg(long = "flavor", value_enum, default_value = "new")]
    flavor: Flavor,
    /// Members; the others listen on free ports of the same host
    #[arg(long = "members", default_value_t = 1, value_name = "N")]
    members: usize,
    /// Cluster id (default: test_pd's)
    #[arg(long = "cluster-id", value_name = "ID")]
    cluster_id: Option<u64>,
    /// TOML config; only `[security]` (ca-path, cert-path, key-path,
    /// cert-allowed-cn) is read, as PD's own `[security]`
    #[arg(long = "config", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct FileConfig {
    security: security::SecurityConfig,
}

fn load_security(path: &std::path::Path) -> security::SecurityConfig {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| fail(format!("cannot read config file {}: {}", path.display(), e)));
    let mut unknown = vec![];
    let cfg: FileConfig = serde_ignored::deserialize(toml::Deserializer::new(&text), |p| {
        unknown.push(p.to_string())
    })
    .unwrap_or_else(|e: toml::de::Error| {
        fail(format!(
            "invalid config file {}: {}",
            path.display(),
            e.to_string().trim_end()
        ))
    });
    for k in unknown {
        eprintln!(
            "test-pd: warning: unknown config key {} in {}, ignored",
            k,
            path.display()
        );
    }
    cfg.security
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("test-pd: error: {}", msg);
    exit(1)
}

fn main() {
    let cli = Cli::parse();
    if cli.members == 0 || cli.members > 7 {
        fail(format!("--members must be 1 to 7, got {}", cli.members));
    }
    if cli.cluster_id == Some(0) {
        fail("--cluster-id must not be 0");
    }
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .unwrap_or_else(|e| fail(format!("cannot install signal handlers: {}", e)));
    let host = match cli.addr.rsplit_once(':') {
        Some((h, _)) if !h.is_empty() => h.to_owned(),
        _ => fail(format!("--addr {:?} is not host:port", cli.addr)),
    };
    let mut addrs = vec![cli.addr.clone()];
    for _ in 1..cli.members {
        addrs.push(format!("{}:0", host));
    }
    let shape = match cli.flavor {
        Flavor::Old => NotFoundShape::GrpcStatus,
        Flavor::New => NotFoundShape::Header,
    };
    let sec = cli.config.as_deref().map(load_security).unwrap_or_default();
    let security = Arc::new(security::SecurityManager::new(&sec).unwrap_or_else(|e| fail(e)));
    let pd = Arc::new(
        PdServer::start_with_security(&addrs, shape, security).unwrap_or_else(|e| fail(e)),
    );
    if let Some(id) = cli.cluster_id {
        pd.set_cluster_id(id);
    }
    pd.set_bootstrapped(false);

    let listener = std::net::TcpListener::bind(&cli.http_addr)
        .unwrap_or_else(|e| fail(format!("cannot bind --http-addr {}: {}", cli.http_addr, e)));
    let http_addr = listener
        .local_addr()
        .unwrap_or_else(|e| fail(format!("--http-addr {}: {}", cli.http_addr, e)));
    listener
        .set_nonblocking(true)
        .unwrap_or_else(|e| fail(format!("--http-addr {}: {}", cli.http_addr, e)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("cannot start the HTTP runtime: {}", e)));
    let pd2 = pd.clone();
    let server = {
        let _g = rt.enter();
        hyper::Server::from_tcp(listener)
            .unwrap_or_else(|e| fail(format!("--http-addr {}: {}", cli.http_addr, e)))
            .serve(make_service_fn(move |_| {
                let pd = pd2.clone();
                async move {
                    Ok::<_, Infallible>(service_fn(move |req| {
                        let pd = pd.clone();
                        async move { Ok::<_, Infallible>(http::route(pd, req).await) }
                    }))
                }
            }))
    };
    rt.spawn(server);
    println!(
        "{}",
        serde_json::json!({
            "pd": pd.endpoints().join(","),
            "http": http_addr.to_string(),
            "cluster_id": pd.cluster_id(),
        })
    );
    let mut signals = signals;
    let _ = signals.forever().next();
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    pd.stop();
}
