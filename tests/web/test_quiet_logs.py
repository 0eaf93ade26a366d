"""What a real `relay serve` logs and shows about itself when clients misbehave (issue 15,
findings 7 and 11): no token reaches a log, malformed requests and clients that leave are one
line at the right level, and the Server header names no versions."""

from __future__ import annotations

import select
import socket
import time

import pytest

from tests.test_serve import TOKEN, Served

SECRET = "tunnel-token-that-must-never-be-logged-0123456789"
PAD = "x" * 9000   # a header line over aiohttp's 8190-byte limit


def exchange(port: int, data: bytes, *, leave_early: bool = False) -> bytes:
    """Send `data` on a fresh connection; what the relay answered (nothing when we leave early)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(data)
        if leave_early:
            return b""
        answer = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:   # bounded in time
            readable, _, _ = select.select([sock], [], [], 1)
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
                if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1]:
                    break
        return answer


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Runs the relay at DEBUG (the most it ever logs), sends every kind of misbehaviour once,
    stops it; returns (answers, its whole log)."""
    relay = Served(tmp_path_factory.mktemp("quiet"), "--db", "relay.db", "--log-level", "DEBUG",
                   env={"RELAY_API_TOKENS": f"p1:tester:{TOKEN}"})
    head = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n"
    answers = {}
    try:
        for name, line in [("x-auth-token", f"X-Auth-Token: {TOKEN}{PAD}"),
                           ("cookie", f"Cookie: tunnel_access_token={SECRET}{PAD}"),
                           ("authorization", f"Authorization: Bearer {SECRET}{PAD}"),
                           ("tunnel-header", f"tunnel_access_token: {SECRET}{PAD}")]:
            answers[name] = exchange(relay.port, head + line.encode() + b"\r\n\r\n")
        answers["garbage"] = exchange(relay.port, b"\x16\x03\x01 hello, not HTTP\r\n\r\n")
        answers["second-malformed"] = exchange(relay.port, head + b"\r\nBROKEN LINE\r\n\r\n")
        answers["healthz"] = exchange(relay.port, head + b"\r\n")
        # an authenticated body the client abandons halfway
        exchange(relay.port, b"POST /v5/iot/p1/tunnels HTTP/1.1\r\nHost: relay\r\nX-Auth-Token: " + TOKEN.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"device_id\":", leave_early=True)
        time.sleep(0.5)   # let the relay notice the abandoned body before it stops
    finally:
        log = relay.stop()
    return answers, log


def test_no_token_reaches_the_log(session):
    answers, log = session
    assert all(a.startswith(b"HTTP/1.") and b" 400 " in a.split(b"\r\n")[0]
               for name, a in answers.items() if name in ("x-auth-token", "cookie", "authorization", "tunnel-header"))
    assert TOKEN not in log and SECRET not in log
    assert TOKEN[:16] not in log and SECRET[:16] not in log   # not even the start of one
    # nor is it echoed in the answer, which proxies and clients may log
    assert not any(TOKEN[:16].encode() in a or SECRET[:16].encode() in a for a in answers.values())
    assert b"malformed HTTP request (LineTooLong)" in answers["cookie"]


def test_malformed_requests_are_one_info_line_each_without_traceback(session):
    _, log = session
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    rejected = [line for line in log.splitlines() if "rejected a malformed HTTP request" in line]
    assert len(rejected) == 6, log[-3000:]                 # four oversized headers, garbage, a broken line
    assert all(" INFO " in line for line in rejected)
    assert any("LineTooLong" in line for line in rejected)


def test_a_client_leaving_mid_body_is_not_an_unexpected_error(session):
    _, log = session
    assert "unexpected error" not in log
    assert "the client left before POST /v5/iot/p1/tunnels was answered" in log


def test_the_server_header_names_no_versions(session):
    answers, _ = session
    for name in ("healthz", "garbage", "x-auth-token"):
        headers = answers[name].split(b"\r\n\r\n", 1)[0].lower()
        assert b"\r\nserver: iot-tunnel-relay\r\n" in headers + b"\r\n", (name, headers)
        assert b"python" not in headers and b"aiohttp" not in headers, (name, headers)
