"""The README's quick start, run as written (issue 18): its code blocks are read from README.md
and run in a fresh directory, so the README cannot drift from what works.

What differs from a user's machine, and only that: the relay listens on a free port instead of
8080 (the test sets RELAY_URL to it, and `relay forward`'s 2222 becomes a free port), the
directory's `.venv` is a link to the suite's virtualenv, and the relay is started as `make run`
starts it (`.venv/bin/relay serve`) instead of through make."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from aiohttp.test_utils import unused_port

from tests.test_serve import clean_env

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
MANAGED_BROKER_PORT = 1883


def quick_start_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_the_quick_start_has_the_blocks_this_test_runs():
    blocks = quick_start_blocks()
    assert len(blocks) == 5, blocks
    assert blocks[0] == "make run"
    # `make run` is `.venv/bin/relay serve`, which this test runs itself
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: setup\n\t\$\(VENV\)/bin/relay serve\n", makefile, re.M)
    assert blocks[1].splitlines()[-1].startswith("relay demo-device ")
    assert blocks[3].startswith("relay ssh ") and blocks[4].startswith("relay forward ")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as a server binds it: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            assert proc.poll() is None, "the relay exited"
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _read_until(fd: int, needle: bytes, proc: subprocess.Popen, timeout: float, seen: bytearray) -> None:
    """Read `fd` into `seen` until `needle` appears (the process may exit meanwhile)."""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} did not come within {timeout} s; got: {bytes(seen)[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:   # EIO: the pty's other side is gone
                chunk = b""
            if not chunk:
                raise AssertionError(f"{needle!r} never came (end of output): {bytes(seen)[-2000:]!r}")
            seen += chunk


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        raise AssertionError("a quick-start command did not stop within 20 s") from None


@pytest.mark.timeout(240)
def test_the_quick_start_runs_as_written(tmp_path):
    if not _port_free(MANAGED_BROKER_PORT):
        pytest.fail(f"port {MANAGED_BROKER_PORT} is taken: the quick start runs the relay's own MQTT broker there")
    _, device, operator, ssh, forward = quick_start_blocks()
    # the last two blocks are typed in terminal 3 after its commands: its PATH line holds for them
    path_line = operator.splitlines()[0]
    assert path_line.startswith("export PATH=")
    ssh, forward = f"{path_line}\n{ssh}", f"{path_line}\n{forward}"
    (tmp_path / ".venv").symlink_to(VENV)
    port = unused_port()
    env = clean_env(RELAY_URL=f"http://127.0.0.1:{port}")
    del env["RELAY_MQTT_URL"]   # the relay's default: it runs its own broker, as after `make run`
    env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin"   # `relay` is found only through the README's own PATH line
    env.pop("SHELL", None)

    def bash(script: str, **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        return subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                                start_new_session=True, **kw)

    relay = subprocess.Popen([str(tmp_path / ".venv/bin/relay"), "serve", "--port", str(port)], cwd=tmp_path,
                             env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started: list[subprocess.Popen] = [relay]
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", relay)

        # terminal 2: the demo device, until it says it is online
        demo = bash(device, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(demo)
        assert demo.stdout is not None
        _read_until(demo.stdout.fileno(), b"Ctrl-C stops it", demo, 60, bytearray())

        # terminal 3: the operator's commands, each as written
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", operator], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        uname = os.uname()
        assert f"Linux {uname.nodename} {uname.release}" in done.stdout
        assert "demo-1" in done.stdout and "OPEN" in done.stdout   # the tunnel list shows the kept tunnel

        # `relay ssh` on a terminal: the password prompt, a command, exit
        leader, follower = os.openpty()
        shell = bash(ssh, stdin=follower, stdout=follower, stderr=follower)
        started.append(shell)
        os.close(follower)
        seen = bytearray()
        try:
            _read_until(leader, b"password: ", shell, 60, seen)
            password = (tmp_path / "var/demo-device.password").read_text().strip()
            os.write(leader, password.encode() + b"\r")
            _read_until(leader, b"logged in", shell, 60, seen)
            os.write(leader, b"echo quick-$((40+2))\r")
            _read_until(leader, b"quick-42", shell, 30, seen)
            os.write(leader, b"exit\r")
            assert shell.wait(30) == 0, bytes(seen)[-2000:]
        finally:
            os.close(leader)

        # `relay forward`: its local port reaches the device's SSH server (2222: a free port here)
        local = unused_port()
        fwd = bash(forward.replace("127.0.0.1:2222", f"127.0.0.1:{local}"), stdin=subprocess.DEVNULL,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(fwd)
        assert fwd.stdout is not None
        _read_until(fwd.stdout.fileno(), b"forwarding ", fwd, 60, bytearray())
        with socket.create_connection(("127.0.0.1", local), timeout=15) as conn:
            conn.settimeout(15)
            assert conn.recv(64).startswith(b"SSH-2.0-")
        assert _stop(fwd) == 0

        assert _stop(demo) in (0, -signal.SIGINT, 130)
        assert not (tmp_path / "var/demo-device.password").exists()   # the password dies with the demo
    finally:
        for proc in reversed(started):
            if proc.poll() is None:
                _stop(proc)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    assert relay.returncode == 0   # Ctrl-C stops the relay cleanly, as the README says
