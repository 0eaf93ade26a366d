"""deploy/local/run-rig.sh as an operator runs it: Redis, three replicas and haproxy (the
shipped haproxy.cfg, its ports moved by RIG_BASE_PORT). A replica that exits leaves the rig
running on the others, and `kill -HUP` starts it again."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.test_serve import clean_env

pytestmark = pytest.mark.timeout(240)

RIG = Path(__file__).resolve().parents[2] / "deploy" / "local" / "run-rig.sh"
TOKEN = "rig-script-token-0123456789abcdef"
OFFSETS = (0, 1, 2, 3, 9, 11, 12, 13)   # haproxy, r1-r3, stats, internal ports of r1-r3


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_block() -> tuple[int, int]:
    """A base port with all the rig's ports free, and a free port for Redis."""
    for _ in range(200):
        base = random.randrange(20000, 60000, 20)
        if all(port_free(base + offset) for offset in (*OFFSETS, 19)):
            return base, base + 19
    pytest.skip("no free block of ports for the rig")


class RigOutput:
    """The rig's output, read by a thread so that every wait here is bounded."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 90) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            if self.proc.poll() is not None and not self.thread.is_alive():
                break   # the rig is gone and everything it printed has been read
            time.sleep(0.1)
        raise AssertionError(f"the rig never printed {pattern!r}:\n" + "\n".join(self.lines))


def status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"X-Auth-Token": token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def eventually(check, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_rig_keeps_running_when_a_replica_exits_and_restarts_it(tmp_path):
    relay = Path(sys.executable).parent / "relay"
    if not relay.exists():
        pytest.skip("the relay command is not installed next to this Python (make setup)")
    base, redis_port = free_block()
    env = clean_env(RELAY=str(relay), RIG_BASE_PORT=str(base), RIG_REDIS_PORT=str(redis_port), RIG_TOKEN=TOKEN,
                    RIG_DRAIN_SECONDS="1", TMPDIR=str(tmp_path))
    proc = subprocess.Popen(["bash", str(RIG)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = RigOutput(proc)
    pids: dict[str, int] = {}
    try:
        found = out.wait_for(r"pids: redis (\d+), r1 (\d+), r2 (\d+), r3 (\d+), haproxy (\d+)")
        pids = dict(zip(("redis", "r1", "r2", "r3", "haproxy"), map(int, found.groups())))
        lb = f"http://127.0.0.1:{base}/v5/iot/default/tunnels"
        assert status(lb, TOKEN) == 200

        # stop r2, as the rig's own hint says, to watch it drain
        os.kill(pids["r2"], signal.SIGTERM)
        out.wait_for(r"run-rig: r2 exited \(status 0\); the rig goes on")
        assert proc.poll() is None, "the rig stopped when one replica did"
        for replica in (1, 3):
            assert status(f"http://127.0.0.1:{base + 10 + replica}/readyz") == 200
        assert status(f"http://127.0.0.1:{base + 12}/readyz") == 0
        for _ in range(6):   # through haproxy: the others take every request
            assert status(lb, TOKEN) == 200
        assert alive(pids["r1"]) and alive(pids["r3"]) and alive(pids["haproxy"])

        # kill -HUP starts it again
        proc.send_signal(signal.SIGHUP)
        pids["r2"] = int(out.wait_for(r"run-rig: r2 started again \(pid (\d+)\)").group(1))
        eventually(lambda: status(f"http://127.0.0.1:{base + 12}/readyz") == 200)
        assert proc.poll() is None

        # Ctrl-C (here SIGTERM) stops everything it started
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
        for name, pid in pids.items():
            assert not alive(pid), f"{name} outlived the rig"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.stdout:
            proc.stdout.close()
