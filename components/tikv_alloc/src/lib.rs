//! The global allocator of TiKV's binaries. Upstream's `tikv_alloc`
//! (tikv/tikv `components/tikv_alloc`) makes jemalloc the allocator of
//! tikv-server by default; a binary that links this crate (`tikv-server`,
//! `make bench`) gets the same, so what the benchmark measures is the
//! allocator a store runs with. The raft client allocates a message on the
//! caller's thread and frees it on a gRPC thread: glibc's malloc returns
//! such frees to the other thread's arena and trims it, jemalloc caches
//! them per thread.
//!
//! Build with `--no-default-features` for the system allocator.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator this build uses: `"jemalloc"` or `"system"`.
pub fn allocator_name() -> &'static str {
    if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else {
        "system"
    }
}
