"""Session recording: an SSH session through a tunnel, as an asciicast v2 file.

Sans-I/O (no asyncio, no sockets): the data plane hands each raw tunnel message to
`observe`, and gets a `Recording` back when a session ends; the audit log stores it.

asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/): a header line (a JSON
object), then one JSON array per line, `[elapsed_seconds, code, text]`:

- `"o"`: terminal output, the `data` of a device's `command_response`;
- `"i"`: input, the `data` of a source's `command` (what was typed);
- `"m"`: a marker: the login (`login as pi`, never the password), its outcome, the end,
  input hidden at a password prompt, the truncation.

Never recorded: the password of `connect` (nor any field of its `data` but `username`),
tokens (they never travel in messages), and what is typed at a password prompt (the line
typed after output that ends like `password:`, up to Enter). Only the `ssh` service is
recorded; other services and malformed messages are ignored, never raised about.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from relay.audit import Marker

SOURCE = "source"
DEVICE = "device"

OUTPUT, INPUT, MARKER = "o", "i", "m"

MAX_USERNAME = 64          # characters of the user name kept (in markers and the title)
_MARKER_RESERVE = 128      # bytes kept free under the cap for the truncation marker
_PROMPT_TAIL = 200         # characters of the current output line kept to spot a password prompt
# The end of an output line that asks for a secret: "Password:", "[sudo] password for pi: ",
# "Enter passphrase for key '...': ", "PIN? ".
_SECRET_PROMPT = re.compile(r"(?i)(password|passphrase|passcode|\bpin\b)[^\r\n]{0,120}[:?]\s*$")
_LINE_END = re.compile(r"[\r\n]")
_ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|.)")


@dataclasses.dataclass(frozen=True, slots=True)
class Recording:
    session_id: str
    project_id: str
    tunnel_id: str
    device_id: str
    username: str | None
    started: float
    ended: float
    truncated: bool
    size: int                                        # len(data); kept when a listing leaves data out
    data: bytes = dataclasses.field(repr=False)      # the .cast file (UTF-8 text)


def _dump(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:   # a string with lone surrogates: keep what can be kept
        return orjson.dumps(_clean(value))


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def parse_message(payload: bytes | bytearray | memoryview | str) -> dict[str, Any] | None:
    """The envelope of one tunnel message, or None when it is not a JSON object."""
    try:
        message = orjson.loads(payload)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return message if isinstance(message, dict) else None


class SessionRecorder:
    """One SSH session: from the source's `connect` to a `disconnect` (or `finish`)."""

    def __init__(self, session_id: str, project_id: str, tunnel_id: str, device_id: str, started: float,
                 cap_bytes: int, width: int = 80, height: int = 24) -> None:
        self.session_id = session_id
        self.project_id = project_id
        self.tunnel_id = tunnel_id
        self.device_id = device_id
        self.started = started
        self.cap_bytes = cap_bytes
        self.width = width
        self.height = height
        self.username: str | None = None
        self.login_ok: bool | None = None     # None: no connect_response seen
        self.ended = False                    # a disconnect was seen (or finish was called)
        self.truncated = False
        self.inputs = 0                       # "i" and "o" events kept
        self.outputs = 0
        self._lines: list[bytes] = []
        self._size = 0                        # bytes of the event lines
        self._header_size = len(self._header())
        self._last = 0.0
        self._line_tail = ""                  # the current output line, to spot password prompts
        self._prompt_answered = False         # Enter was typed at the current prompt
        self._hiding_noted = False            # the "input hidden" marker of this prompt is there
        self._truncated_at = 0.0

    # -- feeding ---------------------------------------------------------------------------

    def observe(self, side: str, payload: bytes | bytearray | memoryview | str, now: float) -> None:
        """One raw message as it crossed the relay; `side` is the end that sent it."""
        message = parse_message(payload)
        if message is not None:
            self.handle(side, message, now)

    def handle(self, side: str, message: dict[str, Any], now: float) -> None:
        """One parsed message (for callers that parsed it already)."""
        if self.ended or message.get("tunnel_service_type") != "ssh":
            return
        operation, data = message.get("operation_type"), message.get("data")
        if side == SOURCE:
            if operation == "command" and isinstance(data, str):
                self._input(data, now)
            elif operation == "connect":
                self._connect(data, now)
            elif operation == "disconnect":
                self._end(now, "the source ended the session", data)
        elif side == DEVICE:
            if operation == "command_response" and isinstance(data, str):
                self._output(data, now)
            elif operation == "connect_response":
                self._login_result(data, now)
            elif operation == "disconnect":
                self._end(now, "the device ended the session", data)

    def _connect(self, data: Any, now: float) -> None:
        # Only the user name: the password and any other field of data are never looked at.
        username = data.get("username") if isinstance(data, dict) else None
        if isinstance(username, str):
            self.username = username[:MAX_USERNAME]
            self._header_size = len(self._header())
        self._add(MARKER, f"login as {self.username}" if self.username is not None else "login", now)

    def _login_result(self, data: Any, now: float) -> None:
        code = data.get("status_code") if isinstance(data, dict) else None
        code = str(code)[:8] if isinstance(code, (str, int)) and not isinstance(code, bool) else "?"
        self.login_ok = code == "200"
        self._add(MARKER, "login succeeded" if self.login_ok else f"login failed ({code})", now)

    def _end(self, now: float, why: str, data: Any) -> None:
        code = data.get("status_code") if isinstance(data, dict) else None
        suffix = f" ({str(code)[:8]})" if isinstance(code, (str, int)) and not isinstance(code, bool) else ""
        self._add(MARKER, why + suffix, now)
        self.ended = True

    def _output(self, text: str, now: float) -> None:
        self._prompt_answered = False
        self._hiding_noted = False
        tail = self._line_tail + text
        cut = max(tail.rfind("\n"), tail.rfind("\r"))
        self._line_tail = (tail[cut + 1:] if cut >= 0 else tail)[-_PROMPT_TAIL:]
        self.outputs += self._add(OUTPUT, text, now)

    def _at_secret_prompt(self) -> bool:
        return not self._prompt_answered and bool(_SECRET_PROMPT.search(_ESCAPES.sub("", self._line_tail)))

    def _input(self, text: str, now: float) -> None:
        if self._at_secret_prompt():
            end = _LINE_END.search(text)
            hidden = text[:end.start()] if end else text
            if hidden and not self._hiding_noted:
                self._hiding_noted = True
                self._add(MARKER, "input hidden at a password prompt", now)
            if end is None:
                return
            self._prompt_answered = True
            text = text[end.start():]
        self.inputs += self._add(INPUT, text, now)

    def _add(self, code: str, text: str, now: float) -> bool:
        """Append an event unless the cap is reached; whether it was kept."""
        if self.truncated or not text:
            return False
        elapsed = max(self._last, round(max(0.0, now - self.started), 6))
        line = _dump([elapsed, code, text]) + b"\n"
        if self._header_size + self._size + len(line) + _MARKER_RESERVE > self.cap_bytes:
            self.truncated = True
            self._truncated_at = elapsed
            return False
        self._last = elapsed
        self._lines.append(line)
        self._size += len(line)
        return True

    # -- the result ------------------------------------------------------------------------

    def _header(self) -> bytes:
        title = f"{self.username}@{self.device_id}" if self.username else self.device_id
        return _dump({"version": 2, "width": self.width, "height": self.height, "timestamp": int(self.started),
                      "title": title, "env": {"TERM": "xterm"}}) + b"\n"

    @property
    def size(self) -> int:
        """Bytes of the recording so far."""
        return self._header_size + self._size

    def finish(self, now: float) -> Recording:
        self.ended = True
        lines = [self._header(), *self._lines]
        if self.truncated:
            note = f"recording truncated: the {self.cap_bytes}-byte cap was reached"
            lines.append(_dump([self._truncated_at, MARKER, note]) + b"\n")
        data = b"".join(lines)
        return Recording(session_id=self.session_id, project_id=self.project_id, tunnel_id=self.tunnel_id,
                         device_id=self.device_id, username=self.username, started=self.started,
                         ended=max(now, self.started), truncated=self.truncated, size=len(data), data=data)


class TunnelTap:
    """The recorder of one tunnel: each `connect` of the source starts a session, a
    `disconnect` (or `end`, when a connection goes away) finishes it. `observe` returns the
    finished Recording, to be saved (AuditLog.save_recording). Sessions whose login failed
    and that carried no input or output are not kept (the audit log has the failed login)."""

    def __init__(self, project_id: str, tunnel_id: str, device_id: str, cap_bytes: int, width: int = 80,
                 height: int = 24, new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self.project_id = project_id
        self.tunnel_id = tunnel_id
        self.device_id = device_id
        self.cap_bytes = cap_bytes
        self.width = width
        self.height = height
        self.new_id = new_id
        self.current: SessionRecorder | None = None

    def observe(self, side: str, payload: bytes | bytearray | memoryview | str, now: float) -> Recording | None:
        message = parse_message(payload)
        return None if message is None else self.handle(side, message, now)

    def handle(self, side: str, message: dict[str, Any], now: float) -> Recording | None:
        """`observe`, for a message already parsed."""
        if message.get("tunnel_service_type") != "ssh":
            return None
        finished = None
        if side == SOURCE and message.get("operation_type") == "connect":
            finished = self.end(now)
            self.current = SessionRecorder(self.new_id(), self.project_id, self.tunnel_id, self.device_id, now,
                                           self.cap_bytes, self.width, self.height)
        if self.current is None:
            return finished
        self.current.handle(side, message, now)
        if self.current.ended:
            return self.end(now)
        return finished

    def end(self, now: float) -> Recording | None:
        """Finish the session in progress, if any (a connection went away)."""
        recorder, self.current = self.current, None
        if recorder is None:
            return None
        recording = recorder.finish(now)
        if recorder.login_ok or recorder.inputs or recorder.outputs:
            return recording
        return None


# -- reading and playing ----------------------------------------------------------------------

Event = tuple[float, str, str]


def parse_cast(data: bytes | str) -> tuple[dict[str, Any], list[Event]]:
    """The header and the events of an asciicast v2 file; raises ValueError when it is not one."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        raise ValueError("an empty recording")
    try:
        header = orjson.loads(lines[0])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise ValueError("not an asciicast version 2 header")
    events: list[Event] = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ValueError(f"line {number} is not JSON") from None
        if (not isinstance(event, list) or len(event) != 3 or isinstance(event[0], bool)
                or not isinstance(event[0], (int, float)) or not isinstance(event[1], str)
                or not isinstance(event[2], str)):
            raise ValueError(f"line {number} is not an event [time, code, data]")
        events.append((float(event[0]), event[1], event[2]))
    return header, events


def play(events: Iterable[Event], *, write: Callable[[str], object], sleep: Callable[[float], object],
         speed: float = 1.0, max_idle: float | None = None,
         marker: Callable[[str], object] | None = None) -> None:
    """Write the output events as they were timed: gaps divided by `speed`, and no gap longer
    than `max_idle` seconds (before the division). `sleep` is injected (time.sleep for a
    terminal; tests pass a recorder). Markers go to `marker` when given."""
    if speed <= 0:
        raise ValueError("speed must be above zero")
    previous = 0.0
    for at, code, text in events:
        if code not in (OUTPUT, MARKER) or (code == MARKER and marker is None):
            continue
        gap = max(0.0, at - previous)
        previous = max(previous, at)
        if max_idle is not None:
            gap = min(gap, max_idle)
        if gap > 0:
            sleep(gap / speed)
        if code == OUTPUT:
            write(text)
        elif marker is not None:
            marker(text)


# -- listing what a store keeps ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RecordingQuery:
    device_id: str | None = None
    tunnel_id: str | None = None
    limit: int = 50
    marker: Marker | None = None   # (started, session_id) of the previous page's last: start after it

    def matches(self, recording: Recording) -> bool:
        return ((self.device_id is None or recording.device_id == self.device_id)
                and (self.tunnel_id is None or recording.tunnel_id == self.tunnel_id))


@dataclasses.dataclass(frozen=True, slots=True)
class RecordingPage:
    recordings: list[Recording]    # newest first (by started), without their data
    marker: Marker | None          # for the next page; None: this was the last page
