#!/usr/bin/env bash
# Debian packages the test suite starts on loopback. Installs only what is missing.
set -euo pipefail
# mosquitto (+ clients): the MQTT broker and a plain subscriber for tests/device;
# openssh-server (+ client, for ssh-keygen): the device's SSH server in tests/device.
# redis-server and haproxy: the multi-replica rig in tests/scale; openssl: test certificates.
# chromium and a font: the web console's browser tests (driven by Playwright).
# shellcheck: tests/deploy (scripts/validate-manifests.sh) lints deploy/local/run-rig.sh.
PACKAGES=(mosquitto mosquitto-clients openssh-server openssh-client redis-server haproxy openssl
          chromium fonts-dejavu-core shellcheck
          iproute2   # network namespaces for tests/faults
          podman runc mmdebstrap)  # tests/image: the image built from Debian packages, run as containers
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install these Debian packages first (as root): ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
