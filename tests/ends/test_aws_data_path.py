"""The AWS ends' codec path in the stream rules and pipes: `received_data` (the stale-key check
of a DATA decoded by the codec), `wire_fields`/`may_send` (what the codec's DATA carries), and
`StreamPipes` sending a socket's reads through `send_data`."""

from __future__ import annotations

import asyncio

from relay.aws_messages import MessageType, ProxyMessage
from relay.ends import aws_streams as s
from relay.ends.pipes import StreamPipes


def started(version: int = 3) -> s.Destination:
    d = s.Destination({"SSH": ("127.0.0.1", 22)}, version)
    d.received(ProxyMessage(MessageType.SERVICE_IDS, available_service_ids=("SSH",)))
    d.received(ProxyMessage(MessageType.STREAM_START, 7, service_id="SSH" if version >= 2 else "",
                            connection_id=1 if version >= 3 else 0))
    return d


def test_received_data_delivers_to_the_active_connection_and_drops_stale_ones():
    d = started()
    assert d.received_data("SSH", 7, 1, b"x") == [s.StreamDeliver(s.Key("SSH", 7, 1), b"x")]
    assert d.received_data("SSH", 7, 0, b"x") == [s.StreamDeliver(s.Key("SSH", 7, 1), b"x")]   # V3: 0 means 1
    assert d.received_data("SSH", 6, 1, b"x") == []     # an older stream
    assert d.received_data("SSH", 7, 2, b"x") == []     # a connection that was never started
    assert d.received_data("SSH", 7, 1, b"") == []      # nothing to deliver
    assert d.received_data("SSH", 7, 1, b"y") == d.received(
        ProxyMessage(MessageType.DATA, 7, payload=b"y", service_id="SSH", connection_id=1))


def test_wire_fields_follow_the_version():
    assert started(3).wire_fields(s.Key("SSH", 7, 1)) == ("SSH", 7, 1)
    assert started(2).wire_fields(s.Key("SSH", 7, 0)) == ("SSH", 7, 0)
    assert started(1).wire_fields(s.Key("", 7, 0)) == ("", 7, 0)
    d = started()
    assert d.may_send(s.Key("SSH", 7, 1), b"x")
    assert not d.may_send(s.Key("SSH", 7, 1), b"")
    assert not d.may_send(s.Key("SSH", 7, 9), b"x")


async def test_stream_pipes_send_reads_through_the_sockets_data_path():
    d = started()
    messages: list[bytes] = []

    async def send(data: bytes) -> None:
        messages.append(data)

    class Socket:
        on_data = None
        deliver_now = None
        calls: list[tuple] = []
        writable = True

        async def send_data(self, service_id: str, stream_id: int, connection_id: int, raw: bytes) -> None:
            self.calls.append((service_id, stream_id, connection_id, raw))

        def send_data_now(self, service_id: str, stream_id: int, connection_id: int, raw: bytes) -> bool:
            if self.writable:
                self.calls.append(("now", service_id, stream_id, connection_id, raw))
            return self.writable

    socket = Socket()
    pipes = StreamPipes(d, send)
    pipes.attach(socket)
    assert socket.on_data == pipes.data and socket.deliver_now == pipes.data_now
    link = pipes._add(s.Key("SSH", 7, 1))
    assert await pipes.local_data(link, b"hello")
    assert socket.calls == [("SSH", 7, 1, b"hello")] and messages == []   # no message built here
    # the same without waiting, while the socket takes writes; nothing sent when it does not
    assert pipes.local_data_now(link, b"now")
    socket.writable = False
    assert not pipes.local_data_now(link, b"later")
    assert not pipes.local_data_now(pipes._add(s.Key("SSH", 7, 9)), b"x")   # not a started connection
    assert socket.calls[1:] == [("now", "SSH", 7, 1, b"now")]
    link = pipes.links[s.Key("SSH", 7, 1)]
    got: list[bytes] = []
    link.deliver = got.append   # type: ignore[method-assign]
    await pipes.data("SSH", 7, 1, b"from the relay")
    await pipes.data("SSH", 6, 1, b"stale")
    assert got == [b"from the relay"]
    link._finish(abort=False)
    await asyncio.sleep(0)
