# Patched TiKV resolve + raft client. `make run` and `make test` are the two
# commands; both install missing system packages first (as root).

CARGO ?= cargo
export RUST_BACKTRACE ?= 1

.PHONY: all setup build run test unit-test fail failpoint-test mutants clippy format format-check bench clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --workspace --all-targets

## The drill: walk a store through Offline, Tombstone and remove-tombstone
## on an embedded cluster. `make run ARGS="--pd old --verbose"`.
run: setup
	$(CARGO) run -p tikv-drill -- $(ARGS)

## Every test: unit and integration tests of the whole workspace, then the
## failpoint suite (built with --features failpoints).
test: setup
	$(CARGO) test --workspace
	$(CARGO) test --features failpoints --test failpoints

unit-test: setup
	$(CARGO) test --workspace

## Only the failpoint suite (tests/failpoints, --features failpoints).
fail: setup
	$(CARGO) test --features failpoints --test failpoints

failpoint-test: fail

## Reverts each behaviour listed in scripts/mutants.toml in a scratch copy,
## runs the tests, and fails if any reversion survives.
mutants: setup
	python3 scripts/mutants.py $(ARGS)

clippy: setup
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --features failpoints --all-targets -- -D warnings

format:
	$(CARGO) fmt --all

format-check:
	$(CARGO) fmt --all -- --check

## Benchmarks (release build): resolution latency under load, send path.
bench: setup
	$(CARGO) bench --bench transport

clean:
	$(CARGO) clean
