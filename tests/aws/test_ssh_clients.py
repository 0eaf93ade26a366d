"""Our own AWS-protocol clients end to end: the relay (in process), real mosquitto, the device
agent in destination mode, OpenSSH's sshd, and the source end (`relay forward --protocol
aws`, `relay localproxy -s`, or its SourceProxy in process) with real `ssh` and `scp`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from relay.client.aws_tunnel import SourceProxy
from tests.client.conftest import SSH_USER, cli_env
from tests.device.conftest import agent_factory, eventually, mosquitto, sshd  # noqa: F401 (fixtures)
from tests.forward.test_end_to_end import SSH_OPTIONS, run, sha256, ssh_env

DEVICE = "dev-aws"


@pytest.fixture
async def aws_fleet(relay_factory, mosquitto, sshd, agent_factory):  # noqa: F811 (fixtures imported above)
    """A relay publishing notifies on real mosquitto, and a way to start the device's agent."""
    relay = await relay_factory(mqtt_url=mosquitto.url)

    async def start_agent(endpoint: str | None = None, **overrides):  # type: ignore[no-untyped-def]
        return await agent_factory(DEVICE, mosquitto.url, ssh_port=sshd.port, aws_endpoint=endpoint or relay.url,
                                   **overrides)

    return relay, start_agent


async def create(relay, services: list[str] | None = None) -> dict:  # type: ignore[no-untyped-def]
    return await relay.create(DEVICE, protocol="aws", services=services or ["SSH"])


class InProcessSource:
    """A SourceProxy (what `relay localproxy -s` runs) listening on a free port."""

    def __init__(self, endpoint: str, token: str, **options) -> None:  # type: ignore[no-untyped-def]
        self.lines: list[str] = []
        self.proxy = SourceProxy(endpoint=endpoint, token=token, listeners={"": 0}, notice=self.lines.append,
                                 error=self.lines.append, announce=self.lines.append, **options)
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> InProcessSource:
        self.task = asyncio.create_task(self.proxy.run())
        listening = asyncio.create_task(self.proxy.listening.wait())
        await asyncio.wait({listening, self.task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        assert self.proxy.listening.is_set(), self.lines
        return self

    @property
    def port(self) -> str:
        (address,) = self.proxy.addresses.values()
        return str(address[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def ssh(port: str, command: str, env: dict[str, str]) -> tuple[int, str, str]:
    return await run("ssh", "-p", port, *SSH_OPTIONS, f"{SSH_USER}@127.0.0.1", command, env=env)


# -- as a user runs it: relay forward --protocol aws ----------------------------------------------


@pytest.mark.timeout(180)
async def test_ssh_login_and_scp_of_50_mb_through_the_agent_and_relay_forward_protocol_aws(aws_fleet, tmp_path):
    relay, start_agent = aws_fleet
    agent = await start_agent()
    env_cli = cli_env(relay)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "forward", DEVICE, "--protocol", "aws", "--listen", "127.0.0.1:0",
        env=env_cli, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        found = re.fullmatch(r"forwarding 127\.0\.0\.1:(\d+) -> device service SSH\n", line)
        assert found, line
        port = found.group(1)
        env = ssh_env(tmp_path)

        # the agent heard of the tunnel on $aws/things/DEVICE/tunnels/notify (real mosquitto)
        await eventually(lambda: agent.aws.session is not None and agent.aws.session.connected.is_set(), 20)
        code, out, err = await ssh(port, "echo through-the-aws-tunnel", env)
        assert (code, out) == (0, "through-the-aws-tunnel\n"), err

        original = tmp_path / "payload.bin"
        with open(original, "wb") as fh:
            for _ in range(50):
                fh.write(os.urandom(1024 * 1024))
        remote_dir = Path(tempfile.mkdtemp(prefix="relay-aws-", dir="/tmp"))
        user = pwd.getpwnam(SSH_USER)
        os.chown(remote_dir, user.pw_uid, user.pw_gid)
        try:
            code, _, err = await run("scp", "-O", "-q", "-P", port, *SSH_OPTIONS, str(original),
                                     f"{SSH_USER}@127.0.0.1:{remote_dir}/copy.bin", env=env, timeout=120)
            assert code == 0, err
            assert sha256(remote_dir / "copy.bin") == sha256(original)
            back = tmp_path / "back.bin"
            code, _, err = await run("scp", "-O", "-q", "-P", port, *SSH_OPTIONS,
                                     f"{SSH_USER}@127.0.0.1:{remote_dir}/copy.bin", str(back), env=env, timeout=120)
            assert code == 0, err
            assert sha256(back) == sha256(original)
        finally:
            shutil.rmtree(remote_dir, ignore_errors=True)

        proc.send_signal(signal.SIGTERM)
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err_bytes.decode()
        text = err_bytes.decode()
        assert "creating an AWS tunnel" in text and "closed" in text
        code, body = await relay.call("GET", f"/v5/iot/proj-a/tunnels?device_id={DEVICE}")
        assert [t["status"] for t in body["tunnels"]] == ["CLOSED"]
        # the relay closed the agent's end with the tunnel: its session is over, not retrying
        await eventually(lambda: agent.aws._task is not None and agent.aws._task.done(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


# -- V3: several connections at once ---------------------------------------------------------------


async def test_two_ssh_sessions_at_once_share_one_v3_stream(aws_fleet, tmp_path):
    relay, start_agent = aws_fleet
    agent = await start_agent()
    made = await create(relay)
    await eventually(lambda: agent.aws.session is not None and agent.aws.session.connected.is_set(), 20)
    flag = f"/tmp/relay-aws-{uuid.uuid4().hex}"
    env = ssh_env(tmp_path)
    try:
        async with InProcessSource(relay.url, made["source_access_token"]) as source:
            assert source.proxy.session.version == 3
            # the first waits for a file the second creates: both run at the same time
            first = asyncio.create_task(ssh(source.port, f"while [ ! -e {flag} ]; do sleep 0.05; done; echo first",
                                            env))
            await eventually(lambda: len(agent.aws.session.pipes.links) == 1)
            second = await ssh(source.port, f"touch {flag}; echo second", env)
            assert second[:2] == (0, "second\n"), second[2]
            code, out, err = await asyncio.wait_for(first, 30)
            assert (code, out) == (0, "first\n"), err
            assert agent.aws.session.pipes.opened == 2
            assert any("/1/1 " in line for line in source.lines) and any("/1/2 " in line for line in source.lines)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(flag)


# -- the agent reconnects with its client token ------------------------------------------------------


class Cutter:
    """A TCP proxy on loopback in front of the relay whose connections the test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.cut()


async def test_the_agent_reconnects_with_its_client_token_after_the_relay_drops_it(aws_fleet, tmp_path):
    relay, start_agent = aws_fleet
    cutter = Cutter(int(relay.url.rsplit(":", 1)[1]))
    agent = await start_agent(endpoint=f"http://127.0.0.1:{await cutter.start()}")
    made = await create(relay)
    env = ssh_env(tmp_path)
    try:
        await eventually(lambda: agent.aws.session is not None and agent.aws.session.connected.is_set(), 20)
        async with InProcessSource(relay.url, made["source_access_token"]) as source:
            assert (await ssh(source.port, "echo before", env))[:2] == (0, "before\n")
            session = agent.aws.session
            assert session.connections == 1
            cutter.cut()   # the network between the device and the relay fails
            await eventually(lambda: session.connections == 2 and session.connected.is_set(), 20)
            # the same access token, with the agent's client token: accepted again
            code, out, err = await ssh(source.port, "echo after", env)
            assert (code, out) == (0, "after\n"), err
            assert agent.aws._task is not None and not agent.aws._task.done()
    finally:
        cutter.close()


# -- the notify over real mosquitto ------------------------------------------------------------------


async def test_a_notify_on_the_aws_topic_starts_the_agent_s_session(relay_factory, mosquitto, sshd,  # noqa: F811
                                                                     agent_factory, tmp_path):  # noqa: F811
    relay = await relay_factory()   # no broker: the test publishes the notify itself, as AWS IoT would
    made = await relay.create(DEVICE, protocol="aws", services=["SSH"])
    agent = await agent_factory(DEVICE, mosquitto.url, ssh_port=sshd.port, aws_endpoint=relay.url)
    assert agent.aws.session is None
    payload = ('{"clientAccessToken": "' + made["destination_access_token"] + '", "clientMode": "destination", '
               '"region": "self-hosted", "services": ["SSH"]}')
    await mosquitto.publish(f"$aws/things/{DEVICE}/tunnels/notify", payload)
    await eventually(lambda: agent.aws.session is not None and agent.aws.session.connected.is_set(), 20)
    async with InProcessSource(relay.url, made["source_access_token"]) as source:
        code, out, err = await ssh(source.port, "echo notified", ssh_env(tmp_path))
        assert (code, out) == (0, "notified\n"), err
    # the same notify again (QoS 1 may repeat it) keeps the session
    session = agent.aws.session
    await mosquitto.publish(f"$aws/things/{DEVICE}/tunnels/notify", payload)
    await asyncio.sleep(0.3)
    assert agent.aws.session is session and session.connections == 1


# -- relay localproxy, both modes, as a user runs them -----------------------------------------------


async def test_relay_localproxy_in_both_modes_carries_ssh(relay, sshd, tmp_path):  # noqa: F811
    made = await relay.create(DEVICE, protocol="aws", services=["SSH"])
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "AWSIOT_"))}
    procs = []
    try:
        destination = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "localproxy", "-e", relay.url, "-d", f"SSH={sshd.port}",
            env={**base, "AWSIOT_TUNNEL_ACCESS_TOKEN": made["destination_access_token"]},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        procs.append(destination)
        said = b""
        while b"connected to the relay as destination" not in said:   # its log on stderr (-v 4: info)
            line = await asyncio.wait_for(destination.stderr.readline(), 30)
            assert line, said.decode()
            said += line
        source = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay.cli", "localproxy", "-e", relay.url, "-s", "0", "--access-token-stdin",
            env=base, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        procs.append(source)
        source.stdin.write(made["source_access_token"].encode() + b"\n")
        await source.stdin.drain()
        line = (await asyncio.wait_for(source.stdout.readline(), 30)).decode()
        found = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+) for service SSH\n", line)
        assert found, line
        port = found.group(1)
        env = ssh_env(tmp_path)
        code, out, err = await ssh(port, "echo localproxy", env)
        assert (code, out) == (0, "localproxy\n"), err
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            _, err_bytes = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, err_bytes.decode()
            assert made["source_access_token"] not in err_bytes.decode()
            assert made["destination_access_token"] not in err_bytes.decode()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()


async def test_a_v2_source_has_one_connection_at_a_time_and_a_new_one_replaces_the_old(aws_fleet, tmp_path):
    relay, start_agent = aws_fleet
    agent = await start_agent()
    made = await create(relay)
    await eventually(lambda: agent.aws.session is not None and agent.aws.session.connected.is_set(), 20)
    env = ssh_env(tmp_path)
    async with InProcessSource(relay.url, made["source_access_token"], highest=2) as source:
        assert source.proxy.session.version == 2
        assert agent.aws.session.version == 3   # each end speaks its own version to the relay
        assert (await ssh(source.port, "echo one", env))[:2] == (0, "one\n")
        first = asyncio.create_task(ssh(source.port, "sleep 30; echo never", env))
        # "one" was stream 1; the sleeping one is stream 2, open at the device
        await eventually(lambda: any(k.stream_id == 2 for k in agent.aws.session.pipes.links))
        code, out, err = await ssh(source.port, "echo two", env)   # resets the sleeping one
        assert (code, out) == (0, "two\n"), err
        code, out, _ = await asyncio.wait_for(first, 20)
        assert code != 0 and "never" not in out


# -- reusing an open tunnel (issue 14, point 7) ----------------------------------------------------


async def test_relay_forward_protocol_aws_announces_forwarding_only_with_the_destination_there(aws_fleet, tmp_path):
    """An open AWS tunnel whose destination end is not connected: `relay forward` sends the
    device a new token, says what it waits for, and never says "forwarding" (streams would
    die unanswered) until the destination is there."""
    relay, start_agent = aws_fleet
    created = await create(relay)   # no agent yet: nobody takes the notify
    env_cli = cli_env(relay)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "forward", DEVICE, "--protocol", "aws", "--listen", "127.0.0.1:0",
        "--wait", "2", "--keep", env=env_cli, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 40)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    text = err.decode()
    assert proc.returncode == 255, text
    assert "forwarding" not in out.decode(), out
    assert f"reusing the open tunnel {created['tunnel_id']}" in text and "its device end is not connected" in text
    assert "waiting for the destination end of the tunnel" in text and "did not connect within 2 s" in text

    # with the agent running, the same command gets the device there (a new token over MQTT) and then forwards
    agent = await start_agent()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "forward", DEVICE, "--protocol", "aws", "--listen", "127.0.0.1:0",
        "--wait", "30", env=env_cli, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 40)).decode()
        found = re.fullmatch(r"forwarding 127\.0\.0\.1:(\d+) -> device service SSH\n", line)
        assert found, line
        assert agent.aws.session is not None and agent.aws.session.connected.is_set()
        code, out_text, ssh_err = await ssh(found.group(1), "echo both-ends", ssh_env(tmp_path))
        assert (code, out_text) == (0, "both-ends\n"), ssh_err
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.communicate(), 20)
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
