//! Generates the Rust message types and grpcio stubs from `proto/*.proto`.

fn main() {
    let files = [
        "proto/eraftpb.proto",
        "proto/metapb.proto",
        "proto/pdpb.proto",
        "proto/raft_serverpb.proto",
        "proto/tikvpb.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f);
    }
    protobuf_build::Builder::new()
        .search_dir_for_protos("proto")
        .includes(&["proto".to_owned()])
        .generate();
}
