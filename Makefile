# Patched TiKV resolve + raft client. `make run` and `make test` are the two
# commands; both install missing system packages first (as root).

CARGO ?= cargo
export RUST_BACKTRACE ?= 1

.PHONY: all setup build run test loom unit-test process-test fail failpoint-test mutants clippy format format-check bench dashboard clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace --all-targets

## The drill: walk a store through Offline, Tombstone and remove-tombstone
## and check every step. In-process by default; on real test-pd and
## tikv-server processes with ARGS=--processes. `--json` for scripts,
## `--pd old|new`, `--verbose`. Exits 1 when an expectation fails.
run: setup
	$(CARGO) build --workspace
	$(CARGO) run -p tikv-drill -- $(ARGS)

## Every test: the binaries the process tests spawn (same debug build),
## unit, integration and process tests of the whole workspace, then the
## failpoint suite and tikv-server's failpoint endpoints (both built with
## --features failpoints). First: every reversion of `make mutants` still
## applies, so a code change cannot silently disarm one.
test: setup
	python3 scripts/mutants.py --check
	$(CARGO) build --workspace
	$(CARGO) test --workspace
	$(CARGO) test --features failpoints --test failpoints
	$(CARGO) test -p tikv-server --features failpoints --test failpoints
	$(MAKE) loom

## The raft client queue's concurrent core model-checked by loom: a
## `--cfg loom` build of components/raft_queue alone, in its own target dir
## (the flag would otherwise rebuild everything, gRPC's core included).
loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom $(CARGO) test -p raft_queue --test loom --release

## Only the removed-store scenario and CLI tests on real processes.
process-test: setup
	$(CARGO) build --workspace
	$(CARGO) test --test process

unit-test: setup
	$(CARGO) build --workspace
	$(CARGO) test --workspace

## Only the failpoint suite (tests/failpoints, --features failpoints).
fail: setup
	$(CARGO) test --features failpoints --test failpoints
	$(CARGO) test -p tikv-server --features failpoints --test failpoints

failpoint-test: fail

## Reverts each behaviour listed in scripts/mutants.toml in a scratch copy,
## runs the tests, and fails if any reversion survives.
mutants: setup
	python3 scripts/mutants.py $(ARGS)

clippy: setup
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --features failpoints --all-targets -- -D warnings
	$(CARGO) clippy -p tikv-server -p server --features failpoints --all-targets -- -D warnings

format:
	$(CARGO) fmt --all

format-check:
	$(CARGO) fmt --all -- --check

## Benchmarks (release build): resolution latency under load, send path.
bench: setup
	$(CARGO) bench --bench transport

## Writes metrics/grafana/tikv_raft_client.json from scripts/dashboard.py.
dashboard:
	python3 scripts/dashboard.py

clean:
	$(CARGO) clean
