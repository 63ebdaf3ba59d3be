#!/usr/bin/env bash
# Builds an Airbyte connector image from a published PyPI package, with no image registry: the way
# Airbyte's own Python connector images are made (a Python base image, the connector installed
# into it with pip, the connector as ENTRYPOINT and AIRBYTE_ENTRYPOINT, run as a non-root user
# `airbyte`, uid 1000), but with the base made here from Debian's packages.
#
#   scripts/airbyte-image.sh airbyte-source-faker==7.2.1
#     -> localhost/airbyte/source-faker:7.2.1 (podman's image store; `docker` sees it through
#        podman's API socket)
#
# Two layers:
#   1. the base, localhost/hstream-airbyte-python:bookworm-<recipe>: a Debian bookworm root file
#      system made by debootstrap (minbase, python3, python3-venv, ca-certificates) and imported
#      with `podman import`. Made once per machine (about a minute); later builds find it in
#      podman's store.
#   2. the connector: `podman build` FROM the base, the pinned requirement pip-installed into
#      /airbyte/venv; its console script is `<name>` (or `airbyte-<name>`, linked as `<name>`).
#      Podman caches the layer, so building the same requirement again takes seconds.
# The build trusts the host's CA bundle (mounted for the build step only, not kept in the image),
# so a TLS-intercepting proxy the host trusts also works for pip inside the build.
#
# Needs podman, and root and debootstrap for the base image (once per machine). Prints why and exits 1 when something is
# missing or cannot run here. Prints the image name on success.
# Environment: DEBIAN_MIRROR (default: the first `URIs:` of apt's debian.sources, else
# http://deb.debian.org/debian), CONTAINERS_CONF (podman's settings, passed through).
set -euo pipefail

usage() { echo "usage: $0 airbyte-<source|destination>-<name>==<version>" >&2; exit 2; }
[ $# -eq 1 ] || usage
req="$1"
case "$req" in
  airbyte-source-*==* | airbyte-destination-*==*) ;;
  *) echo "$req: give a pinned Airbyte connector package, e.g. airbyte-source-faker==7.2.1"; exit 1 ;;
esac
pkg="${req%%==*}"
version="${req#*==}"
exe="${pkg#airbyte-}"
case "$exe$version" in *[!A-Za-z0-9._-]*) echo "$req: unexpected characters"; exit 1 ;; esac
image="localhost/airbyte/$exe:$version"

# The recipe's version: a change to how the base is made gets a new base tag.
recipe=2
base="localhost/hstream-airbyte-python:bookworm-$recipe"

command -v podman >/dev/null || { echo "podman is not installed"; exit 1; }

if ! podman image exists "$base"; then
  [ "$(id -u)" = 0 ] || { echo "making the base image needs root (debootstrap)"; exit 1; }
  command -v debootstrap >/dev/null || { echo "debootstrap is not installed"; exit 1; }
  mirror="${DEBIAN_MIRROR:-}"
  if [ -z "$mirror" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources | head -1)
  fi
  mirror="${mirror:-http://deb.debian.org/debian}"
  root=$(mktemp -d /var/tmp/hstream-airbyte-base.XXXXXX)
  trap 'rm -rf --one-file-system "$root"' EXIT
  echo "==> making the base image $base (debootstrap bookworm from $mirror)" >&2
  if ! out=$(debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$root" "$mirror" 2>&1); then
    echo "debootstrap failed: $(echo "$out" | tail -3 | tr '\n' ' ')"
    exit 1
  fi
  # Airbyte's images run the connector as `airbyte` (uid 1000), from /airbyte.
  chroot "$root" useradd --uid 1000 --user-group --create-home --shell /bin/sh airbyte
  mkdir -p "$root/airbyte"
  chroot "$root" chown airbyte:airbyte /airbyte
  # What a connector never needs: downloaded packages, package lists, documentation.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar --numeric-owner -C "$root" -c . | podman import -q \
    --change 'WORKDIR /airbyte' --change 'CMD ["/bin/sh"]' - "$base" >/dev/null
  rm -rf --one-file-system "$root"
  trap - EXIT
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cat > "$ctx/Containerfile" <<EOF
FROM $base
ARG PIP_CERT
RUN python3 -m venv /airbyte/venv \\
 && /airbyte/venv/bin/pip install --no-cache-dir --disable-pip-version-check --quiet '$req' \\
 && if [ ! -x /airbyte/venv/bin/$exe ] && [ -x /airbyte/venv/bin/airbyte-$exe ]; then \\
      ln -s airbyte-$exe /airbyte/venv/bin/$exe; fi \\
 && test -x /airbyte/venv/bin/$exe
ENV AIRBYTE_ENTRYPOINT="/airbyte/venv/bin/$exe"
ENTRYPOINT ["/airbyte/venv/bin/$exe"]
LABEL io.airbyte.name="airbyte/$exe" io.airbyte.version="$version"
USER airbyte
EOF
ca=/etc/ssl/certs/ca-certificates.crt
mounts=()
[ -r "$ca" ] && mounts=(-v "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
if ! out=$(podman build -q --network host "${mounts[@]}" -t "$image" "$ctx" 2>&1); then
  echo "podman build of $image failed: $(echo "$out" | tail -3 | tr '\n' ' ')"
  exit 1
fi
echo "$image"
