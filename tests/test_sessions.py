"""The session watcher (relay/sessions.py): audit events from the messages the decoders note,
without an event loop."""

from __future__ import annotations

import orjson
import pytest

from relay.audit import EventType
from relay.clock import ManualClock
from relay.model import Side
from relay.recording import TunnelTap, parse_cast
from relay.sessions import AUDITED, RECORDED, SessionWatcher


def msg(op: str, rid: str, data=None, service: str = "ssh") -> bytes:
    return orjson.dumps({"operation_type": op, "tunnel_service_type": service, "request_id": rid, "data": data})


class Trail:
    def __init__(self) -> None:
        self.events: list[tuple[EventType, str, str, dict]] = []
        self.saved: list = []

    def emit(self, event, actor, outcome, detail) -> None:
        self.events.append((event, actor, outcome, detail))

    def save(self, recording) -> None:
        self.saved.append(recording)

    def kinds(self) -> list[EventType]:
        return [e[0] for e in self.events]


@pytest.fixture
def clock():
    return ManualClock()


def watcher(clock, trail: Trail, record: bool = False, cap: int = 1 << 20) -> SessionWatcher:
    tap = TunnelTap("p1", "t1", "dev1", cap) if record else None
    return SessionWatcher("p1", "t1", "dev1", clock=clock, emit=trail.emit, save=trail.save, tap=tap)


def test_notes_only_what_it_needs_unless_recording(clock):
    plain, recorded = watcher(clock, Trail()), watcher(clock, Trail(), record=True)
    assert plain.noted(Side.SOURCE) == AUDITED[Side.SOURCE]
    assert "command" not in plain.noted(Side.SOURCE) and "command_response" not in plain.noted(Side.DEVICE)
    assert recorded.noted(Side.SOURCE) >= RECORDED[Side.SOURCE] | AUDITED[Side.SOURCE]
    assert "command_response" in recorded.noted(Side.DEVICE)


def test_login_success_and_failure_carry_the_username_only(clock):
    trail = Trail()
    w = watcher(clock, trail)
    w.observe(Side.SOURCE, msg("connect", "r1", {"username": "pi", "password": "hunter2"}))
    w.observe(Side.DEVICE, msg("connect_response", "r1", {"status_code": "200", "status_msg": "ok"}))
    w.observe(Side.SOURCE, msg("connect", "r2", {"username": "root", "password": "s3cret"}))
    w.observe(Side.DEVICE, msg("connect_response", "r2", {"status_code": "401", "status_msg": "denied"}))
    assert trail.kinds() == [EventType.SSH_LOGIN_SUCCEEDED, EventType.SSH_LOGIN_FAILED]
    assert trail.events[0][3] == {"username": "pi"}
    assert trail.events[1][2] == "401" and trail.events[1][3]["username"] == "root"
    assert b"hunter2" not in orjson.dumps([e[3] for e in trail.events])
    assert b"s3cret" not in orjson.dumps([e[3] for e in trail.events])


def test_an_answer_without_a_login_or_twice_counts_once(clock):
    trail = Trail()
    w = watcher(clock, trail)
    w.observe(Side.DEVICE, msg("connect_response", "nobody-asked", {"status_code": "200"}))
    w.observe(Side.SOURCE, msg("connect", "r1", {"username": "pi", "password": "x"}))
    w.observe(Side.DEVICE, msg("connect_response", "r1", {"status_code": "200"}))
    w.observe(Side.DEVICE, msg("connect_response", "r1", {"status_code": "200"}))
    assert trail.kinds() == [EventType.SSH_LOGIN_SUCCEEDED]


def test_pending_logins_are_bounded(clock):
    w = watcher(clock, Trail())
    for n in range(1000):
        w.observe(Side.SOURCE, msg("connect", f"r{n}", {"username": "u", "password": "p"}))
    assert len(w.logins) <= 64


def test_forwarded_connection_opened_and_closed_once(clock):
    trail = Trail()
    w = watcher(clock, trail)
    w.observe(Side.SOURCE, msg("forward_open", "f-1", {"port": 22}, "tcp"))
    w.observe(Side.DEVICE, msg("forward_open_response", "f-1", {"status_code": "200"}, "tcp"))
    w.observe(Side.SOURCE, msg("forward_close", "f-1", {"status_msg": "eof"}, "tcp"))
    assert trail.kinds() == [EventType.FORWARD_OPENED]    # half-closed: still open
    w.observe(Side.DEVICE, msg("forward_close", "f-1", {"status_msg": "eof"}, "tcp"))
    w.observe(Side.DEVICE, msg("forward_close", "f-1", {"status_msg": "eof"}, "tcp"))
    assert trail.kinds() == [EventType.FORWARD_OPENED, EventType.FORWARD_CLOSED]
    assert trail.events[1][3]["port"] == 22


def test_refused_forward_and_abort(clock):
    trail = Trail()
    w = watcher(clock, trail)
    w.observe(Side.SOURCE, msg("forward_open", "f-1", {"port": 8080}, "tcp"))
    w.observe(Side.DEVICE, msg("forward_open_response", "f-1", {"status_code": "403"}, "tcp"))
    w.observe(Side.SOURCE, msg("forward_open", "f-2", {"port": 22}, "tcp"))
    w.observe(Side.DEVICE, msg("forward_open_response", "f-2", {"status_code": "200"}, "tcp"))
    w.observe(Side.DEVICE, msg("forward_close", "f-2", {"status_msg": "error: reset"}, "tcp"))
    assert [(e[0], e[2]) for e in trail.events] == [
        (EventType.FORWARD_OPENED, "403"), (EventType.FORWARD_OPENED, "ok"), (EventType.FORWARD_CLOSED, "ok")]
    assert trail.events[2][3]["reason"] == "error: reset"


def test_a_side_leaving_ends_open_forwards(clock):
    trail = Trail()
    w = watcher(clock, trail)
    w.observe(Side.SOURCE, msg("forward_open", "f-1", {"port": 22}, "tcp"))
    w.observe(Side.DEVICE, msg("forward_open_response", "f-1", {"status_code": "200"}, "tcp"))
    w.side_left(Side.DEVICE)
    w.side_left(Side.DEVICE)
    assert trail.kinds() == [EventType.FORWARD_OPENED, EventType.FORWARD_CLOSED]
    assert trail.events[1][3]["reason"] == "the device left"


def test_recorded_session_replays_and_never_holds_the_password(clock):
    trail = Trail()
    w = watcher(clock, trail, record=True)
    w.observe(Side.SOURCE, msg("connect", "r1", {"username": "pi", "password": "hunter2"}))
    clock.advance(0.5)
    w.observe(Side.DEVICE, msg("connect_response", "r1", {"status_code": "200"}))
    w.observe(Side.SOURCE, msg("command", "c1", "ls\n"))
    clock.advance(0.25)
    w.observe(Side.DEVICE, msg("command_response", "c1", "a.txt  b.txt\r\n"))
    w.observe(Side.DEVICE, msg("command_response", "c1", "$ "))
    clock.advance(1)
    w.observe(Side.SOURCE, msg("disconnect", "d1"))
    assert trail.kinds() == [EventType.SSH_LOGIN_SUCCEEDED]   # session_recorded: once stored (AuditLog)
    (recording,) = trail.saved
    assert b"hunter2" not in recording.data
    assert recording.username == "pi" and not recording.truncated
    header, events = parse_cast(recording.data)
    output = "".join(e[2] for e in events if e[1] == "o")
    assert output == "a.txt  b.txt\r\n$ "
    assert [e[0] for e in events] == sorted(e[0] for e in events)


def test_failed_login_is_not_recorded_and_plain_tunnels_record_nothing(clock):
    trail = Trail()
    w = watcher(clock, trail, record=True)
    w.observe(Side.SOURCE, msg("connect", "r1", {"username": "pi", "password": "x"}))
    w.observe(Side.DEVICE, msg("connect_response", "r1", {"status_code": "401"}))
    w.side_left(Side.SOURCE)
    assert trail.saved == []
    plain = Trail()
    p = watcher(clock, plain)
    p.observe(Side.SOURCE, msg("connect", "r1", {"username": "pi", "password": "x"}))
    p.observe(Side.DEVICE, msg("connect_response", "r1", {"status_code": "200"}))
    p.side_left(Side.SOURCE)
    assert plain.saved == [] and plain.kinds() == [EventType.SSH_LOGIN_SUCCEEDED]


def test_a_side_leaving_ends_the_recording(clock):
    trail = Trail()
    w = watcher(clock, trail, record=True)
    w.observe(Side.SOURCE, msg("connect", "r1", {"username": "pi", "password": "x"}))
    w.observe(Side.DEVICE, msg("connect_response", "r1", {"status_code": "200"}))
    w.observe(Side.DEVICE, msg("command_response", "c1", "hello"))
    w.side_left(Side.DEVICE)
    assert len(trail.saved) == 1 and trail.saved[0].username == "pi"


@pytest.mark.parametrize("payload", [b"not json", b"[1,2]", b"{}", msg("connect", "r", "no-dict"),
                                     msg("connect_response", "r", None), msg("forward_open", "f", None, "tcp")])
def test_odd_messages_never_raise(clock, payload):
    w = watcher(clock, Trail(), record=True)
    w.observe(Side.SOURCE, payload)
    w.observe(Side.DEVICE, payload)


# -- what a watcher keeps is bounded (issue 15, finding 1) -------------------------------------


def retained_size(root: object) -> int:
    """Bytes of everything `root` holds on to (containers, slots, strings, numbers), each
    object counted once; callables (its clock, emit and save) are the owner's, not its own."""
    import sys
    seen: set[int] = set()
    stack, total = [root], 0
    while stack:   # bounded: each object is visited once
        obj = stack.pop()
        if id(obj) in seen or callable(obj) or isinstance(obj, (type, ManualClock)):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if hasattr(obj, slot):
                    stack.append(getattr(obj, slot))
    return total


def test_a_flood_of_forward_opens_and_logins_keeps_the_watcher_small(clock):
    """A tenant holding both tokens sends forward_open with a ~9.9 KB nested `port` and the
    longest request ids the codec lets through, answers each with 200 from its device, and
    leaves logins unanswered: the watcher keeps bounded counts of small entries (the probe
    saw 235 MB per tunnel)."""
    trail = Trail()
    w = watcher(clock, trail)
    empty = retained_size(w)
    huge_port = [[] for _ in range(3300)]                     # "[[],[],...]": 9.9 KB of JSON
    for n in range(600):
        rid = f"{n:06d}".ljust(128, "f")                      # 128 bytes, the most the codec allows
        w.observe(Side.SOURCE, msg("forward_open", rid, {"port": huge_port}, "tcp"))
        w.observe(Side.DEVICE, msg("forward_open_response", rid, {"status_code": "200"}, "tcp"))
    for n in range(600):                                      # opens never answered
        w.observe(Side.SOURCE, msg("forward_open", f"p{n:05d}".ljust(128, "p"), {"port": huge_port}, "tcp"))
        w.observe(Side.SOURCE, msg("connect", f"l{n:05d}".ljust(128, "l"), {"username": "u" * 5000, "password": "x"}))
    kept = retained_size(w) - empty
    assert len(w.forwards) <= 256 + 64 and len(w.logins) <= 64
    assert kept < 200_000, f"the watcher keeps {kept} bytes"
    # every opening was audited, with no port (it was not a port), and nothing big went to the trail
    opened = [e for e in trail.events if e[0] is EventType.FORWARD_OPENED]
    assert len(opened) == 600 and {e[3]["port"] for e in opened} == {None}
    assert max(len(orjson.dumps(e[3])) for e in trail.events) < 400


@pytest.mark.parametrize("port, kept", [(22, 22), (65535, 65535), (0, None), (65536, None), (-1, None),
                                        ("22", None), (True, None), (22.0, None), ([22], None), ({"p": 22}, None)])
def test_a_forward_port_is_kept_only_as_an_integer_in_range(clock, port, kept):
    trail = Trail()
    w = watcher(clock, trail)
    w.observe(Side.SOURCE, msg("forward_open", "f-1", {"port": port}, "tcp"))
    w.observe(Side.DEVICE, msg("forward_open_response", "f-1", {"status_code": "200"}, "tcp"))
    assert trail.events[-1][3]["port"] == kept


def test_forwards_beyond_the_open_bound_are_audited_when_opened(clock):
    trail = Trail()
    w = watcher(clock, trail)
    for n in range(300):
        w.observe(Side.SOURCE, msg("forward_open", f"f-{n}", {"port": 22}, "tcp"))
        w.observe(Side.DEVICE, msg("forward_open_response", f"f-{n}", {"status_code": "200"}, "tcp"))
    opened = [e for e in trail.events if e[0] is EventType.FORWARD_OPENED]
    assert len(opened) == 300
    assert [e[3].get("close_audited", True) for e in opened] == [True] * 256 + [False] * 44
    w.observe(Side.DEVICE, msg("forward_close", "f-0", {"status_msg": "error: reset"}, "tcp"))
    assert trail.kinds()[-1] is EventType.FORWARD_CLOSED


def test_a_device_status_code_is_kept_short(clock):
    trail = Trail()
    w = watcher(clock, trail)
    w.observe(Side.SOURCE, msg("connect", "r1", {"username": "pi", "password": "x"}))
    w.observe(Side.DEVICE, msg("connect_response", "r1", {"status_code": [[] for _ in range(3000)]}))
    w.observe(Side.SOURCE, msg("connect", "r2", {"username": "pi", "password": "x"}))
    w.observe(Side.DEVICE, msg("connect_response", "r2", {"status_code": "4" * 5000}))
    assert [e[2] for e in trail.events] == ["none", "44444444"]
    assert all(len(orjson.dumps(e[3])) < 100 for e in trail.events)
