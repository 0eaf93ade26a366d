"""What a command that waits for a device says (issue 18): what it waits for, why the device
may not come, and progress while it waits (relay/client/waiting.py)."""

from __future__ import annotations

import asyncio
import signal
import sys

from relay.client.waiting import gave_up, still_waiting, why_waiting
from tests.client.conftest import DEVICE


def test_each_notify_state_has_its_own_reason():
    pending = why_waiting("d1", {"tunnel_id": "t1", "status": "OPEN", "notify_status": "PENDING"})
    delivered = why_waiting("d1", {"tunnel_id": "t1", "status": "OPEN", "notify_status": "DELIVERED"})
    no_broker = why_waiting("d1", {"tunnel_id": "t1", "status": "OPEN", "notify_status": None})
    unknown = why_waiting("d1", None)
    assert "not yet handed the tunnel's notify to its MQTT broker" in pending
    assert "handed the notify to its MQTT broker, but d1 has not connected its end" in delivered
    assert "`relay agent --device-id d1`" in delivered and "`relay demo-device d1`" in delivered
    assert "no MQTT broker" in no_broker and "relay tunnel show t1" in no_broker
    assert "`relay agent --device-id d1`" in unknown
    assert len({pending, delivered, no_broker, unknown}) == 4
    assert why_waiting("d1", {"tunnel_id": "t1", "status": "CLOSED", "notify_status": None}) == "the tunnel is closed"
    assert still_waiting("d1", 10.2, 60, None).startswith("still waiting for d1 (10 s of 60 s): ")
    assert gave_up("d1", 60, None).startswith("the device did not connect within 60 s: ")


async def test_exec_says_what_it_waits_for_while_it_waits(fleet):
    _, cli, _ = fleet   # a broker, no agent: the notify is handed to the broker and nobody comes
    code, _, err = await cli.run("exec", DEVICE, "--wait", "12", "--", "true")
    assert code == 255
    assert f"still waiting for {DEVICE} (10 s of 12 s): the relay handed the notify to its MQTT broker, " \
           f"but {DEVICE} has not connected its end" in err
    assert "the device did not connect within 12 s: the relay handed the notify" in err


async def test_forward_says_what_it_waits_for_while_it_waits(fleet):
    _, cli, _ = fleet
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "forward", DEVICE, "--listen", "127.0.0.1:0", "--wait", "12",
        env=cli.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
    text = err.decode()
    assert proc.returncode == 255, text
    assert f"still waiting for {DEVICE} (10 s of 12 s): the relay handed the notify to its MQTT broker" in text
    assert "the device did not connect within 12 s: the relay handed the notify" in text
