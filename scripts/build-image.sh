#!/usr/bin/env bash
# Builds the relay's container image on a machine without any container registry (docs/image.md):
#   1. the base: Debian 12 with python3 and its venv module, made from Debian packages with
#      mmdebstrap and imported with `podman import` (kept and reused while its recipe is unchanged);
#   2. the image: the repository's Dockerfile with BASE_IMAGE set to that base (`podman build`).
# Needs root (or a rootless podman set up by you), podman, buildah's build support and mmdebstrap
# (scripts/install-system-deps.sh installs them) and access to the Debian mirror, PyPI and crates.io.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/build-image.sh [--tag NAME] [--rebuild-base] [--quiet]

  --tag NAME       the image's name (default localhost/iot-tunnel-relay:dev, or $RELAY_IMAGE)
  --rebuild-base   make the Debian base again even if one with the same recipe exists
  --quiet          only print the image's name at the end (the build log goes to stderr)

Environment: DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR (default deb.debian.org), CA_BUNDLE (the CA
certificates pip and cargo trust inside the build, passed as a build secret, never stored in the
image; default /etc/ssl/certs/ca-certificates.crt), CONTAINERS_CONF (default
deploy/podman/containers.conf: runc, ulimits podman may set here).
EOF
}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TAG=${RELAY_IMAGE:-localhost/iot-tunnel-relay:dev}
REBUILD_BASE=0
QUIET=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG=${2:?--tag needs a name}; shift 2 ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    --quiet) QUIET=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

for tool in podman mmdebstrap; do
  if ! command -v "$tool" >/dev/null; then
    echo "build-image.sh: $tool is missing (scripts/install-system-deps.sh installs it)" >&2
    exit 1
  fi
done
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/deploy/podman/containers.conf}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [ $QUIET -eq 1 ]; then exec 3>&1 1>&2; else exec 3>&1; fi

# The base: what python:3.11-slim-bookworm gives the Dockerfile (python3 >= 3.11 with venv, CA
# certificates, apt for the build stage), from Debian's own packages. No recommends, no docs,
# man pages or translations; merged /usr without the usrmerge package (which pulls in perl).
MMDEBSTRAP_ARGS=(
  --variant=minbase
  '--include=python3,python3-venv,ca-certificates'
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --aptopt='APT::Install-Recommends "false"'
  --aptopt='Acquire::Languages "none"'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  bookworm -
  "deb $MIRROR bookworm main"
  "deb $MIRROR bookworm-updates main"
  "deb $SECURITY_MIRROR bookworm-security main"
)
RECIPE=$(printf '%s\n' "${MMDEBSTRAP_ARGS[@]}" | sha256sum | cut -c1-12)
BASE=localhost/iot-tunnel-relay-base:bookworm-$RECIPE

if [ $REBUILD_BASE -eq 1 ] || ! podman image exists "$BASE"; then
  echo "== base $BASE: mmdebstrap (Debian packages) -> podman import"
  # The tar goes straight into podman; pipefail stops here if mmdebstrap fails.
  mmdebstrap --quiet "${MMDEBSTRAP_ARGS[@]}" \
    | podman import --change 'CMD ["python3"]' --message "mmdebstrap: ${MMDEBSTRAP_ARGS[*]:0:3}" - "$BASE" >/dev/null
else
  echo "== base $BASE: already built"
fi

echo "== image $TAG: podman build (BASE_IMAGE=$BASE)"
SECRET=()
if [ -s "$CA_BUNDLE" ]; then
  SECRET=(--secret "id=cacert,src=$CA_BUNDLE")
fi
podman build --build-arg "BASE_IMAGE=$BASE" "${SECRET[@]}" --tag "$TAG" --file "$ROOT/Dockerfile" "$ROOT"
SIZE=$(podman image inspect --format '{{.Size}}' "$TAG")
echo "== $TAG: $(( (SIZE + 500000) / 1000000 )) MB"
echo "$TAG" >&3
