"""Slow, idle and numerous clients of a real `relay serve` (issue 15, finding 2): every
request head and body on both ports has a deadline, idle keep-alive connections are closed,
and one address holds a bounded number of connections (docs/security.md).

The relay's bounds are set to 1 s; a test fails only when a connection is still held after
LIMIT seconds, far more, so a loaded machine does not make it flaky."""

from __future__ import annotations

import re
import select
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from aiohttp.test_utils import unused_port

from tests.test_serve import TOKEN, Served, clean_env

LIMIT = 20.0            # seconds: far above the 1 s bounds the relay is given
DRIP_EVERY = 0.25


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    internal = unused_port()
    served = Served(tmp_path_factory.mktemp("slow"), "--db", "relay.db", "--handshake-timeout", "1",
                    "--keepalive-timeout", "1", "--body-timeout", "1", "--internal-port", str(internal),
                    env={"RELAY_API_TOKENS": f"p1:tester:{TOKEN}"})
    served.internal = internal
    yield served
    served.stop()


def closed_within(sock: socket.socket, limit: float = LIMIT, drip: bytes = b"") -> tuple[bool, bytes]:
    """Whether the relay closed `sock` within `limit` seconds while we sent `drip` one byte
    every DRIP_EVERY seconds (slowloris); and what it answered meanwhile."""
    answered = b""
    deadline = time.monotonic() + limit
    sent = 0
    while time.monotonic() < deadline:   # bounded in time
        readable, _, _ = select.select([sock], [], [], DRIP_EVERY)
        try:
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    return True, answered
                answered += chunk
            if drip:
                sock.sendall(drip[sent % len(drip):sent % len(drip) + 1])
                sent += 1
        except OSError:   # reset or broken pipe: closed by the relay
            return True, answered
    return False, answered


def read_response(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    deadline = time.monotonic() + LIMIT
    while end not in data and time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 1)
        if readable:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n"
DRIPPED_HEAD = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n" + b"X-Padding: slow\r\n" * 1000


def test_the_next_request_head_after_a_first_request_has_a_deadline(relay):
    """The probe: after one whole GET /healthz, dripping the next head held the connection 150 s."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=LIMIT) as sock:
        sock.sendall(HEALTH)
        assert b'{"status":"ok"}' in read_response(sock, b'{"status":"ok"}')
        closed, _ = closed_within(sock, drip=DRIPPED_HEAD)
        assert closed, f"a dripped second request head held the connection for {LIMIT} s"


def test_an_idle_keep_alive_connection_is_closed(relay):
    with socket.create_connection(("127.0.0.1", relay.port), timeout=LIMIT) as sock:
        sock.sendall(HEALTH)
        assert b'{"status":"ok"}' in read_response(sock, b'{"status":"ok"}')
        closed, _ = closed_within(sock)
        assert closed, f"an idle keep-alive connection was held for {LIMIT} s"


def test_the_internal_port_has_the_same_deadlines(relay):
    """The probe: the internal port had no deadline at all (100 of 100 held for 40 s)."""
    with socket.create_connection(("127.0.0.1", relay.internal), timeout=LIMIT) as sock:
        closed, _ = closed_within(sock, drip=DRIPPED_HEAD.replace(b"/healthz", b"/livez"))
        assert closed, f"a dripped first head on the internal port held the connection for {LIMIT} s"
    with socket.create_connection(("127.0.0.1", relay.internal), timeout=LIMIT) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: relay\r\n\r\n")
        assert b'{"status":"ok"}' in read_response(sock, b'{"status":"ok"}')
        closed, _ = closed_within(sock, drip=DRIPPED_HEAD.replace(b"/healthz", b"/livez"))
        assert closed, f"a dripped second head on the internal port held the connection for {LIMIT} s"


def test_a_slow_authenticated_body_gets_408_and_the_connection_is_closed(relay):
    """The probe: an authenticated body sent 1 byte every 2 s was held over 40 s."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=LIMIT) as sock:
        sock.sendall(b"POST /v5/iot/p1/tunnels HTTP/1.1\r\nHost: relay\r\nX-Auth-Token: " + TOKEN.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        closed, answered = closed_within(sock, drip=b" ")
        assert closed, f"a slow body held the connection for {LIMIT} s"
        assert answered.startswith(b"HTTP/1.1 408 ") and b'"TUNNEL.408000"' in answered, answered[:300]
    status, _ = relay.call("GET", "/v5/iot/p1/tunnels")   # a prompt client is served
    assert status == 200


def test_connections_per_address_are_bounded(tmp_path):
    """The probe held 1,000 connections from one address; now the address holds at most
    --max-http-connections-per-address (here 4) that are not tunnels, on each port."""
    internal = unused_port()
    relay = Served(tmp_path, "--db", "relay.db", "--handshake-timeout", "60", "--keepalive-timeout", "60",
                   "--max-http-connections-per-address", "4", "--internal-port", str(internal),
                   env={"RELAY_API_TOKENS": f"p1:tester:{TOKEN}"})
    held: list[socket.socket] = []
    try:
        for port in (relay.port, internal):
            for _ in range(4):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=LIMIT))
            with socket.create_connection(("127.0.0.1", port), timeout=LIMIT) as extra:
                closed, answered = closed_within(extra)
            assert closed and answered.startswith(b"HTTP/1.1 429 "), answered[:300]
            assert b'"TUNNEL.429001"' in answered
        # the held ones still work, and once one goes a newcomer is served
        held[0].sendall(HEALTH)
        assert b'{"status":"ok"}' in read_response(held[0], b'{"status":"ok"}')
        held.pop().close()
        metrics = ""
        deadline = time.monotonic() + LIMIT
        while not metrics and time.monotonic() < deadline:   # the relay sees the close soon after
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{internal}/metrics", timeout=LIMIT) as resp:
                    metrics = resp.read().decode()
            except OSError:   # 429 or reset: the close is not seen yet
                time.sleep(0.1)
        refused = re.search(r"^relay_connections_refused_total (\d+)", metrics, re.M)
        assert refused and int(refused.group(1)) >= 2, metrics
    finally:
        for sock in held:
            sock.close()
        relay.stop()


def test_a_stalled_tls_handshake_has_the_same_deadline(tmp_path):
    """With --tls-cert the relay speaks TLS itself: a client that opens the socket and never
    sends its ClientHello (or drips it) is cut off like a stalled request head, not after
    asyncio's 60 s."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    port = unused_port()
    proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "serve", "--port", str(port), "--db", "relay.db",
                             "--handshake-timeout", "1", "--tls-cert", str(tmp_path / "cert.pem"),
                             "--tls-key", str(tmp_path / "key.pem")],
                            cwd=tmp_path, env=clean_env(RELAY_API_TOKENS=f"p1:tester:{TOKEN}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "relay listening on https://" in proc.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=LIMIT) as sock:
            closed, _ = closed_within(sock, drip=b"\x16\x03\x01\x02\x00")   # the start of a ClientHello, dripped
            assert closed, f"a stalled TLS handshake held the connection for {LIMIT} s"
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
