"""What the relay tells an end about its peer, as AWS's localproxy acts on it (issue 14): the
ends here are tests/aws/localproxy_like.py's, which route, drop and stop reading where
localproxy 3.3.1 (and 1.x) does. In each message format: V1 (a tunnel of one service, or a
1.x client), V2 and V3 (several services, routed by service id, V3 also by connection id)."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from relay.client.aws_tunnel import forward_aws_async
from tests.aws.conftest import BASE, new_client_token
from tests.aws.localproxy_like import Localproxy
from tests.aws.spec_client import DATA, SERVICE_IDS, V1, V2, V3, Msg, frame

TWO = ("SSH", "HTTP")

# (subprotocol, services, localproxy generation): the message formats localproxy speaks
FORMATS = [
    pytest.param(V3, TWO, 3, id="V3-two-services"),
    pytest.param(V2, TWO, 3, id="V2-two-services"),
    pytest.param(V3, ("SSH",), 3, id="V1-format-one-service"),
    pytest.param(V1, ("SSH",), 3, id="3.x-offering-only-1.0"),
    pytest.param(V1, ("SSH",), 1, id="localproxy-1.x"),
]


async def ends(tunnel, protocol: str, services: tuple[str, ...],  # type: ignore[no-untyped-def]
               generation: int) -> tuple[Localproxy, Localproxy, dict[str, str]]:
    """A destination and a source (with client tokens, so that they can reconnect), both ready."""
    client_tokens = {"source": new_client_token(), "destination": new_client_token()}
    destination = await Localproxy.connect(tunnel, "destination", services, protocol=protocol, generation=generation,
                                           client_token=client_tokens["destination"])
    source = await Localproxy.connect(tunnel, "source", services, protocol=protocol, generation=generation,
                                      client_token=client_tokens["source"])
    await destination.until(lambda: destination.rules.ready, "the destination got the tunnel's services")
    await source.until(lambda: source.rules.ready, "the source got the tunnel's services")
    return source, destination, client_tokens


async def works(source: Localproxy, destination: Localproxy, service: str = "SSH", size: int = 3000) -> tuple:
    """A new TCP connection at the source reaches the destination, and bytes go both ways."""
    key = await source.accept(service)
    await destination.until(lambda: key in destination.rules.tcp, f"the destination opened {key}")
    await source.send(key, b"u" * size)
    await destination.until(lambda: len(destination.rules.received.get(key, b"")) >= size, "bytes reached it")
    destination.rules.received.pop(key)
    await destination.send(key, b"d" * size)
    await source.until(lambda: len(source.rules.received.get(key, b"")) >= size, "bytes came back")
    source.rules.received.pop(key)
    return key


async def eventually(condition, what: str, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


# -- the source restarts --------------------------------------------------------------------

@pytest.mark.parametrize("protocol, services, generation", FORMATS)
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "a-session-open"])
async def test_a_restarted_source_reaches_the_destination_again(aws_factory, protocol, services, generation, busy):
    """The source restarts (with its client token) while the tunnel is idle, or while an ssh
    session is open: the destination keeps reading, closes that session, and serves the new
    source's connections."""
    tunnel = await aws_factory(services=list(services))
    source, destination, client_tokens = await ends(tunnel, protocol, services, generation)
    key = await works(source, destination)
    if not busy:
        await source.close_tcp(key)   # the ssh session ended: the tunnel is idle
        await destination.until(lambda: key not in destination.rules.tcp, "the destination closed it too")
    await source.close()
    again = await Localproxy.connect(tunnel, "source", services, protocol=protocol, generation=generation,
                                     client_token=client_tokens["source"])
    await again.until(lambda: again.rules.ready, "the new source got the services")
    await destination.until(lambda: key not in destination.rules.tcp, "the old session's TCP connection is closed")
    # the new source's stream ids start again at 1, as localproxy's do
    await works(again, destination)
    await works(again, destination)
    if len(services) > 1:
        await works(again, destination, "HTTP")
    assert destination.rules.reading and destination.crash is None


# -- the destination restarts during a transfer ----------------------------------------------

@pytest.mark.parametrize("protocol, services, generation", FORMATS)
async def test_a_destination_restarting_mid_transfer_ends_the_transfer_and_poisons_nothing(
        aws_factory, protocol, services, generation):
    """An scp runs when the destination restarts. The source must close the scp's connection
    (not hang), and the data it sent meanwhile must not earn it resets that stop its reading
    or close its next connections (the relay reset that stream once, and answers no more of it)."""
    tunnel = await aws_factory(services=list(services))
    source, destination, client_tokens = await ends(tunnel, protocol, services, generation)
    key = await works(source, destination, size=60_000)
    # The source is busy writing the scp's data: what the relay sends it waits unread while the
    # destination goes away and more of the scp's data goes out (the relay answers each).
    source.pause()
    await destination.close()

    async def gone() -> bool:
        status, info = await tunnel.relay.call("GET", f"{BASE}/{tunnel.tunnel_id}")
        return info["device_connect_state"]["status"] == "DISCONNECTED"

    await eventually(gone, "the relay saw the destination go")
    for _ in range(3):
        await source.send(key, b"s" * 20_000)
    source.resume()
    await source.until(lambda: key not in source.rules.tcp, "the scp's connection is closed (the scp does not hang)")
    # a marker: the relay answers it after anything it sent before; the source must get to it
    await source.ws.send_bytes(frame(Msg(DATA, stream_id=99, service_id="SSH", payload=b"?")))
    await source.until(lambda: any("stream=99" in line for line in source.rules.log),
                       "the source still reads (no reset of a stream already over stopped it)")
    # the destination comes back; the next connections work and stay open
    back = await Localproxy.connect(tunnel, "destination", services, protocol=protocol, generation=generation,
                                    client_token=client_tokens["destination"])
    await back.until(lambda: back.rules.ready, "the destination got the services")
    first = await works(source, back)
    if protocol == V3 and generation == 3:
        second = await works(source, back)   # V3: a second connection of the same stream
        assert {first, second} <= source.rules.tcp and {first, second} <= back.rules.tcp
    await works(source, back, size=100)   # and still both ways, after whatever came meanwhile
    assert first in source.rules.tcp, f"a stale reset closed it: {source.rules.closed}"
    assert source.crash is None and back.crash is None


# -- relay forward --protocol aws, stopped with Ctrl-C --------------------------------------

class Quiet:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def notice(self, text: str) -> None:
        self.lines.append(text)

    error = notice


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "a-session-open"])
async def test_stopping_relay_forward_reaches_the_destination_as_a_close_it_acts_on(aws_factory, busy):
    tunnel = await aws_factory(services=list(TWO))
    destination = await Localproxy.connect(tunnel, "destination", TWO, client_token=new_client_token())
    await destination.until(lambda: destination.rules.ready, "the destination got the services")
    stop = asyncio.Event()
    started: list = []
    args = argparse.Namespace(service="SSH", tunnel=tunnel.tunnel_id, keep=True, url=tunnel.relay.url, wait=10.0,
                              ca_file=None, insecure=False, expires_in=None, device_id="dev-1")
    forward = asyncio.create_task(forward_aws_async(args, Quiet(), ("127.0.0.1", 0), tunnel.source_token,
                                                    stop=stop, started=started.append))
    await destination.until(lambda: bool(started) and started[0].listening.is_set(), "relay forward listens")
    writer = None
    if busy:
        reader, writer = await asyncio.open_connection(*started[0].addresses["SSH"])
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        key = ("SSH", 1)
        await destination.until(lambda: destination.rules.received.get(key) == b"SSH-2.0-OpenSSH_9.2\r\n",
                                "the ssh client's banner reached the destination")
    stop.set()   # Ctrl-C
    assert await asyncio.wait_for(forward, 20) == 0
    if busy:
        await destination.until(lambda: not destination.rules.tcp, "the destination closed the session's connection")
    # the tunnel is closed (`relay tunnel close`): the destination reads the close and exits
    assert (await tunnel.relay.call("PUT", f"{BASE}/{tunnel.tunnel_id}"))[0] == 204
    await destination.until(lambda: destination.close_code == 1000, "the destination read the tunnel's close")
    if writer is not None:
        writer.close()


# -- subprotocol 1.0 ------------------------------------------------------------------------

async def test_localproxy_3x_offering_only_1_0_gets_its_service_ids_and_opens_its_listener(aws_factory):
    tunnel = await aws_factory(services=["SSH"])
    source = await Localproxy.connect(tunnel, "source", ("SSH",), protocol=V1, client_token=new_client_token())
    await source.until(lambda: source.rules.ready, "the source got SERVICE_IDS (it opens its listener only then)")
    assert source.rules.service_ids == ("SSH",)


async def test_localproxy_1x_ignores_the_service_ids_it_does_not_know(aws_factory):
    """1.x throws on an unknown type that is not marked ignorable; the relay marks it so."""
    tunnel = await aws_factory(services=["SSH"])
    destination = await Localproxy.connect(tunnel, "destination", ("SSH",), protocol=V1, generation=1,
                                           client_token=new_client_token())
    await destination.until(lambda: bool(destination.rules.log), "the destination read the relay's first message")
    assert destination.rules.log == [f"ignored an ignorable message of type {SERVICE_IDS}"]
    source = await Localproxy.connect(tunnel, "source", ("SSH",), protocol=V1, generation=1,
                                      client_token=new_client_token())
    await works(source, destination)
    assert destination.crash is None and source.crash is None
