"""`relay exec` and `relay ssh` with a device that acts as Huawei's C device SDK does
(tests/sdk_device.py): its early `connect_response` without a status, its `disconnect` 400
for a failed login, its output in escaped 2048-byte reads, its 408 when the shell ends."""

from __future__ import annotations

import pytest

from tests.client.conftest import DEVICE, SSH_PASSWORD
from tests.client.test_remote_cli import Pty, tunnels
from tests.sdk_device import SdkDevice


@pytest.fixture
async def sdk_fleet(fleet, mosquitto, sshd):  # type: ignore[no-untyped-def]
    relay, cli, _ = fleet
    device = SdkDevice(sshd.port)
    await device.follow_notifies(mosquitto.port, DEVICE)
    try:
        yield relay, cli, device
    finally:
        await device.stop()


async def test_exec_on_an_sdk_device_prints_the_output_and_status(sdk_fleet):
    relay, cli, device = sdk_fleet
    code, out, err = await cli.run("exec", DEVICE, "--", "printf 'a b\\n'; exit 3")
    assert (code, out) == (3, "a b\n"), err
    assert "login failed" not in err
    assert [t["status"] for t in await tunnels(relay)] == ["CLOSED"]
    assert any('"connect_response"' in m and '"data"' not in m for m in device.sent)   # the SDK's answer


async def test_exec_on_an_sdk_device_with_a_wrong_password(sdk_fleet):
    _, cli, _ = sdk_fleet
    code, out, err = await cli.run("exec", DEVICE, "--", "true", env={"RELAY_SSH_PASSWORD": "wrong"})
    assert (code, out) == (255, "")
    assert "login failed (400): WssClientListenerOnMsg: Create SSH channel failed" in err


async def test_exec_on_an_sdk_device_gets_control_dense_output_whole(sdk_fleet):
    # 5000 control characters: the SDK's reads of 2048 bytes become ~12.4 KB messages
    _, cli, device = sdk_fleet
    code, out, err = await cli.run("exec", DEVICE, "-q", "--",
                                   "head -c 5000 /dev/zero | tr '\\0' '\\1'; echo; echo done")
    assert code == 0, err
    assert out == "\x01" * 5000 + "\ndone\n"
    assert max(len(m.encode("utf-8", "surrogateescape")) for m in device.sent) > 10240   # what the relay had to split
    assert 1009 not in device.close_codes


async def test_ssh_on_an_sdk_device(sdk_fleet):
    relay, cli, device = sdk_fleet
    term = Pty(cli.env, DEVICE)
    try:
        await term.expect("$ ")
        term.type("echo hello-$((40+2))\r")
        await term.expect("\rhello-42\r\n")
        term.type("exit\r")
        assert await term.wait() == 0   # the SDK does not say the shell's status
        assert b"the device closed the SSH session (408)" in term.seen
    finally:
        term.close()
    assert [t["status"] for t in await tunnels(relay)] == ["CLOSED"]


async def test_ssh_on_an_sdk_device_with_a_wrong_password(sdk_fleet):
    _, cli, _ = sdk_fleet
    term = Pty({**cli.env, "RELAY_SSH_PASSWORD": "wrong"}, DEVICE)
    try:
        assert await term.wait(timeout=40) == 255
        assert b"login failed (400): WssClientListenerOnMsg: Create SSH channel failed" in term.seen
        assert SSH_PASSWORD.encode() not in term.seen
    finally:
        term.close()


async def test_exec_on_an_sdk_device_survives_characters_cut_between_its_reads(sdk_fleet):
    # 3-byte characters: the SDK's reads end inside one now and then, sending invalid UTF-8
    _, cli, device = sdk_fleet
    # one stream of 9600 bytes: the SDK's full 2048-byte reads advance 2 characters' bytes off
    # the grid each time, so at least two of them end inside a character
    code, out, err = await cli.run("exec", DEVICE, "-q", "--", "yes 中文输出 | head -n 800 | tr -d '\\n'; echo; echo done")
    assert code == 0, err
    body, tail = out[:-len("\ndone\n")], out[-len("\ndone\n"):]
    assert tail == "\ndone\n"
    assert set(body) <= set("中文输出\ufffd") and body.count("中文输出") >= 790
    cut = [m for m in device.sent if not m.isascii() and "\udc80" <= max(m) <= "\udcff"]
    assert cut, "no read cut a character: the test proves nothing"
    assert 1007 not in device.close_codes
