"""The deployment files: scripts/validate-manifests.sh (render every overlay, strict schema
validation, yamllint, haproxy -c) must pass, and the rendered manifests must say what the
shutdown, health and scaling design of docs/scaling.md needs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml  # PyYAML, a dependency of yamllint

# Rendering and validating takes a few seconds; the first test that needs it pays for it.
pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCRIPT = ROOT / "scripts" / "validate-manifests.sh"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
LABELS = {"app.kubernetes.io/name": "iot-tunnel-relay", "app.kubernetes.io/component": "relay"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Runs the validation script once; the objects of each rendered overlay by name (or, on
    a machine without kubectl, where the script validates the plain files, those of base/)."""
    out = tmp_path_factory.mktemp("rendered")
    result = subprocess.run(["bash", str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                            timeout=170, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, f"validate-manifests.sh failed:\n{result.stdout}\n{result.stderr}"
    files = {p.stem: p for p in out.glob("*.yaml")}
    if not files:  # no kubectl: the script validated the files of base/ directly
        docs = [d for p in sorted((K8S / "base").glob("*.yaml")) if p.name != "kustomization.yaml"
                for d in yaml.safe_load_all(p.read_text())]
        return {name: docs for name in OVERLAYS}
    assert set(OVERLAYS) | {"production-tunnel-affinity"} == set(files)
    return {name: [d for d in yaml.safe_load_all(p.read_text()) if d] for name, p in files.items()}


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def relay_container(docs: list[dict]) -> dict:
    (container,) = find(docs, "Deployment", "relay")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_rolls_without_unavailability(rendered, overlay):
    spec = find(rendered[overlay], "Deployment", "relay")["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert spec["selector"]["matchLabels"] == LABELS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_pre_stop_and_drain(rendered, overlay):
    pod = find(rendered[overlay], "Deployment", "relay")["spec"]["template"]["spec"]
    container = relay_container(rendered[overlay])
    drain = float(env_of(container)["RELAY_DRAIN_SECONDS"]["value"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    # The relay also waits up to 5 s for its tasks and 5 s for aiohttp after the drain.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_internal_port(rendered, overlay):
    container = relay_container(rendered[overlay])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "internal": 8081}
    env = env_of(container)
    assert env["RELAY_PORT"]["value"] == "8080"
    assert env["RELAY_INTERNAL_PORT"]["value"] == "8081"
    # The relay binds its internal port to 127.0.0.1 unless told otherwise: probes would fail.
    assert env["RELAY_INTERNAL_HOST"]["value"] == "0.0.0.0"
    assert env["RELAY_HOST"]["value"] == "0.0.0.0"
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")):
        get = container[probe]["httpGet"]
        assert (get["path"], ports[get["port"]]) == (path, 8081), probe


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replica_identity_comes_from_the_downward_api(rendered, overlay):
    container = relay_container(rendered[overlay])
    names = [e["name"] for e in container["env"]]
    env = env_of(container)
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["RELAY_INTERNAL_ADDRESS"]["value"] == "$(POD_IP):8081"
    # $(VAR) is only expanded from variables defined earlier in the list.
    assert names.index("POD_IP") < names.index("RELAY_INTERNAL_ADDRESS")
    assert env["RELAY_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_is_locked_down(rendered, overlay):
    pod = find(rendered[overlay], "Deployment", "relay")["spec"]["template"]["spec"]
    container = relay_container(rendered[overlay])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001 == _dockerfile_user()
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/etc/relay"]]["secret"]["secretName"] == "relay-api-tokens"
    assert env_of(container)["RELAY_API_TOKENS_FILE"]["value"] == "/etc/relay/api-tokens.txt"
    # the replicas' bridge secret: a file from a Secret, not a value in the ConfigMap or Redis
    assert volumes[mounts["/etc/relay-bridge"]]["secret"]["secretName"] == "relay-bridge-secret"
    assert env_of(container)["RELAY_BRIDGE_SECRET_FILE"]["value"] == "/etc/relay-bridge/bridge-secret"
    assert "RELAY_BRIDGE_SECRET" not in env_of(container)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_keeps_websockets_open(rendered, overlay):
    ingress = find(rendered[overlay], "Ingress", "relay")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert "nginx.ingress.kubernetes.io/upstream-hash-by" not in annotations  # optional component only
    # a dead or draining pod still in the endpoints costs the client nothing: the next pod is tried at once
    assert annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"].split() == ["error", "timeout", "http_503"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-next-upstream-tries"]) >= 2
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-connect-timeout"]) <= 5
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "relay", "port": {"name": "http"}}


def test_tunnel_affinity_hashes_on_the_tunnel_id(rendered):
    if "production-tunnel-affinity" not in rendered:
        pytest.skip("overlays were not rendered (no kubectl)")
    annotations = find(rendered["production-tunnel-affinity"], "Ingress", "relay")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$relay_tunnel_id"
    # The map the component documents captures the tunnel id of both WebSocket paths.
    text = (K8S / "components" / "tunnel-affinity" / "kustomization.yaml").read_text()
    pattern = re.search(r'"~(\^/v5/iot/tunnels/.*?)"', text).group(1).replace("(?<tunnel>", "(?P<tunnel>")
    for side in ("device", "source"):
        assert re.match(pattern, f"/v5/iot/tunnels/abc-123/{side}-connect").group("tunnel") == "abc-123"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_budget_and_autoscaler(rendered, overlay):
    docs = rendered[overlay]
    public = find(docs, "Service", "relay")["spec"]
    assert [(p["port"], p["targetPort"]) for p in public["ports"]] == [(8080, "http")]
    internal = find(docs, "Service", "relay-internal")["spec"]
    assert internal["clusterIP"] == "None"
    assert [(p["port"], p["targetPort"]) for p in internal["ports"]] == [(8081, "internal")]
    assert find(docs, "PodDisruptionBudget", "relay")["spec"]["minAvailable"] == 2
    hpa = find(docs, "HorizontalPodAutoscaler", "relay")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_internal_port_only_from_the_relay_and_the_metrics_scraper(rendered, overlay):
    """The internal port listens on 0.0.0.0 in the pod: bridges and /metrics (issue 15, finding 9)."""
    spec = find(rendered[overlay], "NetworkPolicy", "relay")["spec"]
    rules = {r["ports"][0]["port"]: r for r in spec["ingress"]}
    assert "from" not in rules[8080]
    relay_pods, scraper = rules[8081]["from"]
    assert relay_pods == {"podSelector": {"matchLabels": LABELS}}
    # one peer that must match both selectors (a namespace AND a pod), not either
    assert set(scraper) == {"namespaceSelector", "podSelector"} and scraper["podSelector"]["matchLabels"]
    egress_ports = {p["port"] for r in spec["egress"] for p in r["ports"]}
    assert {8081, 6379, 1883, 8883, 53} <= egress_ports


def _settings(docs: list[dict]) -> dict[str, str]:
    ref = relay_container(docs)["envFrom"][0]["configMapRef"]["name"]
    return find(docs, "ConfigMap", ref)["data"]


def test_dev_runs_its_own_redis_and_broker(rendered):
    docs = rendered["dev"]
    if not any(d["kind"] == "Namespace" for d in docs):
        pytest.skip("overlays were not rendered (no kubectl)")
    settings = _settings(docs)
    assert settings["RELAY_STORE_URL"] == "redis://relay-redis:6379/0"
    assert settings["RELAY_MQTT_URL"] == "mqtt://relay-mqtt:1883"
    redis = find(docs, "Deployment", "relay-redis")
    assert redis["metadata"]["annotations"]["iot-tunnel-relay/development-only"] == "true"
    assert "--appendonly" in redis["spec"]["template"]["spec"]["containers"][0]["args"]
    find(docs, "Service", "relay-redis")
    find(docs, "Deployment", "relay-mqtt")
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"iot-tunnel-relay-dev"}


def test_production_uses_external_services_and_no_example_secret(rendered):
    docs = rendered["production"]
    if not any(d["kind"] == "Namespace" for d in docs):
        pytest.skip("overlays were not rendered (no kubectl)")
    settings = _settings(docs)
    assert settings["RELAY_STORE_URL"].startswith(("redis://", "rediss://"))
    assert "relay-redis" not in settings["RELAY_STORE_URL"]
    assert settings["RELAY_PUBLIC_URL"].startswith("https://")
    assert not [d for d in docs if d["kind"] == "Secret"], "the example Secrets must not reach production"
    assert not [d for d in docs if d["metadata"]["name"] in ("relay-redis", "relay-mqtt")]
    assert find(docs, "Ingress", "relay")["spec"]["tls"]


def _dockerfile_user() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    return int(users[-1].split(":")[0])


def _runtime_stage() -> dict[str, list[str]]:
    """The instructions of the Dockerfile's last stage (the image), continuation lines joined:
    {"USER": ["10001:10001"], "ENV": ["A=1 B=2"], ...}."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    stage: dict[str, list[str]] = {}
    for line in lines[last_from:]:
        word, _, rest = line.partition(" ")
        stage.setdefault(word, []).append(rest.strip())
    return stage


def test_dockerfile_builds_from_what_the_context_holds():
    """What the Dockerfile copies is in the build context (tests/image builds it)."""
    text = (ROOT / "Dockerfile").read_text()
    kept = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    sources = [src for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M) for src in line.split()[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src.rstrip("/") in kept, f"{src} is excluded by .dockerignore"
    assert _dockerfile_user() != 0


def test_dockerfile_takes_its_base_as_an_argument():
    """The public base by default; scripts/build-image.sh passes one made from Debian packages.
    Both stages start from it (the virtualenv links to the base's python3)."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert "BASE_IMAGE=$BASE" in (ROOT / "scripts" / "build-image.sh").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_matches_the_image(rendered, overlay):
    """The Dockerfile's user, ports, entrypoint and environment are what the pod assumes, and
    with a read-only root everything the relay writes is on one of the pod's volumes."""
    stage = _runtime_stage()
    pod = find(rendered[overlay], "Deployment", "relay")["spec"]["template"]["spec"]
    container = relay_container(rendered[overlay])
    (user,) = stage["USER"]
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    (exposed,) = stage["EXPOSE"]
    assert sorted(int(p) for p in exposed.split()) == sorted(p["containerPort"] for p in container["ports"])
    # The pod gives only `args`: they replace CMD after the ENTRYPOINT, which ends in `relay`.
    assert "command" not in container
    assert json.loads(stage["ENTRYPOINT"][0])[-1] == "relay"
    assert json.loads(stage["CMD"][0]) == container["args"]
    image_env = dict(item.split("=", 1) for line in stage["ENV"] for item in line.split())
    env = env_of(container)
    for name, value in image_env.items():
        if name in env:
            assert env[name]["value"] == value, name
    # Without RELAY_STORE_URL the relay writes its SQLite file at RELAY_DB: on a writable volume.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    db_dir = str(Path(env["RELAY_DB"]["value"]).parent)
    assert db_dir in mounts and not mounts[db_dir].get("readOnly")
    tokens_dir = str(Path(env["RELAY_API_TOKENS_FILE"]["value"]).parent)
    assert mounts[tokens_dir]["readOnly"] is True


def test_local_rig_matches_haproxy_config():
    config = (ROOT / "deploy" / "local" / "haproxy.cfg").read_text()
    script = (ROOT / "deploy" / "local" / "run-rig.sh").read_text()
    assert "bind 127.0.0.1:18080" in config and "balance roundrobin" in config
    assert re.search(r"timeout tunnel 1h", config)
    assert "http-check send meth GET uri /readyz" in config
    # a request sent to a dead replica before the checks notice is retried on another one
    assert "option redispatch 1" in config and re.search(r"^\s*retry-on conn-failure\b", config, re.M)
    servers = re.findall(r"server r\d 127\.0\.0\.1:(\d+) check port (\d+)", config)
    assert servers == [("18081", "18091"), ("18082", "18092"), ("18083", "18093")]
    assert "PORTS=(18081 18082 18083)" in script and "INTERNAL_PORTS=(18091 18092 18093)" in script
    assert "LB_PORT=18080" in script and "REDIS_PORT=16379" in script
