"""AWS-protocol tunnels end to end: a running relay, clients written from AWS's guides."""

from __future__ import annotations

import hashlib
import os
import random

import aiohttp
import pytest

from relay.web.sockets import HUB
from tests.aws.conftest import BASE, new_client_token, upgrade_headers
from tests.aws.spec_client import (CONNECTION_RESET, CONNECTION_START, DATA, MAX_PAYLOAD, SERVICE_IDS,
                                   SESSION_RESET, STREAM_RESET, STREAM_START, V1, V2, V3, Msg, connect, frame,
                                   open_stream, raw_frame, reset_of)


async def refused(session: aiohttp.ClientSession, relay, query: str = "?local-proxy-mode=source",
                  **headers: str) -> tuple[int, dict]:
    """A raw upgrade request to /tunnel that the relay must refuse: (status, JSON body)."""
    async with session.get(f"{relay.url}/tunnel{query}", headers=upgrade_headers(**headers)) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


def chunks(data: bytes, size: int = 60000) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# -- the handshake ---------------------------------------------------------------------------

@pytest.mark.parametrize("offered, chosen", [
    ((V3,), V3), ((V2,), V2), ((V1,), V1), ((V1, V3, V2), V3), (("x-unknown", V2), V2),
])
async def test_the_highest_offered_subprotocol_is_answered(aws_tunnel, offered, chosen):
    client = await aws_tunnel.connect("source", protocols=offered)
    assert client.protocol == chosen
    # localproxy 3.x waits for SERVICE_IDS whatever the subprotocol; a 1.0 client may not know
    # the type, so for it the message is marked ignorable (docs/aws.md)
    assert await client.recv() == Msg(SERVICE_IDS, ignorable=chosen == V1, available_service_ids=("SSH",))


async def test_no_supported_subprotocol_is_a_400_naming_them(aws_tunnel, session):
    for protocols in ({}, {"Sec-WebSocket-Protocol": "iot-tunnel.v1"},
                      {"Sec-WebSocket-Protocol": "aws.iot.securetunneling-4.0"}):
        status, body = await refused(session, aws_tunnel.relay, **{"access-token": aws_tunnel.source_token},
                                     **protocols)
        assert status == 400 and body["error_code"] == "TUNNEL.400011"
        assert all(p in body["error_msg"] for p in (V1, V2, V3))
    # the refusals used nothing: the token still opens its connection
    client = await aws_tunnel.connect("source")
    assert (await client.recv()).type == SERVICE_IDS


async def test_both_ends_hear_the_tunnel_s_services(aws_factory):
    tunnel = await aws_factory(services=["SSH", "HTTP", "tcp:5900"])
    source = await tunnel.connect("source")
    destination = await tunnel.connect("destination", protocols=(V2,))
    for end in (source, destination):
        assert await end.recv() == Msg(SERVICE_IDS, available_service_ids=("SSH", "HTTP", "tcp:5900"))
    info = await tunnel.info()
    assert info["source_connect_state"]["status"] == "CONNECTED"
    assert info["device_connect_state"]["status"] == "CONNECTED"


async def test_the_token_may_come_in_the_cookie(aws_tunnel):
    client = await aws_tunnel.connect("destination", cookie=True)
    assert (await client.recv()).type == SERVICE_IDS


@pytest.mark.parametrize("query", ["", "?local-proxy-mode=src", "?local-proxy-mode=source&local-proxy-mode=source",
                                   "?local-proxy-mode="])
async def test_the_mode_must_be_source_or_destination(aws_tunnel, session, query):
    status, body = await refused(session, aws_tunnel.relay, query, **{"access-token": aws_tunnel.source_token,
                                                                      "Sec-WebSocket-Protocol": V3})
    assert status == 400 and body["error_code"] == "TUNNEL.400001" and "local-proxy-mode" in body["error_msg"]


async def test_refused_tokens(aws_tunnel, session):
    relay, v3 = aws_tunnel.relay, {"Sec-WebSocket-Protocol": V3}
    cases = [
        ("?local-proxy-mode=source", {}, 401, "TUNNEL.401000", "access-token"),                   # none
        ("?local-proxy-mode=source", {"access-token": "x" * 43}, 401, "TUNNEL.401000", "unknown"),
        ("?local-proxy-mode=source", {"access-token": "x" * 300}, 401, "TUNNEL.401000", "1-256"),
        ("?local-proxy-mode=destination", {"access-token": aws_tunnel.source_token}, 401, "TUNNEL.401000",
         "local-proxy-mode=source"),                                                               # wrong mode
        ("?local-proxy-mode=source", {"access-token": aws_tunnel.destination_token}, 401, "TUNNEL.401000",
         "local-proxy-mode=destination"),
        ("?local-proxy-mode=source", {"access-token": aws_tunnel.source_token,
                                      "Cookie": f"awsiot-tunnel-token={aws_tunnel.source_token}"},
         400, "TUNNEL.400001", "once"),                                                            # two tokens
        ("?local-proxy-mode=source", {"access-token": aws_tunnel.source_token, "client-token": "short"},
         400, "TUNNEL.400001", "client-token"),
        ("?local-proxy-mode=source", {"access-token": aws_tunnel.source_token, "client-token": "x_" * 20},
         400, "TUNNEL.400001", "client-token"),
    ]
    for query, headers, status, code, fragment in cases:
        got, body = await refused(session, relay, query, **v3, **headers)
        assert (got, body["error_code"]) == (status, code), (headers, body)
        assert fragment in body["error_msg"], body
    async with session.get(f"{relay.url}/tunnel?local-proxy-mode=source",
                           headers={"access-token": aws_tunnel.source_token}) as resp:   # not an upgrade
        assert resp.status == 400 and (await resp.json())["error_code"] == "TUNNEL.400010"
    # none of these used a token up
    for mode in ("source", "destination"):
        assert (await (await aws_tunnel.connect(mode)).recv()).type == SERVICE_IDS


async def test_huawei_and_aws_tokens_do_not_mix(relay, aws_tunnel, session):
    huawei = await relay.create("dev-2")
    status, body = await refused(session, relay, **{"access-token": huawei["tunnel_access_token"],
                                                    "Sec-WebSocket-Protocol": V3})
    assert status == 403 and body["error_code"] == "TUNNEL.403003" and "Huawei" in body["error_msg"]
    url = f"{relay.url}/v5/iot/tunnels/{aws_tunnel.tunnel_id}/source-connect"
    async with session.get(url, headers=upgrade_headers(tunnel_access_token=aws_tunnel.source_token)) as resp:
        body = await resp.json()
        assert resp.status == 403 and body["error_code"] == "TUNNEL.403003" and "/tunnel" in body["error_msg"]
    url = f"{relay.url}/v5/iot/tunnels/{aws_tunnel.tunnel_id}/device-connect"
    async with session.get(url, headers=upgrade_headers(tunnel_access_token=aws_tunnel.destination_token)) as resp:
        assert resp.status == 403
    assert (await (await aws_tunnel.connect("source")).recv()).type == SERVICE_IDS


# -- client tokens ---------------------------------------------------------------------------

async def test_without_a_client_token_an_access_token_opens_one_connection(aws_tunnel, session):
    first = await aws_tunnel.connect("source")
    assert (await first.recv()).type == SERVICE_IDS
    await first.close()
    for client_token in (None, new_client_token()):
        headers = {"access-token": aws_tunnel.source_token, "Sec-WebSocket-Protocol": V3}
        if client_token:
            headers["client-token"] = client_token
        status, body = await refused(session, aws_tunnel.relay, **headers)
        assert status == 401 and body["error_code"] == "TUNNEL.401001", body


async def test_a_client_token_lets_its_agent_reconnect_and_nobody_else(aws_tunnel, session):
    mine, theirs = new_client_token(), new_client_token()
    source = await aws_tunnel.connect("source", client_token=mine)
    destination = await aws_tunnel.connect("destination", client_token=mine)   # the sides are apart
    assert (await source.recv()).type == SERVICE_IDS and (await destination.recv()).type == SERVICE_IDS
    await open_stream(source, destination)
    again = await aws_tunnel.connect("source", client_token=mine)      # replaces the first one
    assert (await again.recv()).type == SERVICE_IDS
    assert await source.expect_close() == (4000, "replaced by a newer connection")
    assert await destination.recv() == reset_of(1)
    for other in (theirs, None):
        headers = {"access-token": aws_tunnel.source_token, "Sec-WebSocket-Protocol": V3}
        if other:
            headers["client-token"] = other
        status, body = await refused(session, aws_tunnel.relay, **headers)
        assert status == 401 and body["error_code"] == "TUNNEL.401001"
    await again.close()
    back = await aws_tunnel.connect("source", client_token=mine)
    assert (await back.recv()).type == SERVICE_IDS


async def test_client_tokens_are_compared_exactly(aws_tunnel, session):
    mine = "A" * 32
    first = await aws_tunnel.connect("source", client_token=mine)
    assert (await first.recv()).type == SERVICE_IDS
    status, body = await refused(session, aws_tunnel.relay, **{"access-token": aws_tunnel.source_token,
                                                               "Sec-WebSocket-Protocol": V3, "client-token": "a" * 32})
    assert status == 401 and body["error_code"] == "TUNNEL.401001"


# -- relaying --------------------------------------------------------------------------------

async def test_a_stream_relays_bytes_exactly_both_ways(aws_tunnel):
    source, destination = await aws_tunnel.pair()
    start = Msg(STREAM_START, stream_id=1, service_id="SSH", connection_id=1)
    await source.send(start)
    assert await destination.recv() == start
    up, down = os.urandom(1_000_000), os.urandom(700_000)
    for piece in chunks(up):
        await source.send(Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=piece))
    got = await destination.recv_data(len(up))
    assert hashlib.sha256(got[(1, 1)]).digest() == hashlib.sha256(up).digest()
    for piece in chunks(down, MAX_PAYLOAD):
        await destination.send(Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=piece))
    got = await source.recv_data(len(down))
    assert hashlib.sha256(got[(1, 1)]).digest() == hashlib.sha256(down).digest()
    reset = Msg(STREAM_RESET, stream_id=1, service_id="SSH")
    await destination.send(reset)
    assert await source.recv() == reset


async def test_messages_are_relayed_unchanged(aws_tunnel):
    """The relay forwards the sender's bytes, not a re-encoding: field order, a negative
    stream id and the `ignorable` flag come through as they were."""
    source, destination = await aws_tunnel.pair()
    reordered = (b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"   # streamId = -1 (ten bytes), before the type
                 b"\x18\x01" b"\x08\x02" b"\x2a\x03SSH" b"\x38\x01")  # ignorable, STREAM_START, serviceId, connId
    await source.send_bytes(raw_frame(reordered))
    msg = await destination.recv()
    assert destination.raw[-1] == reordered
    assert (msg.type, msg.stream_id, msg.ignorable, msg.service_id) == (STREAM_START, -1, True, "SSH")


async def test_several_connections_multiplexed_on_v3(aws_factory):
    tunnel = await aws_factory(services=["SSH", "HTTP"])
    source, destination = await tunnel.pair()
    await source.send(Msg(STREAM_START, stream_id=7, service_id="SSH", connection_id=1),
                      Msg(STREAM_START, stream_id=3, service_id="HTTP", connection_id=1))
    for conn in (2, 3):
        await source.send(Msg(CONNECTION_START, stream_id=7, service_id="SSH", connection_id=conn))
    received = [await destination.recv() for _ in range(4)]
    assert [(m.type, m.stream_id, m.connection_id) for m in received] == [
        (STREAM_START, 7, 1), (STREAM_START, 3, 1), (CONNECTION_START, 7, 2), (CONNECTION_START, 7, 3)]
    rng = random.Random(9)
    sent: dict[tuple[int, int], bytearray] = {}
    total = 0
    for _ in range(200):   # interleaved, in both directions
        stream, service, conn = rng.choice([(7, "SSH", 1), (7, "SSH", 2), (7, "SSH", 3), (3, "HTTP", 1)])
        piece = os.urandom(rng.randrange(1, 5000))
        sent.setdefault((stream, conn), bytearray()).extend(piece)
        total += len(piece)
        await destination.send(Msg(DATA, stream_id=stream, service_id=service, connection_id=conn, payload=piece))
    got = await source.recv_data(total)
    assert {k: hashlib.sha256(v).hexdigest() for k, v in got.items()} == \
           {k: hashlib.sha256(v).hexdigest() for k, v in sent.items()}
    await source.send(Msg(CONNECTION_RESET, stream_id=7, service_id="SSH", connection_id=2))
    assert await destination.recv() == Msg(CONNECTION_RESET, stream_id=7, service_id="SSH", connection_id=2)


async def test_messages_split_across_frames_and_packed_in_one(aws_tunnel):
    source, destination = await aws_tunnel.pair()
    msgs = [Msg(STREAM_START, stream_id=2, service_id="SSH", connection_id=1)] + [
        Msg(DATA, stream_id=2, service_id="SSH", connection_id=1, payload=os.urandom(n)) for n in (1, 300, 40000, 9)]
    stream = frame(*msgs)
    # cut inside a length prefix, inside a protobuf key, inside a payload, and one byte alone
    cuts = [1, 3, 5, 6, 400, 20000, len(stream) - 1]
    await source.send_in_pieces(stream, cuts)
    assert [await destination.recv() for _ in msgs] == msgs
    await destination.send(*msgs[1:])   # several messages in one frame
    assert [await source.recv() for _ in msgs[1:]] == msgs[1:]


async def test_a_message_to_an_absent_peer_is_answered_with_stream_reset(aws_tunnel):
    source = await aws_tunnel.connect("source")
    assert (await source.recv()).type == SERVICE_IDS
    await source.send(Msg(STREAM_START, stream_id=5, service_id="SSH", connection_id=1))
    reset = await source.recv()
    assert (reset.type, reset.stream_id) == (STREAM_RESET, 5)


# -- replaced and departing ends -------------------------------------------------------------

async def test_a_replaced_destination_resets_the_streams(aws_tunnel):
    token = new_client_token()
    source = await aws_tunnel.connect("source")
    old = await aws_tunnel.connect("destination", client_token=token)
    assert (await source.recv()).type == SERVICE_IDS and (await old.recv()).type == SERVICE_IDS
    await source.send(Msg(STREAM_START, stream_id=1, service_id="SSH", connection_id=1))
    assert (await old.recv()).type == STREAM_START
    new = await aws_tunnel.connect("destination", client_token=token)
    assert await old.expect_close() == (4000, "replaced by a newer connection")
    assert await source.recv() == reset_of(1)
    assert (await new.recv()).type == SERVICE_IDS
    # a new stream goes to the new destination
    await source.send(Msg(STREAM_START, stream_id=2, service_id="SSH", connection_id=1),
                      Msg(DATA, stream_id=2, service_id="SSH", connection_id=1, payload=b"hi"))
    assert [m.type for m in (await new.recv(), await new.recv())] == [STREAM_START, DATA]


async def test_a_departing_end_resets_the_other(aws_tunnel):
    source, destination = await aws_tunnel.pair()
    await open_stream(source, destination)
    await destination.close()
    assert await source.recv() == reset_of(1)
    info = await aws_tunnel.info()
    assert info["device_connect_state"]["status"] == "DISCONNECTED"


# -- what a client may not send --------------------------------------------------------------

async def test_an_oversize_payload_is_closed_with_1009(aws_tunnel):
    source, destination = await aws_tunnel.pair()
    await source.send(Msg(STREAM_START, stream_id=1, service_id="SSH", connection_id=1),
                      Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=b"x" * MAX_PAYLOAD))
    assert (await destination.recv()).type == STREAM_START
    assert len((await destination.recv()).payload) == MAX_PAYLOAD   # exactly the limit is fine
    await source.send(Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=b"x" * (MAX_PAYLOAD + 1)))
    code, _ = await source.expect_close()
    assert code == 1009
    assert await destination.recv() == reset_of(1)   # never the oversize message


@pytest.mark.parametrize("body", [
    b"\xff\xff\xff",                  # not protobuf
    b"\x10\x01",                      # no type
    b"\x08\x01\x10",                  # a truncated varint
    b"\x08\x09\x10\x01",              # an unknown type, not ignorable
    b"\x08\x01\x10\x01\x2a\x04HTTP",  # a service that is not the tunnel's
    b"",                              # an empty message
])
async def test_malformed_messages_are_closed_with_4400(aws_tunnel, body):
    source, destination = await aws_tunnel.pair()
    await open_stream(source, destination)
    await source.send_bytes(raw_frame(body))
    code, reason = await source.expect_close()
    assert code == 4400 and reason
    assert await destination.recv() == reset_of(1)


@pytest.mark.parametrize("mode, msg", [
    ("destination", Msg(STREAM_START, stream_id=1, service_id="SSH", connection_id=1)),
    ("destination", Msg(CONNECTION_START, stream_id=1, service_id="SSH", connection_id=2)),
    ("source", Msg(SERVICE_IDS, available_service_ids=("SSH",))),
    ("source", Msg(SESSION_RESET)),
])
async def test_messages_this_side_may_not_send_are_closed_with_4403(aws_tunnel, mode, msg):
    source, destination = await aws_tunnel.pair()
    await open_stream(source, destination)
    sender, peer = (source, destination) if mode == "source" else (destination, source)
    await sender.send(msg)
    code, reason = await sender.expect_close()
    assert code == 4403 and reason
    assert await peer.recv() == reset_of(1)


async def test_an_ignorable_message_of_an_unknown_type_is_skipped(aws_tunnel):
    """The guides: a message of an unknown type marked ignorable may be skipped safely. The
    relay skips it (it is not forwarded) and the connection goes on."""
    source, destination = await aws_tunnel.pair()
    after = Msg(STREAM_RESET, stream_id=1, service_id="SSH")
    await destination.send(Msg(9, stream_id=1, ignorable=True, payload=b"from a newer version"), after)
    assert await source.recv() == after


async def test_a_frame_over_the_guides_limit_is_closed_with_1009(aws_tunnel):
    source, destination = await aws_tunnel.pair()
    data = frame(Msg(STREAM_START, stream_id=1, service_id="SSH", connection_id=1),
                 *[Msg(DATA, stream_id=1, service_id="SSH", connection_id=1, payload=b"y" * 60000)] * 2)
    await source.send_bytes(data[:131076])   # exactly the limit is fine
    assert (await destination.recv()).type == STREAM_START
    await source.send_bytes(data[131076:] + b"z" * 131077)
    code, _ = await source.expect_close()
    assert code == 1009


async def test_text_frames_are_closed_with_1003(aws_tunnel):
    source, destination = await aws_tunnel.pair()
    await source.ws.send_str('{"operation_type": "connect"}')
    code, _ = await source.expect_close()
    assert code == 1003


# -- the tunnel's life -----------------------------------------------------------------------

async def test_closing_the_tunnel_closes_both_ends_and_refuses_new_ones(aws_tunnel, session):
    source, destination = await aws_tunnel.pair()
    assert (await aws_tunnel.relay.call("PUT", f"{BASE}/{aws_tunnel.tunnel_id}"))[0] == 204
    assert await source.expect_close() == (1000, "the tunnel was closed")
    assert await destination.expect_close() == (1000, "the tunnel was closed")
    status, body = await refused(session, aws_tunnel.relay, **{"access-token": aws_tunnel.destination_token,
                                                               "Sec-WebSocket-Protocol": V3},
                                 query="?local-proxy-mode=destination")
    assert status == 410 and body["error_code"] == "TUNNEL.410000"


async def test_an_expired_tunnel_closes_its_ends_and_answers_410(relay, aws_factory, session):
    tunnel = await aws_factory(expires_in=60)
    source = await tunnel.connect("source", client_token=new_client_token())
    assert (await source.recv()).type == SERVICE_IDS
    relay.clock.advance(61)
    assert await source.expect_close() == (1000, "the tunnel expired")
    later = await aws_factory("dev-2", expires_in=60)
    relay.clock.advance(61)
    status, body = await refused(session, relay, **{"access-token": later.source_token, "Sec-WebSocket-Protocol": V3})
    assert status == 410 and "expired" in body["error_msg"]
    assert (await later.info())["close_reason"] == "expired"


async def test_rotation_closes_the_old_token_s_connection_and_refuses_it(aws_tunnel, session):
    source, destination = await aws_tunnel.pair()
    await open_stream(source, destination)
    status, rotated = await aws_tunnel.relay.call("POST", f"{BASE}/{aws_tunnel.tunnel_id}/rotate-token",
                                                  json={"side": "device"})
    assert status == 200
    assert await destination.expect_close() == (4001, "the access token was rotated")
    assert await source.recv() == reset_of(1)
    status, body = await refused(session, aws_tunnel.relay, "?local-proxy-mode=destination",
                                 **{"access-token": aws_tunnel.destination_token, "Sec-WebSocket-Protocol": V3})
    assert status == 401 and body["error_code"] == "TUNNEL.401000"
    new = await aws_tunnel.connect("destination", token=rotated["destination_access_token"])
    assert (await new.recv()).type == SERVICE_IDS


async def test_the_per_address_limit_counts_aws_connections(relay_factory, session):
    relay = await relay_factory(max_connections_per_address=1)
    body = await relay.create("dev-1", protocol="aws", services=["SSH"])
    first = await connect(session, relay.url, body["source_access_token"], "source")
    try:
        status, answer = await refused(session, relay, "?local-proxy-mode=destination",
                                       **{"access-token": body["destination_access_token"],
                                          "Sec-WebSocket-Protocol": V3})
        assert status == 429 and answer["error_code"] == "TUNNEL.429000"
    finally:
        await first.close()


async def test_shutdown_closes_aws_ends_with_1001_and_refuses_new_ones(aws_tunnel, session):
    source, destination = await aws_tunnel.pair()
    hub = aws_tunnel.relay.client.server.app[HUB]
    await hub.shutdown()
    assert (await source.expect_close())[0] == 1001
    assert (await destination.expect_close())[0] == 1001
    status, body = await refused(session, aws_tunnel.relay, **{"access-token": aws_tunnel.source_token,
                                                               "Sec-WebSocket-Protocol": V3})
    assert status == 503 and body["error_code"] == "TUNNEL.503001"
