#!/usr/bin/env bash
# Runs the benchmarks (release build). Usage: scripts/bench.sh [all|append|subscribe|connectors|pg-cdc|mysql-cdc|mqtt|kafka|airbyte|wasm|queries|startup|metastore|jetstream|cluster] [bench flags]
# Each benchmark prints its figures beside the physical limit or a peer measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
# The server exactly as the README builds it (built alone, its dependencies' features are
# unified as in that build, so an earlier `cargo run --release -p hstream-server` is reused),
# then the benchmark driver.
cargo build --release -p hstream-server
cargo build --release -p hstream-bench
# The Airbyte benchmark runs connectors installed with the test venv's uv, and the image
# scripts/airbyte-image.sh builds (podman, with the tests' settings).
export CONTAINERS_CONF="$PWD/integration-tests/container/containers.conf"
scripts/venv.sh
scripts/build-plugins.sh >/dev/null
exec target/release/hstream-bench "${@:-all}"
