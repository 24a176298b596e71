//! Integration tests: real gRPC on loopback, resolution through test_pd.

mod raft_client;
mod resolve;
mod util;
