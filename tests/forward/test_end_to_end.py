"""`relay forward` end to end: the relay (in process), mosquitto, the device agent, OpenSSH's
sshd, and real TCP clients: `ssh` and `scp` through the forwarded port, several connections
at once, the allow-list, and flow control against a client that does not read."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import pwd
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from relay.ends import huawei_tcp as forward
from relay.cli import build_parser
from relay.client.forward import Forwarder, forward_async
from relay.client.terminal import Terminal
from tests.client.conftest import DEVICE, SSH_PASSWORD, SSH_USER
from tests.conftest import TOKEN_A
from tests.device.conftest import eventually

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
               "-o", "NumberOfPasswordPrompts=1", "-o", "ConnectTimeout=20"]


def ssh_env(tmp_path: Path) -> dict[str, str]:
    """The test sshd takes passwords only (tests/device/conftest.py); OpenSSH reads one from
    SSH_ASKPASS when it is forced to, without a terminal."""
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{SSH_PASSWORD}'\n")
    askpass.chmod(0o700)
    return {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


async def run(*argv: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError(f"{argv[0]} did not finish within {timeout} s") from None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


async def tunnels(relay) -> list[dict]:  # type: ignore[no-untyped-def]
    code, body = await relay.call("GET", f"/v5/iot/proj-a/tunnels?device_id={DEVICE}")
    assert code == 200
    return body["tunnels"]


# -- `relay forward` as a user runs it -------------------------------------------------------


@pytest.mark.timeout(180)
async def test_ssh_login_and_scp_of_50_mb_through_relay_forward(fleet, sshd, tmp_path):
    relay, cli, start_agent = fleet
    await start_agent(forward_ports=(sshd.port,))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "forward", DEVICE, "--listen", "127.0.0.1:0", "--port", str(sshd.port),
        env=cli.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        found = re.fullmatch(r"forwarding 127\.0\.0\.1:(\d+) -> device port (\d+)\n", line)
        assert found and int(found.group(2)) == sshd.port, line
        port = found.group(1)
        env = ssh_env(tmp_path)

        code, out, err = await run("ssh", "-p", port, *SSH_OPTIONS, f"{SSH_USER}@127.0.0.1",
                                   "echo through-the-tunnel", env=env)
        assert (code, out) == (0, "through-the-tunnel\n"), err

        original = tmp_path / "payload.bin"
        with open(original, "wb") as fh:
            for _ in range(50):
                fh.write(os.urandom(1024 * 1024))
        remote_dir = Path(tempfile.mkdtemp(prefix="relay-forward-", dir="/tmp"))
        user = pwd.getpwnam(SSH_USER)
        os.chown(remote_dir, user.pw_uid, user.pw_gid)
        try:
            # -O: the classic scp protocol (the test sshd has no sftp subsystem)
            started = time.monotonic()
            code, _, err = await run("scp", "-O", "-q", "-P", port, *SSH_OPTIONS, str(original),
                                     f"{SSH_USER}@127.0.0.1:{remote_dir}/copy.bin", env=env, timeout=120)
            upload = time.monotonic() - started
            assert code == 0, err
            assert sha256(remote_dir / "copy.bin") == sha256(original)
            back = tmp_path / "back.bin"
            started = time.monotonic()
            code, _, err = await run("scp", "-O", "-q", "-P", port, *SSH_OPTIONS,
                                     f"{SSH_USER}@127.0.0.1:{remote_dir}/copy.bin", str(back), env=env, timeout=120)
            download = time.monotonic() - started
            assert code == 0, err
            assert sha256(back) == sha256(original)
            print(f"\nscp 50 MB through the tunnel: up {upload:.1f} s ({50 / upload:.1f} MB/s), "
                  f"down {download:.1f} s ({50 / download:.1f} MB/s)")
        finally:
            shutil.rmtree(remote_dir, ignore_errors=True)

        proc.send_signal(signal.SIGTERM)   # as Ctrl-C: stop, close the tunnel
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err_bytes.decode()
        text = err_bytes.decode()
        assert "waiting for the device's end of the tunnel (its agent) to connect..." in text
        assert "-> device port" in text and "closed:" in text
        assert [t["status"] for t in await tunnels(relay)] == ["CLOSED"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


# -- `relay forward` in process (its counters can be read) -----------------------------------


class InProcess:
    def __init__(self, relay, *argv: str) -> None:  # type: ignore[no-untyped-def]
        self.args = build_parser().parse_args(["forward", DEVICE, "--url", relay.url, "--token", TOKEN_A,
                                               "--project", "proj-a", "--listen", "127.0.0.1:0", *argv])
        self.stderr = io.StringIO()
        self.terminal = Terminal(stdin_fd=0, stdout=io.BytesIO(), stderr=self.stderr)
        self.stop = asyncio.Event()
        self.forwarder: Forwarder | None = None
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> InProcess:
        def started(f: Forwarder) -> None:
            self.forwarder = f
        self.task = asyncio.create_task(forward_async(self.args, self.terminal, ("127.0.0.1", 0), None,
                                                      stop=self.stop, started=started))
        await eventually(lambda: self.forwarder is not None or self.task.done(), 20)
        assert self.forwarder is not None, self.stderr.getvalue()
        listening = asyncio.create_task(self.forwarder.listening.wait())
        await asyncio.wait({listening, self.task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        assert self.forwarder.address is not None, self.stderr.getvalue()
        return self

    @property
    def port(self) -> int:
        assert self.forwarder is not None and self.forwarder.address is not None
        return self.forwarder.address[1]

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        self.code = await asyncio.wait_for(self.task, 20)


async def echo_server() -> tuple[asyncio.Server, list[str]]:
    """Echoes each connection; after the client's EOF it says how much it got, and closes."""
    events: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while data := await reader.read(65536):
            n += len(data)
            writer.write(data)
            await writer.drain()
        events.append(f"eof after {n}")
        writer.write(f"[got {n}]".encode())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, events


async def test_connections_are_independent_and_half_close_goes_through(fleet, sshd):
    relay, _, start_agent = fleet
    server, events = await echo_server()
    echo_port = server.sockets[0].getsockname()[1]
    agent = await start_agent(forward_ports=(sshd.port, echo_port))
    try:
        async with InProcess(relay, "--port", str(echo_port)) as fwd:
            a = await asyncio.open_connection("127.0.0.1", fwd.port)
            b = await asyncio.open_connection("127.0.0.1", fwd.port)
            for i, (reader, writer) in enumerate((a, b)):
                writer.write(f"hello {i}".encode())
                assert await asyncio.wait_for(reader.readexactly(7), 10) == f"hello {i}".encode()
            # a ends its sending side; it still reads the answer the server sends after that
            a[1].write_eof()
            assert await asyncio.wait_for(a[0].read(-1), 10) == b"[got 7]"
            a[1].close()
            await eventually(lambda: len(fwd.forwarder.pipes.by_id) == 1)
            # b is untouched
            block = os.urandom(300_000)   # more than the window: acks must flow
            b[1].write(block)
            assert await asyncio.wait_for(b[0].readexactly(len(block)), 20) == block
            b[1].write_eof()
            assert await asyncio.wait_for(b[0].read(-1), 10) == b"[got 300007]"
            b[1].close()
            await eventually(lambda: not fwd.forwarder.pipes.by_id and not agent.tunnel.forwards.pipes.by_id)
            assert events == ["eof after 7", "eof after 300007"]
            assert "open" in fwd.stderr.getvalue()
        assert fwd.code == 0
    finally:
        server.close()


async def test_a_port_off_the_allow_list_is_refused_with_403(fleet, sshd):
    relay, _, start_agent = fleet
    await start_agent(forward_ports=(sshd.port,))
    async with InProcess(relay, "--port", "8080") as fwd:
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
        assert await asyncio.wait_for(reader.read(-1), 10) == b""   # closed at once, nothing sent
        writer.close()
        await eventually(lambda: "403" in fwd.stderr.getvalue())
        line = next(x for x in fwd.stderr.getvalue().splitlines() if "403" in x)
        assert "refused port 8080" in line and "allow-list" in line
    assert [t["status"] for t in await tunnels(relay)] == ["CLOSED"]


async def test_an_allowed_port_with_nothing_listening_is_502(fleet, sshd):
    from aiohttp.test_utils import unused_port

    relay, _, start_agent = fleet
    closed_port = unused_port()
    await start_agent(forward_ports=(sshd.port, closed_port))
    async with InProcess(relay, "--port", str(closed_port)) as fwd:
        reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
        assert await asyncio.wait_for(reader.read(-1), 10) == b""
        writer.close()
        await eventually(lambda: "502" in fwd.stderr.getvalue())
        assert "connection refused" in fwd.stderr.getvalue()


@pytest.mark.timeout(120)
async def test_flow_control_holds_a_fast_device_to_the_window_of_a_client_that_does_not_read(fleet, sshd):
    relay, _, start_agent = fleet
    total = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    produced = [0]

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()
            produced[0] += len(block)
        writer.close()

    server = await asyncio.start_server(firehose, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent = await start_agent(forward_ports=(port,))
    try:
        async with InProcess(relay, "--port", str(port)) as fwd:
            reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
            await asyncio.sleep(3)   # the client reads nothing
            stalled = produced[0]
            device = agent.tunnel.forwards.pipes
            (pipe,) = device.by_id.values()
            assert pipe.conn.credit == 0   # the agent waits for acks: it stopped reading the server
            assert stalled < total // 2    # kernel buffers hold a few MB; the tunnel holds at most the window
            await asyncio.sleep(1)
            assert produced[0] - stalled <= 2 * 1024 * 1024   # nothing moves while the client sleeps
            h, n = hashlib.sha256(), 0
            while data := await asyncio.wait_for(reader.read(1 << 20), 20):
                h.update(data)
                n += len(data)
            assert n == total and h.digest() == hashlib.sha256(block * (total // len(block))).digest()
            writer.close()
            sent_peak, _ = device.peaks()
            _, received_peak = fwd.forwarder.pipes.peaks()
            assert 0 < sent_peak <= forward.WINDOW and 0 < received_peak <= forward.WINDOW
    finally:
        server.close()


async def test_the_device_going_away_aborts_open_connections_with_a_log_line(fleet, sshd):
    relay, _, start_agent = fleet
    server, _ = await echo_server()
    echo_port = server.sockets[0].getsockname()[1]
    agent = await start_agent(forward_ports=(echo_port,))
    try:
        async with InProcess(relay, "--port", str(echo_port)) as fwd:
            reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
            await agent.stop()
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(-1), 10) == b""
            await eventually(lambda: "aborted 1 forwarded connection" in fwd.stderr.getvalue())
            writer.close()
    finally:
        server.close()


async def test_a_lost_websocket_is_reconnected_and_forwarding_goes_on(fleet, sshd):
    """The network drops relay forward's WebSocket (no close frame): its one reconnect loop
    (relay/ends/reconnect.py) says so with the delay, reconnects, and the listener serves again."""
    relay, _, start_agent = fleet
    server, _ = await echo_server()
    echo_port = server.sockets[0].getsockname()[1]
    agent = await start_agent(forward_ports=(echo_port,))
    try:
        async with InProcess(relay, "--port", str(echo_port)) as fwd:
            assert fwd.forwarder is not None
            first = fwd.forwarder._ws
            assert first is not None
            first.transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
            await eventually(lambda: "the connection to the relay was lost (close code 1006); reconnecting in 1 s"
                             in fwd.stderr.getvalue(), 20)
            await eventually(lambda: fwd.forwarder._ws is not first and fwd.forwarder.device_ready.is_set(), 30)
            reader, writer = await asyncio.open_connection("127.0.0.1", fwd.port)
            writer.write(b"again")
            assert await asyncio.wait_for(reader.readexactly(5), 10) == b"again"
            writer.close()
        assert fwd.code == 0
    finally:
        await agent.stop()
        server.close()


async def test_a_script_gives_the_tunnel_and_its_source_token_on_stdin(fleet, sshd):
    relay, cli, start_agent = fleet
    server, _ = await echo_server()
    echo_port = server.sockets[0].getsockname()[1]
    await start_agent(forward_ports=(echo_port,))
    made = await relay.create(DEVICE, project="proj-a")
    env = {k: v for k, v in cli.env.items() if k != "RELAY_API_TOKEN"}   # no API token needed with --keep
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "forward", "--tunnel", made["tunnel_id"], "--source-token-stdin", "--keep",
        "--listen", "127.0.0.1:0", "--port", str(echo_port), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        proc.stdin.write(made["tunnel_access_token"].encode() + b"\n")
        await proc.stdin.drain()
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        port = int(re.fullmatch(r"forwarding 127\.0\.0\.1:(\d+) -> device port \d+\n", line).group(1))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"scripted")
        assert await asyncio.wait_for(reader.readexactly(8), 10) == b"scripted"
        writer.close()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        assert made["tunnel_access_token"] not in err.decode()
        assert [t["status"] for t in await tunnels(relay)] == ["OPEN"]   # --keep
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
        server.close()
