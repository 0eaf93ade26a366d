#!/usr/bin/env bash
# Offline checks of the deployment files (no cluster, no Docker engine needed):
#
#   1. renders every overlay of deploy/k8s/overlays/ (and production with the optional
#      tunnel-affinity component) with `kubectl kustomize`, or the `kustomize` binary;
#   2. validates every rendered object with `kubernetes-validate --strict` (unknown fields
#      are errors) against the Kubernetes versions in KUBERNETES_VERSIONS;
#   3. lints deploy/ with yamllint (deploy/.yamllint);
#   4. checks deploy/local/haproxy.cfg with `haproxy -c` and deploy/local/run-rig.sh with
#      `bash -n` (and shellcheck, hadolint for the Dockerfile, when they are installed).
#
#   scripts/validate-manifests.sh [--out DIR]     DIR receives the rendered <overlay>.yaml
#
# Without kubectl or kustomize the overlays cannot be rendered: the script then validates the
# plain resource files of deploy/k8s/base and deploy/k8s/components directly, and says so.
# Needs the PyPI packages kubernetes-validate and yamllint (in the virtualenv, or for the
# Python in $PYTHON). KUBERNETES_VERSIONS overrides the versions validated against.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S="$ROOT/deploy/k8s"
# The newest version kubernetes-validate 1.37 ships schemas for, and an older one still in
# wide use (the manifests use nothing newer than it).
KUBERNETES_VERSIONS="${KUBERNETES_VERSIONS:-1.37.0 1.30.0}"

OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
KEEP_OUT=1
if [ -z "$OUT" ]; then OUT="$(mktemp -d)"; KEEP_OUT=0; fi
mkdir -p "$OUT"
SCRATCH="$(mktemp -d)"
cleanup() { rm -rf "$SCRATCH"; if [ "$KEEP_OUT" = 0 ]; then rm -rf "$OUT"; fi; }
trap cleanup EXIT

if [ -n "${PYTHON:-}" ]; then :
elif [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"
else PYTHON="$(command -v python3)"; fi
for module in kubernetes_validate yamllint; do
  "$PYTHON" -c "import $module" 2>/dev/null \
    || { echo "validate-manifests: the Python package ${module//_/-} is missing for $PYTHON (pip install kubernetes-validate yamllint)" >&2; exit 1; }
done

step() { printf '\n== %s\n' "$*"; }
failures=0
fail() { echo "FAILED: $*" >&2; failures=$((failures + 1)); }

# --- 1. render ----------------------------------------------------------------------------------
# RENDER=none forces the fallback below (to try it on a machine that has kubectl).
render=""
if [ "${RENDER:-}" = none ]; then :
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  render="kubectl kustomize"
elif command -v kustomize >/dev/null 2>&1; then
  render="kustomize build"
fi

rendered=()
if [ -n "$render" ]; then
  step "render with '$render'"
  for dir in "$K8S"/overlays/*/; do
    name="$(basename "$dir")"
    if $render "$dir" > "$OUT/$name.yaml"; then
      rendered+=("$OUT/$name.yaml"); echo "overlays/$name: $(grep -c '^kind:' "$OUT/$name.yaml") objects"
    else
      fail "rendering overlays/$name"
    fi
  done
  # The optional component, on top of production (kustomize wants relative paths).
  combo="$SCRATCH/production-tunnel-affinity"
  mkdir -p "$combo"
  rel="$(realpath --relative-to="$combo" "$K8S")"
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\ncomponents:\n  - %s\n' \
    "$rel/overlays/production" "$rel/components/tunnel-affinity" > "$combo/kustomization.yaml"
  if $render "$combo" > "$OUT/production-tunnel-affinity.yaml"; then
    rendered+=("$OUT/production-tunnel-affinity.yaml"); echo "overlays/production + components/tunnel-affinity: ok"
  else
    fail "rendering production with components/tunnel-affinity"
  fi
else
  step "no kubectl or kustomize: validating the plain resource files instead of rendered overlays"
  echo "(install kubectl to render the overlays; Debian's kubernetes-client 1.20 is too old for components)"
  while IFS= read -r file; do rendered+=("$file"); done < <(
    find "$K8S/base" "$K8S/components" -name '*.yaml' ! -name kustomization.yaml | sort)
fi

# --- 2. schemas ---------------------------------------------------------------------------------
for version in $KUBERNETES_VERSIONS; do
  step "kubernetes-validate --strict against Kubernetes $version"
  if [ ${#rendered[@]} -gt 0 ] && "$PYTHON" -m kubernetes_validate --strict --quiet -k "$version" "${rendered[@]}"; then
    echo "${#rendered[@]} file(s) valid"
  else
    fail "kubernetes-validate against $version"
  fi
done

# --- 3. yamllint --------------------------------------------------------------------------------
step "yamllint deploy/"
if "$PYTHON" -m yamllint --strict -c "$ROOT/deploy/.yamllint" "$ROOT/deploy"; then echo ok; else fail yamllint; fi

# --- 4. the local rig and the Dockerfile --------------------------------------------------------
step "deploy/local"
HAPROXY="$(command -v haproxy || { [ -x /usr/sbin/haproxy ] && echo /usr/sbin/haproxy; } || true)"
if [ -n "$HAPROXY" ]; then
  if "$HAPROXY" -c -q -f "$ROOT/deploy/local/haproxy.cfg"; then echo "haproxy.cfg: valid"; else fail "haproxy -c"; fi
else
  echo "haproxy not installed: haproxy.cfg not checked"
fi
if bash -n "$ROOT/deploy/local/run-rig.sh"; then echo "run-rig.sh: syntax ok"; else fail "bash -n run-rig.sh"; fi
if command -v shellcheck >/dev/null 2>&1; then
  if shellcheck "$ROOT/deploy/local/run-rig.sh" "$0"; then echo "shellcheck: ok"; else fail shellcheck; fi
fi
if command -v hadolint >/dev/null 2>&1; then
  if hadolint "$ROOT/Dockerfile"; then echo "hadolint: ok"; else fail hadolint; fi
else
  echo "hadolint not installed: Dockerfile not linted (tests/deploy checks what it copies)"
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "validate-manifests: $failures check(s) failed" >&2
  exit 1
fi
echo "validate-manifests: all checks passed"
