"""`relay exec` and `relay ssh` end to end: the relay (in process), mosquitto, the device
agent, OpenSSH's sshd, and the `relay` command in a real process (`relay ssh` on a pty)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import platform
import struct
import subprocess
import sys
import termios

from tests.client.conftest import DEVICE, SSH_PASSWORD
from tests.device.conftest import eventually
import contextlib


async def tunnels(relay, status: str | None = None) -> list[dict]:  # type: ignore[no-untyped-def]
    query = f"?device_id={DEVICE}" + (f"&status={status}" if status else "")
    code, body = await relay.call("GET", f"/v5/iot/proj-a/tunnels{query}")
    assert code == 200
    return body["tunnels"]


async def test_exec_prints_the_real_output_and_status(fleet):
    relay, cli, start_agent = fleet
    await start_agent()
    code, out, err = await cli.run("exec", DEVICE, "--", "uname", "-a")
    assert code == 0, err
    uname = platform.uname()
    assert out.startswith(f"Linux {uname.node} {uname.release} ") and out.endswith("\n") and out.count("\n") == 1
    assert "waiting for the device..." in err and "logged in" in err
    assert SSH_PASSWORD not in out + err
    assert [t["status"] for t in await tunnels(relay)] == ["CLOSED"]   # closed on exit

    assert (await cli.run("exec", DEVICE, "-q", "--", "false"))[:2] == (1, "")
    code, out, err = await cli.run("exec", DEVICE, "-q", "--", "printf 'a b\\n'; echo err >&2; exit 3")
    assert (code, out, err) == (3, "a b\nerr\n", "")   # stderr shares the terminal
    code, out, _ = await cli.run("exec", DEVICE, "-q", "--", "if then")   # a syntax error is the command's
    assert code == 2 and "syntax error" in out


async def test_exec_keep_then_reuse_the_open_tunnel(fleet):
    relay, cli, start_agent = fleet
    await start_agent()
    code, out, err = await cli.run("exec", DEVICE, "--keep", "--", "echo", "one")
    assert (code, out) == (0, "one\n") and "stays open" in err
    (kept,) = await tunnels(relay, "OPEN")
    code, out, err = await cli.run("exec", DEVICE, "--", "echo", "two")
    assert (code, out) == (0, "two\n"), err
    assert f"reusing the open tunnel {kept['tunnel_id']}" in err
    # a command never closes a tunnel it did not create, unless asked (issue 18)
    assert "was open before this command and stays open" in err
    assert [t["status"] for t in await tunnels(relay)] == ["OPEN"]
    code, out, err = await cli.run("exec", DEVICE, "--close", "--", "echo", "three")
    assert (code, out) == (0, "three\n"), err
    assert [t["status"] for t in await tunnels(relay)] == ["CLOSED"]


async def test_exec_on_an_offline_device_is_a_clear_error(fleet, mosquitto):
    relay, cli, _ = fleet
    await mosquitto.publish(f"$oc/devices/{DEVICE}/sys/presence", "offline", retain=True)
    from tests.device.test_delivery import relay_notifier
    await eventually(lambda: relay_notifier(relay).presence.state(DEVICE).value == "offline")
    code, out, err = await cli.run("exec", DEVICE, "--", "true")
    assert code == 255 and out == ""
    assert "relay: TUNNEL.409003:" in err and DEVICE in err
    code, _, err = await cli.run("tunnel", "create", DEVICE)
    assert code == 1 and "TUNNEL.409003" in err


async def test_exec_when_no_device_comes(fleet):
    relay, cli, _ = fleet   # no agent
    code, _, err = await cli.run("exec", DEVICE, "--wait", "1", "--", "true")
    assert code == 255 and "the device did not connect within 1 s" in err
    assert [t["status"] for t in await tunnels(relay)] == ["CLOSED"]


async def test_exec_with_a_wrong_password(fleet):
    _, cli, start_agent = fleet
    await start_agent()
    code, _, err = await cli.run("exec", DEVICE, "--", "true", env={"RELAY_SSH_PASSWORD": "wrong"})
    assert code == 255 and "login failed (401)" in err


async def test_password_from_stdin(fleet):
    _, cli, start_agent = fleet
    await start_agent()
    code, out, err = await cli.run("exec", DEVICE, "--password-stdin", "--", "id", "-un",
                                   input=SSH_PASSWORD + "\n", env={"RELAY_SSH_PASSWORD": "wrong"})
    assert (code, out) == (0, "relaytest\n"), err


async def test_exec_filters_what_reaches_past_the_screen(fleet):
    """Issue 15, finding 3: the device's own output may colour and move, not write the
    operator's clipboard or ask the terminal to answer into stdin; --raw-terminal passes all."""
    _, cli, start_agent = fleet
    await start_agent()
    command = r"printf '\033[1;32mgreen\033[0m \033]52;c;ZWNobyBwd25lZA==\007\033P$qm\033\\\033[21tdone\n'"
    code, out, err = await cli.run("exec", DEVICE, "-q", "--", command)
    assert (code, out) == (0, "\x1b[1;32mgreen\x1b[0m done\n"), err
    code, out, err = await cli.run("exec", DEVICE, "-q", "--raw-terminal", "--", command)
    assert (code, out) == (0, "\x1b[1;32mgreen\x1b[0m \x1b]52;c;ZWNobyBwd25lZA==\x07\x1bP$qm\x1b\\\x1b[21tdone\n"), err


# -- relay ssh on a pty ------------------------------------------------------------------------


class Pty:
    """`relay ssh` with a pseudo-terminal as its stdin, stdout and stderr."""

    def __init__(self, env: dict[str, str], *args: str, size: tuple[int, int] = (30, 100)) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
        self.proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "ssh", *args], env=env,
                                     stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        os.set_blocking(self.master, False)
        self.seen = b""

    async def expect(self, text: str, timeout: float = 20) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while text.encode() not in self.seen:
            if loop.time() > deadline:
                raise AssertionError(f"{text!r} did not appear; the terminal shows {self.seen[-2000:]!r}")
            try:
                self.seen += os.read(self.master, 65536)
            except BlockingIOError:
                await asyncio.sleep(0.02)
            except OSError:   # EIO: the process closed the terminal
                await asyncio.sleep(0.02)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    async def wait(self, timeout: float = 20) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.proc.poll() is None:
            if loop.time() > deadline:
                raise AssertionError(f"relay ssh did not exit; the terminal shows {self.seen[-2000:]!r}")
            with contextlib.suppress(BlockingIOError, OSError):
                self.seen += os.read(self.master, 65536)
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)


async def test_ssh_interactive_shell_on_a_pty(fleet):
    relay, cli, start_agent = fleet
    await start_agent()
    term = Pty(cli.env, DEVICE, "--set-size", size=(33, 101))
    try:
        await term.expect("waiting for the device...")
        await term.expect("$ ")   # the remote prompt
        term.type("echo hello-$((40+2))\r")
        await term.expect("\rhello-42\r\n")   # after the echo and its terminal controls
        term.type("stty size\r")   # --set-size typed this terminal's size in once
        await term.expect("\r33 101\r\n")
        term.type("sleep 30\r")
        await asyncio.sleep(0.5)
        term.type("\x03")   # Ctrl-C goes to the remote shell and interrupts sleep
        term.type("echo after-$((1+1))\r")
        await term.expect("\rafter-2\r\n", timeout=10)
        (open_,) = await tunnels(relay, "OPEN")
        assert open_["source_connect_state"]["status"] == "CONNECTED"
        term.type("exit 7\r")
        assert await term.wait() == 7   # the remote shell's exit status
        assert b"exit status 7" in term.seen
        lflag = termios.tcgetattr(term.master)[3]   # the terminal is out of raw mode again
        assert lflag & termios.ICANON and lflag & termios.ECHO
    finally:
        term.close()
    assert [t["status"] for t in await tunnels(relay)] == ["CLOSED"]


async def test_ssh_filters_the_clipboard_and_keeps_the_colours(fleet):
    """Issue 15, finding 3, on a real terminal: the remote shell may colour its output and set
    the title, not write the operator's clipboard nor make the terminal type an answer."""
    _, cli, start_agent = fleet
    await start_agent()
    term = Pty(cli.env, DEVICE)
    try:
        await term.expect("$ ")
        term.type("printf '\\033]52;c;ZWNobyBwd25lZA==\\007\\033[31mred-%d\\033[0m\\033P$qm\\033\\\\\\033]0;t\\007\\033[21t\\n' 7\r")
        await term.expect("\x1b[31mred-7\x1b[0m\x1b]0;t\x07\r\n")
        term.type("exit\r")
        assert await term.wait() == 0
        for removed in (b"\x1b]52", b"\x1bP", b"\x1b[21t"):
            assert removed not in term.seen
    finally:
        term.close()


async def test_ssh_learns_that_the_tunnel_was_closed(fleet):
    relay, cli, start_agent = fleet
    await start_agent()
    term = Pty(cli.env, DEVICE)
    try:
        await term.expect("$ ")
        (open_,) = await tunnels(relay, "OPEN")
        code, _ = await relay.call("PUT", f"/v5/iot/proj-a/tunnels/{open_['tunnel_id']}")
        assert code == 204
        assert await term.wait() == 255
        assert b"the relay ended the session (410): the tunnel was closed" in term.seen
    finally:
        term.close()


async def test_ssh_without_a_password_source_is_refused(fleet):
    _, cli, _ = fleet
    env = {k: v for k, v in cli.env.items() if k != "RELAY_SSH_PASSWORD"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "relay.cli", "ssh", DEVICE, env=env,
                                                stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"no SSH password" in err


async def test_ctrl_c_while_waiting_closes_the_tunnel(fleet):
    import signal
    relay, cli, _ = fleet   # no agent: it waits
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "relay.cli", "exec", DEVICE, "--", "true",
                                                env=cli.env, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await eventually(lambda: tunnels(relay, "OPEN"), timeout=20)
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130, err
    assert [t["status"] for t in await tunnels(relay)] == ["CLOSED"]


async def _abandoned_tunnel(relay, start_agent) -> dict:  # type: ignore[no-untyped-def]
    """An open tunnel of DEVICE whose device end is not connected while the agent runs and
    listens: another device connection took the end over (the agent, evicted with 4000,
    gives up on the tunnel, as docs/device.md says), then went away."""
    import aiohttp

    agent = await start_agent()
    created = await relay.create(DEVICE)
    tunnel_id = created["tunnel_id"]

    async def device_status() -> str:
        code, info = await relay.call("GET", f"/v5/iot/proj-a/tunnels/{tunnel_id}")
        assert code == 200
        return info["device_connect_state"]["status"]

    await eventually(lambda: _is(device_status, "CONNECTED"), timeout=20)
    async with aiohttp.ClientSession() as http:
        usurper = await http.ws_connect(relay.settings.tunnel_uri(tunnel_id, "device"),
                                        headers={"tunnel_access_token": created["device_access_token"]})
        await eventually(lambda: agent._tunnel_task is not None and agent._tunnel_task.done(), timeout=20)
        await usurper.close()
    await eventually(lambda: _is(device_status, "DISCONNECTED"), timeout=20)
    return created


async def _is(get, value) -> bool:  # type: ignore[no-untyped-def]
    return (await get()) == value


async def test_exec_reusing_a_tunnel_without_its_device_end_sends_the_device_a_new_token(fleet):
    """Reusing the open tunnel must not wait for a device that has no reason to come: its
    device token is rotated too, and the relay publishes it to the device (issue 14, point 7)."""
    relay, cli, start_agent = fleet
    created = await _abandoned_tunnel(relay, start_agent)
    code, out, err = await cli.run("exec", DEVICE, "--wait", "30", "--", "echo", "two")
    assert (code, out) == (0, "two\n"), err
    assert f"reusing the open tunnel {created['tunnel_id']}" in err
    assert "its device end is not connected" in err and "sends the new device token" in err
