#!/usr/bin/env bash
# Builds localhost/hstream-test-airbyte-source:1, a busybox image whose ENTRYPOINT (and
# AIRBYTE_ENTRYPOINT) is airbyte_source.sh, with podman (no registry needed: `podman import`).
# Prints why and exits non-zero when podman cannot build or run it here.
set -euo pipefail
cd "$(dirname "$0")"
export CONTAINERS_CONF="$PWD/containers.conf"
command -v podman >/dev/null || { echo "podman is not installed"; exit 1; }
busybox=$(command -v busybox) || { echo "busybox is not installed"; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/etc"
cp "$busybox" "$root/bin/busybox"
for t in sh sed cat; do ln -s busybox "$root/bin/$t"; done
cp airbyte_source.sh "$root/airbyte_source.sh"
echo "hstream-test-airbyte-source" > "$root/etc/hstream-image"
tar -C "$root" -c . | podman import -q \
  --change 'ENTRYPOINT ["/bin/sh", "/airbyte_source.sh"]' \
  --change 'ENV AIRBYTE_ENTRYPOINT="/bin/sh /airbyte_source.sh"' \
  - localhost/hstream-test-airbyte-source:1 >/dev/null
out=$(podman run --rm -i --network host localhost/hstream-test-airbyte-source:1 spec 2>&1) || { echo "podman cannot run an image here: $out"; exit 1; }
case "$out" in *'"SPEC"'*) ;; *) echo "the image did not answer spec: $out"; exit 1 ;; esac
