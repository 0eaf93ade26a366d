"""`relay serve` as a user runs it: a real process, restarts, environment settings, --help."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from aiohttp.test_utils import unused_port

import relay as relay_package

TOKEN = "serve-test-token-0123456789abcdef"
# Run the same relay package the tests import, installed or not.
SRC = str(Path(relay_package.__file__).resolve().parent.parent)


CODEC_CHOICE = ("RELAY_CODEC", "RELAY_EXPECT_RUST")


def clean_env(**extra: str) -> dict[str, str]:
    # No relay setting leaks in from the environment, but the codec choice does: a relay run
    # as a process uses the codec this pass of the suite tests (RELAY_CODEC=python or Rust).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") or k in CODEC_CHOICE}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["RELAY_MQTT_URL"] = "none"  # no broker unless a test asks for one (tests/device does)
    env.update(extra)
    return env


class Served:
    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = unused_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = clean_env(**(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "--port", str(self.port), *args],
            cwd=tmp, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.banner = self.proc.stdout.readline() if self.proc.stdout else ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.base}/healthz", timeout=1).read()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"relay exited: {self.proc.stderr.read() if self.proc.stderr else ''}") from None
                time.sleep(0.05)
        raise AssertionError("relay did not start within 15 s")

    def call(self, method: str, path: str, token: str = TOKEN, body: dict | None = None) -> tuple[int, dict | None]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"X-Auth-Token": token, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=15)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        assert self.proc.returncode == 0, err
        return err


def test_tunnels_survive_a_restart(tmp_path):
    env = {"RELAY_API_TOKENS": f"p1:tester:{TOKEN}"}
    relay = Served(tmp_path, "--db", "data/relay.db", env=env)
    status, created = relay.call("POST", "/v5/iot/p1/tunnels", body={"device_id": "dev-1"})
    assert status == 201
    log = relay.stop()
    assert created["tunnel_access_token"] not in log and TOKEN not in log

    relay = Served(tmp_path, "--db", "data/relay.db", env=env)
    try:
        status, info = relay.call("GET", f"/v5/iot/p1/tunnels/{created['tunnel_id']}")
        assert status == 200 and info["status"] == "OPEN" and info["device_id"] == "dev-1"
        status, _ = relay.call("POST", "/v5/iot/p1/tunnels", body={"device_id": "dev-1"})
        assert status == 409  # the rule holds across the restart
    finally:
        relay.stop()


def test_expiry_holds_across_a_restart(tmp_path):
    env = {"RELAY_API_TOKENS": f"p1:tester:{TOKEN}", "RELAY_MIN_LIFETIME": "1"}
    relay = Served(tmp_path, "--db", "relay.db", env=env)
    status, created = relay.call("POST", "/v5/iot/p1/tunnels", body={"device_id": "dev-1", "expires_in": 1})
    assert status == 201
    relay.stop()
    time.sleep(1.2)  # the lifetime runs out while the relay is down
    relay = Served(tmp_path, "--db", "relay.db", env=env)
    try:
        status, info = relay.call("GET", f"/v5/iot/p1/tunnels/{created['tunnel_id']}")
        assert info["status"] == "CLOSED" and info["close_reason"] == "expired"
    finally:
        relay.stop()


def test_defaults_generate_a_token_and_say_how_to_use_it(tmp_path):
    from relay.broker import port_answers
    if port_answers("127.0.0.1", 1883):   # the relay refuses a broker it did not start (tests/device/test_broker.py)
        pytest.skip("127.0.0.1:1883 is taken by another process: the managed broker cannot start")
    env = clean_env()
    del env["RELAY_MQTT_URL"]  # the real defaults, managed MQTT broker included
    port = unused_port()
    proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "serve", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(6)]
        assert lines[0].strip() == f"relay listening on http://127.0.0.1:{port}"
        token_file = tmp_path / "var" / "api-tokens.txt"
        assert str(token_file) in "".join(lines)
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"
        token = [line for line in token_file.read_text().splitlines() if not line.startswith("#")][0].split(":", 2)[2]
        assert token not in "".join(lines)  # the secret itself is never printed
        assert (tmp_path / "var" / "relay.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
        proc.stdout.close()
        proc.stderr.close()


def test_banner_says_what_it_bound_and_the_public_url_apart(tmp_path):
    """Behind a load balancer a replica's public URL is not its own address: the log says both."""
    port, internal = unused_port(), unused_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--port", str(port), "--host", "127.0.0.1",
         "--public-url", "http://relay.example:18080", "--internal-port", str(internal)],
        cwd=tmp_path, env=clean_env(RELAY_API_TOKENS=f"p1:tester:{TOKEN}"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert lines == [f"relay listening on http://127.0.0.1:{port}",
                     "  public URL (what clients are given): http://relay.example:18080",
                     f"  internal port (health, metrics, bridges): http://127.0.0.1:{internal}"]


@pytest.mark.parametrize("args, message", [
    (["--api-tokens-file", "/nonexistent/tokens"], "cannot read the API token file"),
    (["--port", "70000"], "outside 0-65535"),
    (["--max-message-size", "0"], "must be above zero"),
    (["--max-message-size", str(2**62)], "above the most a message may be"),
])
def test_bad_settings_are_explained(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "relay.cli", "serve", *args], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_port_in_use_is_explained(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "--port", str(port)], cwd=tmp_path,
                              env=clean_env(), capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_bad_token_entries_are_explained(tmp_path):
    env = clean_env(RELAY_API_TOKENS="p1:short:abc")
    proc = subprocess.run([sys.executable, "-m", "relay.cli", "serve"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2 and "shorter than 16 characters" in proc.stderr


def test_help_explains_every_option():
    proc = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "--help"], env=clean_env(), capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 0
    for option in ("--host", "--port", "--public-url", "--db", "--api-tokens-file", "--instance-id",
                   "--default-lifetime", "--closed-retention", "--max-tunnels-per-project"):
        assert option in proc.stdout
    assert "RELAY_" in proc.stdout


def test_tls_serves_https_and_wss_with_a_self_signed_certificate(tmp_path):
    """Huawei's device SDK only speaks wss:// and does not verify the certificate."""
    import asyncio
    import socket
    import ssl

    import aiohttp

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    env = {"RELAY_API_TOKENS": f"p1:tester:{TOKEN}"}
    relay = Served.__new__(Served)
    relay.port = unused_port()
    relay.base = f"https://127.0.0.1:{relay.port}"
    relay.proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--port", str(relay.port), "--db", "relay.db",
         "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")],
        cwd=tmp_path, env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    banner = relay.proc.stdout.readline()
    try:
        assert banner.strip() == f"relay listening on https://127.0.0.1:{relay.port}"
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE

        opened: list[socket.socket] = []

        def new_socket(addr_info: tuple) -> socket.socket:
            sock = socket.socket(addr_info[0], addr_info[1], addr_info[2])
            opened.append(sock)
            return sock

        async def scenario() -> dict:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(socket_factory=new_socket)) as http:
                async with http.post(f"{relay.base}/v5/iot/p1/tunnels", json={"device_id": "d1"},
                                     headers={"X-Auth-Token": TOKEN}, ssl=insecure) as resp:
                    created = await resp.json()
                assert created["tunnel_uri"].startswith("wss://127.0.0.1:")
                source = await http.ws_connect(created["tunnel_uri"], ssl=insecure,
                                               headers={"tunnel_access_token": created["tunnel_access_token"]})
                device = await http.ws_connect(created["device_tunnel_uri"], ssl=insecure,
                                               headers={"tunnel_access_token": created["device_access_token"]})
                hello = await source.receive_json(timeout=5)
                await device.close()
                await source.close()
            # A TLS connection that is closed says close_notify and waits for the relay's; the
            # event loop must not end before that (asyncio would warn of an unclosed transport)
            async with asyncio.timeout(10):
                while any(sock.fileno() != -1 for sock in opened):
                    await asyncio.sleep(0.01)
            return hello

        hello = asyncio.run(scenario())
        assert hello["operation_type"] == "connect_tunnel"
    finally:
        relay.stop()


def test_tls_needs_both_files(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "--tls-cert", "x.pem"], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2 and "--tls-cert and --tls-key go together" in proc.stderr


def test_a_stalled_request_is_cut_off(tmp_path):
    """A client that never finishes its request head (slowloris) loses its socket."""
    import socket
    relay = Served(tmp_path, "--db", "relay.db", "--handshake-timeout", "0.5",
                   env={"RELAY_API_TOKENS": f"p1:tester:{TOKEN}"})
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
            sock.sendall(b"GET /v5/iot/tunnels/x/device-connect HTTP/1.1\r\nHost: x\r\n")  # never ends
            assert sock.recv(1024) == b""  # closed by the relay (a socket left open would time out: 5 s)
        # a prompt client on the same relay is served
        status, _ = relay.call("GET", "/v5/iot/p1/tunnels")
        assert status == 200
    finally:
        relay.stop()


@pytest.mark.parametrize("command", ["agent", "tunnel", "ssh", "exec"])
def test_every_command_explains_itself(command):
    proc = subprocess.run([sys.executable, "-m", "relay.cli", command, "--help"], env=clean_env(),
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0 and "usage: relay " + command in proc.stdout


def test_agent_starts_from_the_command_line_and_stops_on_sigterm(tmp_path):
    """The agent's options are wired: it starts (no broker reachable, it keeps retrying) and stops cleanly."""
    proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "agent", "--device-id", "dev-1",
                             "--mqtt-url", f"mqtt://127.0.0.1:{unused_port()}"], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode in (0, 130, -signal.SIGTERM), err
    assert "Traceback" not in err


def test_json_logs_carry_tunnel_and_side_and_no_secret(tmp_path):
    import asyncio

    import aiohttp

    relay = Served(tmp_path, "--db", "relay.db", "--log-format", "json",
                   env={"RELAY_API_TOKENS": f"p1:tester:{TOKEN}"})
    try:
        status, created = relay.call("POST", "/v5/iot/p1/tunnels", body={"device_id": "dev-json"})
        assert status == 201

        async def pair() -> None:
            async with aiohttp.ClientSession() as session:
                source = await session.ws_connect(created["tunnel_uri"], headers={"tunnel_access_token": created["tunnel_access_token"]})
                device = await session.ws_connect(created["device_tunnel_uri"],
                                                  headers={"tunnel_access_token": created["device_access_token"]})
                await source.receive(timeout=5)
                await device.close()
                await source.close()

        asyncio.run(pair())
        relay.call("PUT", f"/v5/iot/p1/tunnels/{created['tunnel_id']}")
    finally:
        log = relay.stop()
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    connected = [r for r in records if r["message"] == "connected"]
    assert {(r["tunnel_id"], r["side"]) for r in connected} == {(created["tunnel_id"], "source"), (created["tunnel_id"], "device")}
    assert any(r["message"] == "tunnel closed" and r["tunnel_id"] == created["tunnel_id"] for r in records)
    for secret in (TOKEN, created["tunnel_access_token"], created["device_access_token"]):
        assert secret not in log
