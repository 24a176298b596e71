//! The global allocator of TiKV's binaries. Upstream's `tikv_alloc`
//! (tikv/tikv `components/tikv_alloc`) makes jemalloc the allocator of
//! tikv-server by default; a binary that links this crate (`tikv-server`,
//! `make bench`) gets the same, so what the benchmark measures is the
//! allocator a store runs with. As upstream's, it is built with
//! `unprefixed_malloc_on_supported_platforms`: on Linux jemalloc is also
//! `malloc`, so gRPC's C core (its slices and transport buffers) allocates
//! from it too, not from glibc. The raft client allocates a message on the
//! caller's thread and frees it on a gRPC thread: glibc's malloc returns
//! such frees to the other thread's arena and trims it, jemalloc caches
//! them per thread. With gRPC's buffers left on glibc, `make bench` counted
//! 8-35k page faults in bare's timed loop and 44-61k in ours' (glibc
//! trimming and refaulting them); with them on jemalloc, 0.4-0.7k and
//! 12-29k (`BENCH_DEBUG=1 BENCH_PROFILE=ours|bare`, 256 B and 4 KiB).
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
