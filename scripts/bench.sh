#!/usr/bin/env bash
# Runs the benchmarks (release build). Usage: scripts/bench.sh [all|append|subscribe|connectors|pg-cdc|mysql-cdc|mqtt|airbyte|wasm|startup|metastore|jetstream|cluster] [bench flags]
# Each benchmark prints its figures beside the physical limit or a peer measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p hstream-server -p hstream-bench
scripts/build-plugins.sh >/dev/null
exec target/release/hstream-bench "${@:-all}"
