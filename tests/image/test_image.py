"""The built image as Kubernetes runs it (deploy/k8s/base/deployment.yaml): its user, ports,
entrypoint and arguments, the preStop command, a read-only root, nothing of the build stage,
and SIGTERM at any moment of its life."""

from __future__ import annotations

import json
import signal

import pytest

from tests.image.conftest import BUILD_TIMEOUT, deployment, podman, relay_container
from tests.servers import free_port

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 180)

# What `podman run` adds for the pod's securityContext (readOnlyRootFilesystem, no privilege
# escalation, no capabilities) and its /tmp emptyDir.
LOCKED_DOWN = ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m,mode=1777",
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "host"]


def config_of(image: str) -> dict:
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    return info["Config"]


def test_the_image_is_what_the_deployment_expects(image):
    config = config_of(image)
    pod = deployment()["spec"]["template"]["spec"]
    container = relay_container()
    assert config["User"] == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert set(config["ExposedPorts"]) == {f"{p['containerPort']}/{p['protocol'].lower()}" for p in container["ports"]}
    # The manifest gives only `args`: they go after the image's ENTRYPOINT, replacing its CMD.
    assert config["Entrypoint"][-1] == "relay" and config["Cmd"] == container["args"]
    env = dict(item.split("=", 1) for item in config["Env"])
    for item in container["env"]:
        if item["name"] in env:
            assert env[item["name"]] == item["value"], item["name"]


def run(image: str, *args: str, entrypoint: str | None = None, timeout: float = 60):
    pod = deployment()["spec"]["template"]["spec"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    options = ["--entrypoint", entrypoint] if entrypoint else []
    return podman("run", "--rm", *LOCKED_DOWN, "--user", user, *options, image, *args, timeout=timeout, check=False)


def test_runs_locked_down_as_the_relay_user_with_the_rust_codec(image):
    result = run(image, "-c", "import os, relay.codec; print(os.getuid(), os.getgid(), relay.codec.IMPLEMENTATION)",
                 entrypoint="python3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["10001", "10001", "rust"]
    # the root file system is read-only; only the volumes of the manifest are writable
    result = run(image, "-c", "touch /opt/relay/x || echo refused; touch /tmp/x && echo tmp-ok", entrypoint="sh")
    assert result.stdout.split() == ["refused", "tmp-ok"], result.stderr


def test_the_build_stage_stays_behind(image):
    # no compiler, no Rust toolchain, no sources, no wheels, no CA bundle of the build machine
    result = run(image, "-c", "for c in cc gcc rustc cargo pip; do command -v $c; done; "
                 "ls -d /src /wheels /opt/build /run/secrets/cacert 2>/dev/null; exit 0", entrypoint="sh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []


def test_the_pre_stop_command_runs_in_the_image(image):
    command = relay_container()["lifecycle"]["preStop"]["exec"]["command"]
    result = run(image, *command[1:-1], "0", entrypoint=command[0])   # same command, without the wait
    assert result.returncode == 0, result.stderr


def test_help_is_the_relays(image):
    result = run(image, "serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "RELAY_<OPTION>" in result.stdout


def test_sigterm_drains_and_exits_zero(rig):
    """`podman stop` sends SIGTERM (as the kubelet does after preStop) and SIGKILL only after
    its timeout: exit code 0, not 137, is the relay's own clean end after its drain."""
    replica = rig.replicas[0]
    podman("stop", "--time", "60", replica.container, timeout=120)
    assert replica.wait() == 0
    assert "shutting down" in replica.logs()


def test_sigterm_while_the_relay_starts_stops_the_container(image, tmp_path):
    """A SIGTERM before the relay has set its handler ends the container too: tini is PID 1 and
    passes it on. (A process that is PID 1 itself has no default action for SIGTERM: the relay
    would ignore it and serve on until SIGKILL.) The relay's start is held here by a
    sitecustomize module, which Python runs before the relay's code (long enough for a busy
    machine; the SIGTERM ends it)."""
    hold = tmp_path / "hold"
    hold.mkdir(mode=0o755)
    (hold / "sitecustomize.py").write_text("import time\ntime.sleep(120)\n")
    (hold / "sitecustomize.py").chmod(0o644)
    name = f"relay-test-early-{tmp_path.name[-12:]}"
    podman("run", "--detach", "--name", name, *LOCKED_DOWN, "--volume", f"{hold}:/hold:ro",
           "--env", "PYTHONPATH=/hold", "--env", "RELAY_MQTT_URL=none", "--env", "RELAY_HOST=127.0.0.1",
           "--env", f"RELAY_PORT={free_port()}", "--env", "RELAY_DB=/tmp/relay.db",
           "--env", "RELAY_API_TOKENS=p1:early:early-token-0123456789abcdef", image)
    try:
        podman("kill", "--signal", "TERM", name)
        # tini exits as its child did: killed by SIGTERM, 128 + 15
        assert podman("wait", name, timeout=60).stdout.strip() == str(128 + signal.SIGTERM)
    finally:
        podman("rm", "--force", name, check=False)
