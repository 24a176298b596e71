//! Integration tests: real gRPC on loopback, resolution through test_pd.

mod peers;
mod raft_client;
mod resolve;
mod tls;
mod upstream_peer;
mod util;
