#!/usr/bin/env bash
# Installs the system tools the build needs when they are missing:
# cmake (grpcio-sys builds gRPC's C core), protoc (kvproto codegen), and
# OpenSSL's headers with pkg-config (gRPC's TLS and the `openssl` crate link
# the system OpenSSL; see README "TLS backend"), and Debian's `prometheus`
# (the Prometheus server and `promtool`: the alert rules are checked and
# unit-tested by promtool, and a process test scrapes a lab cluster with a
# real Prometheus; see README "Operating it").
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# `make test` first checks that every `make mutants` reversion still applies.
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ! { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; }; then
  missing+=(libssl-dev)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing ${missing[*]}; install them (e.g. sudo apt-get install -y ${missing[*]}) and re-run" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
  exit 1
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
command -v cmake >/dev/null && command -v protoc >/dev/null && pkg-config --exists openssl
command -v promtool >/dev/null && command -v prometheus >/dev/null
echo "setup: $(cmake --version | head -n1); $(protoc --version); OpenSSL $(pkg-config --modversion openssl)"
