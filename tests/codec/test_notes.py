"""Notes: ``Decoder(..., noted=OPS, on_note=callback)`` reports the payload of every forwarded
message whose operation_type is in OPS (docs/codec.md, "Notes"); run on both twins."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import pytest

from tests.codec.frames import OP_CONT, OP_PING, OP_TEXT, envelope, frame, server_text


def noting(codec: ModuleType, side: int | None = None, noted: object = ("connect", "connect_response", "command"),
           *, peer: bool = True, **kw: Any) -> tuple[Any, list[bytes]]:
    notes: list[bytes] = []
    d = codec.Decoder(codec.SOURCE if side is None else side, noted=noted, on_note=notes.append, **kw)
    d.peer_connected = peer
    return d, notes


class Hook:
    """Collects what reaches ``sys.unraisablehook`` (pytest would turn it into an error otherwise)."""

    def __init__(self) -> None:
        self.calls: list[tuple[type[BaseException], BaseException | None, object]] = []

    def __call__(self, args: Any) -> None:
        self.calls.append((args.exc_type, args.exc_value, args.object))


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> Hook:
    hook = Hook()
    monkeypatch.setattr(sys, "unraisablehook", hook)
    return hook


# ---------------------------------------------------------------- which messages are noted

def test_forwarded_messages_of_noted_types_are_reported_in_order(codec: ModuleType) -> None:
    d, notes = noting(codec)
    msgs = [envelope("connect", "c1"), envelope("command", "k1", data="ls"), envelope("disconnect", "c1"),
            envelope("command", "k2", data={"a": [1, 2]}), envelope("forward_data", "f")]
    out = d.feed(b"".join(frame(m) for m in msgs))
    assert out == (b"".join(server_text(m) for m in msgs), b"", None)
    assert notes == [msgs[0], msgs[1], msgs[3]]
    assert all(type(n) is bytes for n in notes)


def test_device_side_connect_response(codec: ModuleType) -> None:
    d, notes = noting(codec, codec.DEVICE)
    msgs = [envelope("connect_response", "c1", data={"result": 0}), envelope("command_response", "k1"),
            envelope("connect_response", "c2")]
    assert d.feed(b"".join(frame(m) for m in msgs))[0] == b"".join(map(server_text, msgs))
    assert notes == [msgs[0], msgs[2]]


def test_payload_reported_byte_for_byte(codec: ModuleType) -> None:
    m = (b' {"operation_type":"conn\\u0065ct","tunnel_service_type":"ssh","request_id":"r\\u00e9",'
         b'"data":{"x":"\\ud83d\\ude00"}}\n')
    d, notes = noting(codec)
    d.feed(frame(m))
    assert notes == [m]


def test_not_noted_when_the_peer_is_absent(codec: ModuleType) -> None:
    d, notes = noting(codec, noted=("connect", "command", "disconnect"), peer=False)
    out = d.feed(frame(envelope("connect", "c1")) + frame(envelope("command", "k1")) + frame(envelope("disconnect", "d")))
    assert out[0] == b"" and out[1].count(b'"status_code":"404"') == 2  # answered, and disconnect consumed
    assert notes == []
    d.peer_connected = True
    d.feed(frame(envelope("command", "k2")))
    assert notes == [envelope("command", "k2")]


def test_pings_are_never_noted(codec: ModuleType) -> None:
    d, notes = noting(codec, noted=("ping", "connect"))
    out = d.feed(frame(envelope("ping", "p1")) + frame(b"hb", OP_PING) + frame(envelope("connect", "c")))
    assert out[0] == server_text(envelope("connect", "c")) and out[1].startswith(b"\x81")
    assert notes == [envelope("connect", "c")]


@pytest.mark.parametrize("bad, code", [
    (envelope("connect", "c1"), 4409),                 # request_id reused
    (envelope("connect_response", "x"), 4403),         # not allowed from the source side
    (envelope("connect", "x", service="rdp"), 4400),   # unsupported service
    (b'{"operation_type":"connect"', 4400),           # invalid JSON
    (b'{"operation_type":"connect\xff"}', 1007),      # invalid UTF-8
])
def test_rejected_messages_are_not_noted(codec: ModuleType, bad: bytes, code: int) -> None:
    d, notes = noting(codec, noted=("connect", "connect_response"))
    after = envelope("connect", "c9")
    _, _, close = d.feed(frame(envelope("connect", "c1")) + frame(bad) + frame(after))
    assert close is not None and close[0] == code
    # the message before the violation was forwarded, so noted; nothing at or after it
    assert notes == [envelope("connect", "c1")]
    assert d.feed(frame(after)) == (b"", b"", None) and notes == [envelope("connect", "c1")]


def test_other_operation_types_are_not_noted(codec: ModuleType) -> None:
    d, notes = noting(codec, noted=["command"])
    d.feed(frame(envelope("connect", "c")) + frame(envelope("forward_open", "f")))
    assert notes == []


def test_order_across_split_reads(codec: ModuleType) -> None:
    msgs = [envelope("connect", "c1"), envelope("command", "k1", data="x" * 300), envelope("disconnect", "c1"),
            envelope("command", "k2")]
    data = b"".join(frame(m) for m in msgs)
    want = [msgs[0], msgs[1], msgs[3]]
    for cut in range(len(data) + 1):
        d, notes = noting(codec)
        first = d.feed(data[:cut])[0]
        seen = len(notes)
        second = d.feed(data[cut:])[0]
        assert first + second == b"".join(map(server_text, msgs))
        assert notes == want, cut
        # a note arrives in the read that completes its message
        assert seen == sum(1 for i in (0, 1, 3) if len(b"".join(frame(m) for m in msgs[:i + 1])) <= cut)
    d, notes = noting(codec)
    for i in range(len(data)):
        d.feed(data[i:i + 1])
    assert notes == want


def test_fragmented_messages(codec: ModuleType) -> None:
    m = envelope("command", "k1", data="é" * 100)
    data = (frame(m[:10], OP_TEXT, fin=False) + frame(b"p", OP_PING) + frame(m[10:150], OP_CONT, fin=False)
            + frame(m[150:], OP_CONT) + frame(envelope("connect", "c")))
    for cut in (0, 5, 20, len(data) // 2, len(data) - 3, len(data)):
        d, notes = noting(codec)
        out = [d.feed(data[:cut]), d.feed(data[cut:])]
        assert b"".join(o[0] for o in out) == server_text(m) + server_text(envelope("connect", "c"))
        assert notes == [m, envelope("connect", "c")]


def test_noted_accepts_any_iterable_and_survives_reset(codec: ModuleType) -> None:
    d, notes = noting(codec, noted=iter({"connect"}))
    d.feed(frame(envelope("connect", "c1"))[:7])
    d.reset()
    d.feed(frame(envelope("connect", "c2")))
    assert notes == [envelope("connect", "c2")]


@pytest.mark.parametrize("noted", [None, (), []])
def test_nothing_noted_without_noted_types(codec: ModuleType, noted: object) -> None:
    d, notes = noting(codec, noted=noted)
    msg = envelope("connect", "c")
    assert d.feed(frame(msg)) == (server_text(msg), b"", None)
    assert notes == []


def test_noted_without_callback_is_inert(codec: ModuleType) -> None:
    d = codec.Decoder(codec.SOURCE, noted=("connect",), on_note=None)
    d.peer_connected = True
    msg = envelope("connect", "c")
    assert d.feed(frame(msg)) == (server_text(msg), b"", None)


def test_callback_sees_the_decoder_after_the_read(codec: ModuleType) -> None:
    seen: list[tuple[int, bool]] = []
    d: Any = None
    d = codec.Decoder(codec.SOURCE, noted=("connect", "command"),
                      on_note=lambda payload: seen.append((d.messages, d.closed)))
    d.peer_connected = True
    d.feed(frame(envelope("connect", "c1")) + frame(envelope("command", "k1")) + frame(b"{"))
    assert seen == [(2, True), (2, True)]


def test_callback_may_feed_the_decoder_again(codec: ModuleType) -> None:
    outs: list[tuple[bytes, bytes, object]] = []

    def on_note(payload: bytes) -> None:
        if payload == envelope("connect", "c1"):
            outs.append(d.feed(frame(envelope("command", "k1"))))

    d = codec.Decoder(codec.SOURCE, noted=("connect", "command"), on_note=on_note)
    d.peer_connected = True
    assert d.feed(frame(envelope("connect", "c1"))) == (server_text(envelope("connect", "c1")), b"", None)
    assert outs == [(server_text(envelope("command", "k1")), b"", None)]
    assert d.messages == 2


# ---------------------------------------------------------------- a failing callback

def test_callback_exception_does_not_lose_forwarded_bytes(codec: ModuleType, unraisable: Hook) -> None:
    got: list[bytes] = []

    def on_note(payload: bytes) -> None:
        got.append(payload)
        if len(got) == 1:
            raise RuntimeError("listener is down")

    d = codec.Decoder(codec.SOURCE, noted=("connect", "command"), on_note=on_note)
    d.peer_connected = True
    msgs = [envelope("connect", "c1"), envelope("command", "k1"), envelope("ping", "p")]
    to_peer, to_sender, close = d.feed(b"".join(frame(m) for m in msgs))
    assert to_peer == server_text(msgs[0]) + server_text(msgs[1])
    assert b'"pong"' in to_sender and close is None
    assert got == msgs[:2]  # the second note is still delivered
    assert len(unraisable.calls) == 1
    exc_type, exc, obj = unraisable.calls[0]
    assert exc_type is RuntimeError and str(exc) == "listener is down" and obj is on_note
    assert (d.messages, d.closed) == (3, False)
    msg = envelope("command", "k2")
    assert d.feed(frame(msg)) == (server_text(msg), b"", None)
    assert got[-1] == msg and len(unraisable.calls) == 1


# ---------------------------------------------------------------- arguments

@pytest.mark.parametrize("kwargs, message", [
    (dict(noted="connect"), "noted must be an iterable of str"),
    (dict(noted=5), "noted must be an iterable of str"),
    (dict(noted=("connect", b"command")), "noted must be an iterable of str"),
    (dict(noted=("connect",), on_note=5), "on_note must be callable or None"),
    (dict(noted=("connect",), on_note="print"), "on_note must be callable or None"),
])
def test_bad_note_arguments(codec: ModuleType, kwargs: dict, message: str) -> None:
    with pytest.raises(TypeError) as err:
        codec.Decoder(codec.SOURCE, **kwargs)
    assert str(err.value) == message


def test_note_arguments_are_keyword_only(codec: ModuleType) -> None:
    with pytest.raises(TypeError):
        codec.Decoder(codec.SOURCE, 10240, ("ssh",), 1024, ("connect",))
