"""The relay's container image, built here without a registry (scripts/build-image.sh, once per
test session), and the replica rig of tests/scale with each replica a container of that image:
on the host network (loopback addresses), with the environment, user, read-only root file
system and writable volumes of deploy/k8s/base/deployment.yaml, next to the real Redis,
mosquitto and haproxy."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.device.conftest import Mosquitto
from tests.scale.conftest import BRIDGE_SECRET, HEARTBEAT_INTERVAL, TOKEN, Replica, Rig

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
BUILD_SCRIPT = ROOT / "scripts" / "build-image.sh"
DEPLOYMENT = ROOT / "deploy" / "k8s" / "base" / "deployment.yaml"
KUSTOMIZATION = ROOT / "deploy" / "k8s" / "base" / "kustomization.yaml"
# One tag per checkout: test sessions of several worktrees on one machine do not swap images.
IMAGE = f"localhost/iot-tunnel-relay:test-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}"
# The base (about a minute) and the image (apt, pip and a release build of the Rust codec: a few
# minutes on two busy cores) on a fresh machine; a rebuild from podman's layer cache takes seconds.
BUILD_TIMEOUT = 1500


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)})
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def deployment() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(DEPLOYMENT.read_text()) if d and d["kind"] == "Deployment"]
    return doc


def relay_container() -> dict:
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    return container


def manifest_env() -> dict[str, str | None]:
    """What a pod's relay container sees: the ConfigMap's settings, then the container's `env`
    (which wins); None for the downward API's values, which the rig fills in."""
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    (config,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "relay-config"]
    env: dict[str, str | None] = dict(item.split("=", 1) for item in config["literals"])
    env.update({e["name"]: e.get("value") for e in relay_container()["env"]})
    return env


@pytest.fixture(scope="session")
def image() -> str:
    """The image, built once per session by the same script as `make image`."""
    if os.environ.get("RELAY_CODEC") == "python":
        pytest.skip("the image ships the Rust codec whatever RELAY_CODEC says: the Rust pass tests it")
    missing = [tool for tool in ("podman", "mmdebstrap", "runc") if shutil.which(tool) is None]
    reason = (f"missing {', '.join(missing)} (scripts/install-system-deps.sh installs them)" if missing
              else "podman runs the image here as root only" if os.geteuid() != 0 else None)
    if reason:
        if os.environ.get("RELAY_EXPECT_IMAGE") == "1":
            pytest.fail(f"RELAY_EXPECT_IMAGE=1 but the image cannot be built: {reason}")
        pytest.skip(reason)
    result = subprocess.run(["bash", str(BUILD_SCRIPT), "--tag", IMAGE, "--quiet"], capture_output=True,
                            text=True, timeout=BUILD_TIMEOUT, env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)})
    assert result.returncode == 0, f"scripts/build-image.sh failed:\n{result.stderr[-6000:]}"
    assert result.stdout.strip() == IMAGE
    return IMAGE


class ContainerReplica(Replica):
    """A replica as a container of the image, locked down as deploy/k8s runs it: its user, a
    read-only root with an emptyDir-like /tmp, the token file mounted read-only, no capabilities."""

    def __init__(self, name: str, folder: Path, redis_url: str, public_url: str, *, image: str,
                 mqtt_url: str, tokens_file: Path, bridge_folder: Path) -> None:
        super().__init__(name, folder, redis_url, public_url)
        self.image = image
        self.mqtt_url = mqtt_url
        self.tokens_file = tokens_file
        self.bridge_folder = bridge_folder
        self.container = f"relay-test-{name}-{uuid.uuid4().hex[:8]}"
        self.started = False
        self.drain_seconds: str | None = "1"   # the rig's (tests/scale); None: the manifest's

    def environment(self) -> dict[str, str]:
        """The manifest's variables, with this machine's addresses instead of the pod's."""
        env = manifest_env()
        here = {
            # loopback instead of the pod's 0.0.0.0: the containers share the machine's network
            "RELAY_HOST": "127.0.0.1", "RELAY_PORT": str(self.port),
            "RELAY_INTERNAL_HOST": "127.0.0.1", "RELAY_INTERNAL_PORT": str(self.internal_port),
            "RELAY_REPLICA_ID": self.name, "POD_IP": "127.0.0.1",
            "RELAY_INTERNAL_ADDRESS": f"127.0.0.1:{self.internal_port}",
            "RELAY_STORE_URL": self.redis_url, "RELAY_MQTT_URL": self.mqtt_url, "RELAY_PUBLIC_URL": self.public_url,
        }
        if self.drain_seconds is not None:
            here["RELAY_DRAIN_SECONDS"] = self.drain_seconds
        assert set(here) <= set(env), f"not set by deploy/k8s: {set(here) - set(env)}"
        env.update(here)
        env.update(RELAY_RECONCILE_INTERVAL="0.5", RELAY_HEARTBEAT_INTERVAL=HEARTBEAT_INTERVAL)
        assert None not in env.values(), env
        return env  # type: ignore[return-value]

    def start(self) -> ContainerReplica:
        manifest = relay_container()
        pod = deployment()["spec"]["template"]["spec"]["securityContext"]
        env = self.environment()
        tmp_mount = next(m for m in manifest["volumeMounts"] if m["name"] == "tmp")["mountPath"]
        tokens_mount = next(m for m in manifest["volumeMounts"] if m["name"] == "api-tokens")["mountPath"]
        assert env["RELAY_API_TOKENS_FILE"].startswith(tokens_mount + "/")
        bridge_mount = next(m for m in manifest["volumeMounts"] if m["name"] == "bridge-secret")["mountPath"]
        assert env["RELAY_BRIDGE_SECRET_FILE"].startswith(bridge_mount + "/")
        args = ["run", "--detach", "--name", self.container, "--network", "host",
                "--user", f"{pod['runAsUser']}:{pod['runAsGroup']}", "--group-add", str(pod["fsGroup"]),
                "--read-only", "--read-only-tmpfs=false", "--tmpfs", f"{tmp_mount}:rw,size=64m,mode=1777",
                "--volume", f"{self.tokens_file}:{env['RELAY_API_TOKENS_FILE']}:ro",
                "--volume", f"{self.bridge_folder}:{bridge_mount}:ro",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        podman(*args, self.image, *manifest["args"])
        self.started = True
        self._wait_until_up()
        return self

    def probe_urls(self) -> dict[str, str]:
        """The Deployment's startup, liveness and readiness probes, on this replica's ports."""
        manifest = relay_container()
        ports = {p["name"]: {8080: self.port, 8081: self.internal_port}[p["containerPort"]] for p in manifest["ports"]}
        return {kind: f"http://127.0.0.1:{ports[manifest[kind]['httpGet']['port']]}{manifest[kind]['httpGet']['path']}"
                for kind in ("startupProbe", "livenessProbe", "readinessProbe")}

    def _wait_until_up(self, timeout: float = 90) -> None:
        """Up as the kubelet sees it: every probe of the manifest answers 200."""
        urls = self.probe_urls()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"container {self.name} exited:\n{self.logs()[-4000:]}")
            if all(_answers_200(url) for url in urls.values()):
                return
            time.sleep(0.2)
        raise AssertionError(f"container {self.name} not up after {timeout} s:\n{self.logs()[-4000:]}")

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.container, check=False)
        return state.stdout.strip() == "true"

    def logs(self) -> str:
        out = podman("logs", self.container, check=False)
        return out.stdout + out.stderr

    def signal(self, sig: int) -> None:
        podman("kill", "--signal", signal.Signals(sig).name, self.container)

    def wait(self, timeout: float = 30) -> int:
        return int(podman("wait", self.container, timeout=timeout).stdout.strip())

    def stop(self) -> None:
        if not self.started:
            return
        if self.running():
            podman("stop", "--time", "15", self.container, timeout=60, check=False)
        (self.folder / f"{self.name}.log").write_text(self.logs())
        podman("rm", "--force", self.container, check=False)
        self.started = False


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):   # refused, or an HTTP error status
        return False


class ContainerRig(Rig):
    def __init__(self, folder: Path, image: str) -> None:
        self.image = image
        self.mosquitto = Mosquitto(folder)
        self.mosquitto.start()
        # As the Secret's volume gives it: owned by root, readable by the relay's group only.
        self.tokens_file = folder / "api-tokens.txt"
        self.tokens_file.write_text(f"p1:rig:{TOKEN}\n")
        pod = deployment()["spec"]["template"]["spec"]
        os.chown(self.tokens_file, 0, pod["securityContext"]["fsGroup"])
        secret = next(v for v in pod["volumes"] if v["name"] == "api-tokens")["secret"]
        os.chmod(self.tokens_file, secret["defaultMode"])
        # The bridge secret, as its Secret's volume gives it (the replicas' shared secret of tests/scale)
        bridge = next(v for v in pod["volumes"] if v["name"] == "bridge-secret")["secret"]
        self.bridge_folder = folder / "bridge-secret"
        self.bridge_folder.mkdir()
        bridge_file = self.bridge_folder / bridge["items"][0]["path"]
        bridge_file.write_text(BRIDGE_SECRET + "\n")
        os.chown(bridge_file, 0, pod["securityContext"]["fsGroup"])
        os.chmod(bridge_file, bridge["defaultMode"])
        self.replicas = []
        self.haproxy = None
        try:
            super().__init__(folder)
        except BaseException:
            self.stop()
            raise

    def new_replica(self, name: str, public_url: str) -> Replica:
        replica = ContainerReplica(name, self.folder, self.redis.url, public_url, image=self.image,
                                   mqtt_url=self.mosquitto.url, tokens_file=self.tokens_file,
                                   bridge_folder=self.bridge_folder)
        self.replicas.append(replica)  # so that stop() finds it should a later one fail to start
        return replica

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.stop()
        for replica in self.replicas:
            replica.stop()
        if getattr(self, "redis", None) is not None:
            self.redis.stop()
        self.mosquitto.stop()


@pytest.fixture
def rig(tmp_path, image):
    rig = ContainerRig(tmp_path, image)
    yield rig
    rig.stop()
