#!/usr/bin/env bash
# Runs every test of the project, first installing what the tests need if it is missing:
#   - a Python venv (.venv) with the official HStreamDB client (hstreamdb 0.5.0), zstandard, and
#     openapi-spec-validator (checks the REST API's OpenAPI document), pexpect (drives the SQL
#     shell through a pseudo-terminal), prometheus-client (its strict OpenMetrics parser checks
#     GET /metrics), and uv, with which the test servers install the Airbyte connector packages
#     (airbyte-source-faker, airbyte-source-hardcoded-records) into .airbyte/ on first use;
#   - PostgreSQL's and MariaDB's server binaries (Debian packages), for the CDC tests;
#   - Mosquitto (Debian package), for the MQTT tests;
#   - libssl-dev and pkg-config (Debian packages), for librdkafka's TLS (the kafka connectors);
#   - podman, runc and debootstrap (Debian packages), to build Airbyte connector images and run
#     them (not run, with the reason printed, where that cannot work);
#   - the wasm32-wasip2 Rust target, to build the WASM plugins of plugins/ (scripts/build-plugins.sh).
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/venv.sh

# PostgreSQL server binaries for the CDC tests (they run their own throw-away instances with
# initdb + pg_ctl on free ports; the machine's own server is left alone).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing PostgreSQL"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-contrib
fi

# MariaDB server binaries for the binlog CDC tests (same: throw-away instances on free ports).
if ! command -v mariadbd >/dev/null 2>&1 || ! command -v mariadb-install-db >/dev/null 2>&1; then
  echo "==> installing MariaDB"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mariadb-server mariadb-client
fi

# Mosquitto for the MQTT tests (throw-away brokers on free ports; the machine's own is left alone).
if ! { [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1; } || ! command -v mosquitto_pub >/dev/null 2>&1; then
  echo "==> installing Mosquitto"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients
fi

# nats-server for the JetStream store's tests (throw-away servers on free ports; the machine's
# own NATS on 4222 is left alone).
if ! [ -x /usr/sbin/nats-server ] && ! command -v nats-server >/dev/null 2>&1; then
  echo "==> installing nats-server"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
fi

# The kafka connectors link librdkafka (built from rdkafka's bundled sources) against Debian's
# OpenSSL: its headers, found with pkg-config. The Kafka tests need no broker package: their
# broker is librdkafka's mock cluster, in the test process.
if ! pkg-config --exists openssl 2>/dev/null; then
  echo "==> installing libssl-dev and pkg-config (librdkafka's TLS)"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q libssl-dev pkg-config
fi

# openssl makes the certificate authorities of the TLS tests (Mosquitto, etcd).
if ! command -v openssl >/dev/null 2>&1; then
  echo "==> installing openssl"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl
fi

# etcd for the etcd MetaStore's contract tests (a throw-away member on free ports).
if ! [ -x /usr/bin/etcd ] && ! command -v etcd >/dev/null 2>&1; then
  echo "==> installing etcd"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server
fi

# iptables for the cluster's partition test (it drops one node's gossip on loopback).
if ! command -v iptables >/dev/null 2>&1; then
  echo "==> installing iptables"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables
fi

if [ "${CI:-}" = "true" ]; then
  cargo fmt --all --check
  # Clippy lints while the build compiles, instead of in a check pass of its own: cargo clippy is
  # rustc with clippy's lints added (clippy-driver), set as the wrapper of the workspace's own crates
  # only, so the dependencies are compiled once and every crate of ours is compiled once, linted
  # (clippy::all and every rustc warning denied, as `cargo clippy --all-targets -- -D warnings`)
  # and code-generated in the same pass. The wrapper stays set for every cargo command below, so
  # none of them recompiles. (A separate `cargo clippy` compiled every dependency a second time, in
  # check mode: about 12 of the cold run's minutes.) clippy-driver builds with MIR optimisations
  # off, as clippy always compiles: the tests run on such binaries. A missing clippy fails here
  # rather than leaving an empty wrapper, which cargo would take as none (no lints at all).
  clippy_driver=$(command -v clippy-driver) || { echo "clippy-driver is missing: rustup component add clippy"; exit 1; }
  "$clippy_driver" --version >/dev/null
  export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
  export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
fi

# The crates' top-level modules must not import each other in a circle (issue 19).
python3 scripts/module-cycles.py server/src runtime/src connectors/src sql/src

# The Airbyte image tests run published connectors (airbyte-source-faker,
# airbyte-source-hardcoded-records and airbyte-destination-ailake, pinned as in
# integration-tests/tests/server/airbyte*.rs) inside real images that scripts/airbyte-image.sh
# builds without a registry: a Debian base made with debootstrap, the package pip-installed (in a
# container: an image that builds also runs). The base and the connector layers stay in podman's
# store, so only a machine's first run builds them (about four minutes). Where podman, runc or
# debootstrap cannot be installed, or the images cannot be built, the tests are not run and the
# reason is printed. Podman's settings here (containers.conf) apply to these steps only.
containers_conf="$PWD/integration-tests/container/containers.conf"
if [ $# -eq 0 ] && { ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; }; then
  echo "==> installing podman, runc and debootstrap (Airbyte image tests)"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap; } \
    || echo "==> could not install podman or debootstrap (the image tests will not run)"
fi
image_tests=""
if [ $# -gt 0 ]; then
  echo "==> a filtered run: the Airbyte image tests (airbyte_images::) are not part of it"
elif why=$(export CONTAINERS_CONF="$containers_conf"; for r in airbyte-source-faker==7.2.1 airbyte-source-hardcoded-records==0.0.48 \
      airbyte-destination-ailake==0.1.16; do
      scripts/airbyte-image.sh "$r" || exit 1
    done 2>&1); then
  image_tests=yes
else
  echo "==> NOT RUN (not passed): airbyte_images:: (Airbyte connector images): $why"
fi

# The WASM plugins the runtime's and the end-to-end tests load (example and test plugins, built
# to wasm32-wasip2; the target is added if missing).
# (Not linted: the plugins are a workspace of their own, built for wasm32.)
env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS scripts/build-plugins.sh >/dev/null

# End-to-end tests start the real server binary. Every target at once, tests too: the binaries are
# then built with the same features as the tests' (dev-dependencies included), so cargo test below
# compiles nothing again.
cargo build --workspace --all-targets
cargo test --workspace "$@"
if [ $# -eq 0 ]; then
  # The end-to-end suites that matter for metadata, again with the server on the etcd MetaStore
  # (one throw-away etcd for the run, a key prefix per server).
  echo "==> streams, subscriptions, connectors, REST, CLI and metrics end to end on the etcd MetaStore"
  HSTREAM_TEST_METASTORE=etcd cargo test --workspace --test server -- streams:: subscriptions:: connectors:: rest:: cli:: metrics::
  # And with the records on the JetStream store: a throw-away three-node JetStream cluster for
  # the run, a prefix per server, every stream with three replicas (--min-replication-factor 3).
  # Exactly-once appends too: a source's tags ride in the stored batches, on any store.
  echo "==> streams, subscriptions, connectors, exactly-once, REST, CLI and metrics end to end on a three-node JetStream cluster (R3)"
  HSTREAM_TEST_STORE=nats3 cargo test --workspace --test server -- streams:: subscriptions:: connectors:: exactly_once::generator rest:: cli:: metrics::
fi
if [ -n "$image_tests" ]; then
  echo "==> Airbyte connector images (podman; the docker CLI against podman's API socket)"
  skip=()
  if ! command -v docker >/dev/null 2>&1; then
    echo "==> NOT RUN (not passed): airbyte_images::images_run_through_the_docker_cli_against_podmans_socket and airbyte_images::docker_image_killed_mid_sync_resumes_and_its_leftover_is_removed: the docker CLI is not installed"
    skip=(--skip images_run_through_the_docker_cli --skip docker_image_killed)
  fi
  CONTAINERS_CONF="$containers_conf" \
    cargo test --workspace --test server -- --ignored airbyte_images:: "${skip[@]}"
fi
# The Kafka tests above ran against librdkafka's mock cluster (a Kafka-protocol broker inside
# librdkafka, not Apache Kafka); the live tier runs only against a real broker.
if [ -n "${HSTREAM_TEST_KAFKA:-}" ]; then
  echo "==> kafka live tier against $HSTREAM_TEST_KAFKA"
  cargo test --workspace --test server -- --ignored kafka::live::
else
  echo "==> NOT RUN (not passed): kafka::live::kafka_live_broker_round_trip (live Kafka tier): set HSTREAM_TEST_KAFKA=host:port to run it"
fi
