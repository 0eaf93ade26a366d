"""Faults under AWS-protocol tunnels: the destination's network cut without a close (in a
network namespace the test makes), Redis restarting under replicas, a replica killed. What
the other end is told, and that the tunnel works again once the part is back.

The fixtures are tests/faults' (network namespace, relay on a chosen address) and
tests/scale's (Redis, three replicas)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time

import aiohttp
import pytest

from redis.exceptions import ConnectionError as RedisConnectionError

from relay.web.sockets import HUB
from tests.aws.helpers import Inbox, bridged_stream, relays_exactly
from tests.aws.conftest import new_client_token, upgrade_headers
from tests.aws.spec_client import DATA, SERVICE_IDS, STREAM_RESET, STREAM_START, V3, Msg, connect, reset_of
from tests.aws.test_replicas import create
from tests.device.conftest import eventually, stop_process
from tests.faults.conftest import netns, relay_on  # noqa: F401  (a network namespace; a relay on its address)
from tests.scale.conftest import rig  # noqa: F401  (Redis and three replicas)
from tests.test_serve import SRC

# -- 1. the destination's network is cut --------------------------------------------------------

DESTINATION = textwrap.dedent('''
    """A minimal AWS destination (the tests' spec client): answers each DATA with a DATA of
    "echo:" + its payload on the same stream, pings the relay itself (so it notices a dead link),
    and reconnects with its client token, with backoff, whenever the connection ends."""
    import asyncio, sys, time
    import aiohttp
    from tests.aws.spec_client import DATA, V3, Msg, SpecClient

    async def main(url, token, client_token, lifetime):
        deadline = time.monotonic() + lifetime
        delay = 0.2
        timeout = aiohttp.ClientTimeout(total=None, connect=2, sock_connect=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while time.monotonic() < deadline:
                try:
                    ws = await http.ws_connect(url, headers={"access-token": token, "client-token": client_token},
                                               protocols=(V3,), heartbeat=1.0, autoclose=False)
                    print("connected", flush=True)
                    delay = 0.2
                    end = SpecClient(ws)
                    try:
                        while True:
                            msg = await end.recv(timeout=3600)
                            if msg.type == DATA:
                                await end.send(Msg(DATA, stream_id=msg.stream_id, service_id=msg.service_id,
                                                   connection_id=msg.connection_id, payload=b"echo:" + msg.payload))
                    except Exception as exc:
                        print("closed", ws.close_code, type(exc).__name__, flush=True)
                    await ws.close()
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    print("failed", type(exc).__name__, getattr(exc, "status", ""), flush=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
''')


async def _echo(source: Inbox, first: int, timeout: float = 20) -> int:
    """A stream to the destination that echoes "hello": its id (the destination may not be
    linked yet: STREAM_RESET, try again with another stream, for at most `timeout` seconds)."""
    async with asyncio.timeout(timeout):
        stream = first
        while True:
            await source.send(Msg(STREAM_START, stream_id=stream, service_id="SSH", connection_id=1),
                              Msg(DATA, stream_id=stream, service_id="SSH", connection_id=1, payload=b"hello"))
            msg = await source.recv(timeout)
            if msg == Msg(DATA, stream_id=stream, service_id="SSH", connection_id=1, payload=b"echo:hello"):
                return stream
            # no peer: both messages answered
            assert msg == Msg(STREAM_RESET, stream_id=stream, service_id="SSH", connection_id=1), msg
            assert await source.recv(timeout) == msg
            stream += 1
            await asyncio.sleep(0.2)


async def _device_state(relay, tunnel_id: str) -> str:  # type: ignore[no-untyped-def]
    status, body = await relay.call("GET", f"/v5/iot/proj-a/tunnels/{tunnel_id}")
    assert status == 200, body
    return body["device_connect_state"]["status"]


@pytest.mark.timeout(120)
async def test_a_cut_destination_network_is_noticed_and_the_destination_comes_back_with_its_client_token(
        netns, relay_on, tmp_path):  # noqa: F811
    interval = 1.0
    relay = await relay_on(host=netns.host_addr, heartbeat_interval=interval)
    created = await relay.create("thing-net", protocol="aws", services=["SSH"])
    tunnel_id = created["tunnel_id"]
    base = f"http://{netns.host_addr}:{relay.settings.port}"
    script = tmp_path / "destination.py"
    script.write_text(DESTINATION)
    log_path = tmp_path / "destination.log"
    with open(log_path, "w") as log:
        destination = subprocess.Popen(
            netns.exec_args("env", f"PYTHONPATH={SRC}", sys.executable, str(script),
                            base.replace("http://", "ws://") + "/tunnel?local-proxy-mode=destination",
                            created["destination_access_token"], new_client_token(), "100"),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as http:
            source = Inbox(await connect(http, base, created["source_access_token"], "source",
                                         client_token=new_client_token()))
            try:
                assert (await source.recv()).type == SERVICE_IDS
                await eventually(lambda: _state_is(relay, tunnel_id, "CONNECTED"), timeout=15)
                stream = await _echo(source, 1)

                netns.link(up=False)        # no FIN, no RST: the packets just stop
                cut = time.monotonic()
                # The source is told within the heartbeat bound: two silent intervals, then a few
                # seconds of slack for a loaded machine (a hang would take far longer).
                told = await source.recv(timeout=6 * interval)
                print(f"source told {told} after {time.monotonic() - cut:.2f} s")
                assert told == reset_of(stream)
                await eventually(lambda: _state_is(relay, tunnel_id, "DISCONNECTED"), timeout=10)
                # The source stays and hears that nobody is at the other end.
                await source.send(Msg(STREAM_START, stream_id=stream + 1, service_id="SSH", connection_id=1))
                assert await source.recv() == Msg(STREAM_RESET, stream_id=stream + 1, service_id="SSH",
                                                  connection_id=1)

                netns.link(up=True)
                # The destination notices its dead socket by itself (its own pings), reconnects
                # with the same access token and its client token, and the tunnel works again.
                await eventually(lambda: _state_is(relay, tunnel_id, "CONNECTED"), timeout=30)
                await _echo(source, stream + 2)
            finally:
                await source.close()
    finally:
        netns.link(up=True)
        stop_process(destination)
    lines = log_path.read_text().splitlines()
    assert lines.count("connected") >= 2, lines
    assert not any(line.startswith("failed") and "401" in line for line in lines), lines


async def _state_is(relay, tunnel_id: str, state: str) -> bool:  # type: ignore[no-untyped-def]
    return await _device_state(relay, tunnel_id) == state


# -- 2. and 3. replicas: Redis restarts, a replica is killed ------------------------------------


async def _split(session: aiohttp.ClientSession, rig, body: dict, source_replica, destination_replica,  # noqa: F811
                 client_token: str) -> tuple[Inbox, Inbox, int]:
    """The source on one replica, the destination on another, bridged: (source, destination,
    a stream started from the source)."""
    source = Inbox(await connect(session, source_replica.base, body["source_access_token"], "source",
                                 client_token=new_client_token()))
    destination = Inbox(await connect(session, destination_replica.base, body["destination_access_token"],
                                      "destination", client_token=client_token))
    for end in (source, destination):
        assert await end.recv() == Msg(SERVICE_IDS, available_service_ids=("SSH",))
    return source, destination, await bridged_stream(source, destination)


async def _call(rig, base: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:  # noqa: F811
    """rig.call off the event loop, so that the clients keep answering the replicas' pings."""
    return await asyncio.to_thread(rig.call, base, method, path, body)


async def _stop_redis(rig, base: str) -> None:  # noqa: F811
    await asyncio.to_thread(rig.redis.stop)
    status, err = await _call(rig, base, "GET", "/v5/iot/p1/tunnels")
    assert status == 503 and err["error_code"] == "TUNNEL.503000"


async def _start_redis(rig, base: str, tunnel_id: str) -> None:  # noqa: F811
    """Start Redis again (its append-only file kept the tunnels) and wait until `base` answers
    for the tunnel."""
    await asyncio.to_thread(rig.redis.start)

    async def open_again() -> bool:
        status, info = await _call(rig, base, "GET", f"/v5/iot/p1/tunnels/{tunnel_id}")
        return status == 200 and info["status"] == "OPEN"

    await eventually(open_again, timeout=15, interval=0.2)


async def _retry_503(attempt, tries: int = 20):  # type: ignore[no-untyped-def]
    """`attempt()` again while the relay answers 503 (a REST call's (status, body), or a
    WebSocket handshake refused), at most `tries` times, 0.2 s apart; what it gave last."""
    for _ in range(tries - 1):
        try:
            result = await attempt()
        except aiohttp.WSServerHandshakeError as err:
            if err.status != 503:
                raise
        else:
            if not (isinstance(result, tuple) and result[0] == 503):
                return result
        await asyncio.sleep(0.2)
    return await attempt()


@pytest.mark.timeout(120)
async def test_aws_tunnels_on_two_replicas_relay_through_a_redis_restart_and_keep_their_tokens(rig):  # noqa: F811
    r1, r2, r3 = rig.replicas
    body = create(rig, r3.base, "thing-redis")
    async with aiohttp.ClientSession() as session:
        source, destination, stream = await _split(session, rig, body, r1, r2, new_client_token())
        try:
            await relays_exactly(source, destination, stream, started=True)
            await _stop_redis(rig, r3.base)
            # tunnel data never goes through Redis: the bridged pair relays while it is down
            await relays_exactly(source, destination, stream, size=100_000, started=True)
            await _start_redis(rig, r3.base, body["tunnel_id"])
            await relays_exactly(source, destination, stream, size=100_000, started=True)
            # The client-token claim came back with Redis: the access token is still bound to
            # the destination's client token; and the token lookup finds a tunnel made after.
            # (Right after the restart a replica may answer 503 once per stale Redis connection
            # it pooled: docs/aws.md, 5xx means retry with backoff, as clients do.)

            async def reuse() -> tuple[int, dict]:
                async with session.get(f"{r3.base}/tunnel?local-proxy-mode=destination", headers=upgrade_headers(
                        **{"access-token": body["destination_access_token"], "Sec-WebSocket-Protocol": V3})) as resp:
                    return resp.status, await resp.json()

            status, refused = await _retry_503(reuse)
            assert status == 401 and refused["error_code"] == "TUNNEL.401001", refused
            status, later = await _retry_503(lambda: _call(rig, r2.base, "POST", "/v5/iot/p1/tunnels", {
                "device_id": "thing-after", "protocol": "aws", "services": ["SSH"]}))
            assert status == 201, later
            fresh = await _retry_503(lambda: connect(session, r1.base, later["source_access_token"], "source"))
            assert (await fresh.recv(timeout=10)).type == SERVICE_IDS
            await fresh.close()
        finally:
            await source.close()
            await destination.close()


@pytest.mark.timeout(120)
async def test_a_destination_reconnecting_with_its_client_token_after_a_redis_restart_replaces_the_old_one(rig):  # noqa: F811
    """After Redis restarted, the destination (on r2) reconnects on r3 with its client token:
    the new connection must take the side (the old one hears 4000, the source a reset of its stream)
    and be bridged to the source (on r1)."""
    r1, r2, r3 = rig.replicas
    body = create(rig, r3.base, "thing-again")
    client_token = new_client_token()
    async with aiohttp.ClientSession() as session:
        source, destination, stream = await _split(session, rig, body, r1, r2, client_token)
        again = None
        try:
            await _stop_redis(rig, r3.base)
            await _start_redis(rig, r3.base, body["tunnel_id"])
            again = Inbox(await _retry_503(lambda: connect(session, r3.base, body["destination_access_token"],
                                                           "destination", client_token=client_token)))
            assert (await again.recv()).type == SERVICE_IDS
            assert await destination.expect_close(timeout=15) == (4000, "replaced by a newer connection"), \
                "the old destination was never replaced"
            assert await source.recv() == reset_of(stream)
            stream = await bridged_stream(source, again, first=stream + 1)
            await relays_exactly(source, again, stream, started=True)
        finally:
            for end in (source, destination, again):
                if end is not None:
                    await end.close()


async def test_an_end_whose_lease_claim_failed_is_claimed_again_and_reconciliation_goes_on(
        relay, aws_tunnel, monkeypatch):
    """What the test above meets, in one process: a store error while a new end claims its
    lease (the Redis client's pooled connection died in a restart). The end is connected and
    answered; the claim must be made again, and the replica's reconciliation (Hub.reconcile,
    run every --reconcile-interval by each of several replicas: it renews the leases of every
    end the replica holds and bridges its destinations) must not fail because of it."""
    hub = relay.client.server.app[HUB]
    real_claim = hub.cluster.claim
    failures = [RedisConnectionError("Connection closed by server.")]

    async def claim(tunnel_id, side):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return await real_claim(tunnel_id, side)

    monkeypatch.setattr(hub.cluster, "claim", claim)
    source, destination = await aws_tunnel.pair()   # the source's claim fails
    assert not failures
    await relays_exactly(source, destination, stream_id=1, size=10_000)
    for _ in range(2):
        await hub.reconcile()

    async def both_connected() -> bool:
        info = await aws_tunnel.info()
        return info["source_connect_state"]["status"] == info["device_connect_state"]["status"] == "CONNECTED"

    await eventually(both_connected, timeout=5)


@pytest.mark.timeout(120)
async def test_a_killed_replica_is_noticed_by_the_other_end_and_the_destination_reconnects_elsewhere(rig):  # noqa: F811
    r1, r2, r3 = rig.replicas
    body = create(rig, r3.base, "thing-kill")
    client_token = new_client_token()
    async with aiohttp.ClientSession() as session:
        source, destination, stream = await _split(session, rig, body, r1, r2, client_token)
        try:
            await relays_exactly(source, destination, stream, started=True)
            r2.signal(signal.SIGKILL)      # no close frame, no drain: the process is gone
            # The source's replica loses the bridge and tells the source; the destination's
            # connection is simply gone.
            assert await source.recv(timeout=20) == reset_of(stream)
            code, _ = await destination.expect_close(timeout=20)
            assert code not in (1000, 4000, 4001)   # no close frame came (an abnormal end)
            await asyncio.to_thread(r2.wait)
            # The destination reconnects with its client token on another replica.
            again = Inbox(await connect(session, r3.base, body["destination_access_token"], "destination",
                                        client_token=client_token))
            try:
                assert (await again.recv(timeout=10)).type == SERVICE_IDS
                stream = await bridged_stream(source, again, first=stream + 1)
                await relays_exactly(source, again, stream, started=True)

                async def connected() -> bool:
                    status, info = await _call(rig, r1.base, "GET", f"/v5/iot/p1/tunnels/{body['tunnel_id']}")
                    return status == 200 and info["device_connect_state"]["status"] == "CONNECTED"

                await eventually(connected, timeout=15, interval=0.2)
            finally:
                await again.close()
        finally:
            await source.close()
            await destination.close()
