#!/usr/bin/env bash
# Creates (or completes) .venv: the official HStreamDB client (hstreamdb 0.5.0), zstandard,
# openapi-spec-validator, pexpect, prometheus-client and uv (which installs the Airbyte
# connectors the tests and benchmarks run). Used by scripts/test.sh and scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import hstreamdb, zstandard, openapi_spec_validator, pexpect, prometheus_client" 2>/dev/null \
  || [ ! -x .venv/bin/uv ]; then
  echo "==> creating .venv with the hstreamdb client"
  python3 -m venv .venv
  # hstreamdb 0.5.0 is an sdist whose build needs pkg_resources (setuptools < 70).
  .venv/bin/pip install -q "setuptools<70" wheel
  .venv/bin/pip install -q --no-build-isolation hstreamdb==0.5.0 zstandard openapi-spec-validator pexpect \
    prometheus-client==0.21.1 uv==0.13.9
fi
