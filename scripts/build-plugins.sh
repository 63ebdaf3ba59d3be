#!/usr/bin/env bash
# Builds the WASM plugins (plugins/: the SDK's example and test plugins) to wasm32-wasip2
# components in plugins/target/wasm32-wasip2/release/*.wasm, adding the target if missing.
set -euo pipefail
cd "$(dirname "$0")/../plugins"
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "==> adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi
cargo build -q --release --target wasm32-wasip2 --workspace
ls target/wasm32-wasip2/release/*.wasm
