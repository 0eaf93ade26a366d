"""Every long-running command runs on uvloop (issue 17), and RELAY_NO_UVLOOP=1 opts out.

Each command runs in its own process up to the point where it starts its event loop: the
loop it gets there is reported and the command's own coroutine is closed unrun, so nothing
listens or connects. No timing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_serve import clean_env

# Runs `relay ARGS...` with asyncio.run watched: the first call reports the type of the loop
# asyncio.run really makes under the policy in force, then stops the process.
DRIVER = """
import asyncio, sys
from relay import cli

real_run = asyncio.run

def watched(main, **kwargs):
    main.close()

    async def report():
        loop = type(asyncio.get_running_loop())
        print(f"loop {loop.__module__}.{loop.__qualname__}", flush=True)

    real_run(report(), **kwargs)
    raise SystemExit(0)

asyncio.run = watched
sys.exit(cli.main(sys.argv[1:]))
"""

TOKEN = "p1:tester:" + "t" * 32

COMMANDS = {
    "serve": ["serve", "--db", "relay.db", "--port", "0", "--mqtt-url", "none"],
    "agent": ["agent", "--device-id", "dev-1", "--mqtt-url", "mqtt://127.0.0.1:9"],
    "demo-device": ["demo-device", "dev-1", "--mqtt-url", "mqtt://127.0.0.1:9", "--mqtt-username", "dev-1",
                    "--password-file", "demo.password"],
    "forward": ["forward", "dev-1", "--url", "http://127.0.0.1:9"],
    "forward --protocol aws": ["forward", "dev-1", "--protocol", "aws", "--url", "http://127.0.0.1:9"],
    "ssh": ["ssh", "dev-1", "-l", "pi", "--url", "http://127.0.0.1:9"],
    "exec": ["exec", "dev-1", "-l", "pi", "--url", "http://127.0.0.1:9", "--", "true"],
    "localproxy source": ["localproxy", "-e", "http://127.0.0.1:9", "-s", "0"],
    "localproxy destination": ["localproxy", "-e", "http://127.0.0.1:9", "-d", "SSH=22"],
}

ENV = {"RELAY_API_TOKENS": TOKEN, "RELAY_API_TOKEN": "t" * 32, "RELAY_SSH_PASSWORD": "pw",
       "RELAY_AGENT_MQTT_PASSWORD": "pw", "AWSIOT_TUNNEL_ACCESS_TOKEN": "a" * 32}


def loop_of(tmp_path, argv: list[str], **env: str) -> str:
    proc = subprocess.run([sys.executable, "-c", DRIVER, *argv], cwd=tmp_path, env=clean_env(**ENV, **env),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("loop ")]
    assert proc.returncode == 0 and len(lines) == 1, (proc.returncode, proc.stdout, proc.stderr)
    return lines[0].removeprefix("loop ")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_long_running_command_runs_on_uvloop(tmp_path, command):
    assert loop_of(tmp_path, COMMANDS[command]) == "uvloop.Loop"


def test_relay_no_uvloop_keeps_the_standard_loop(tmp_path):
    assert loop_of(tmp_path, COMMANDS["agent"], RELAY_NO_UVLOOP="1").startswith("asyncio.")


def test_main_leaves_the_callers_event_loop_policy_as_it_was():
    """main() in a process of its caller (the tests do it) does not leave uvloop behind."""
    import asyncio

    from relay import cli

    before = asyncio.get_event_loop_policy()
    assert cli.main(["localproxy"]) == 2   # a usage error, after the loop was chosen
    assert asyncio.get_event_loop_policy() is before
