"""What the device agent answers to which message: sans-I/O, no socket, no event loop.

`DeviceSession` takes the text of each message the relay delivers and the outcomes of SSH
work (login done or failed, terminal output, shell ended), and returns effects for the I/O
layer to carry out in order: send a message, open the shell, write to it, close it.
What follows the end of a WebSocket connection is relay/closes.py's (one policy for every end).

Protocol (docs/protocol.md, docs/device.md):
- `connect` {username, password}: log in to the device's SSH server and open a PTY shell;
  answered by `connect_response` (same request_id) with data {status_code, status_msg}:
  "200" logged in, "400" bad request, "401" login refused, "502"/"504" SSH server
  unreachable or silent. A `connect` while a session is open replaces it (one session, as
  Huawei's SDK).
- `command` (data: text): written to the shell as typed (send "\\n" to run a line); the
  terminal's output comes back as `command_response` messages carrying the request_id of
  the latest `command` (or of the `connect`, for the login banner and first prompt), in
  order, each message at most `max_message_size` bytes of JSON.
- `disconnect` (from the source, or the relay's own with a status code): ends the session.
- The shell ending by itself (`exit`) is reported with `disconnect` {"200", ...}.
"""

from __future__ import annotations

import codecs
import dataclasses
from typing import Any

import orjson

from relay import envelope

SERVICE = "ssh"
MIN_BUDGET = 64   # a limit that leaves less room than this for output is a configuration mistake


@dataclasses.dataclass(frozen=True, slots=True)
class ToSource:
    payload: bytes   # one JSON text message


@dataclasses.dataclass(frozen=True, slots=True)
class OpenShell:
    request_id: str
    username: str
    password: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class WriteShell:
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class CloseShell:
    reason: str


Effect = ToSource | OpenShell | WriteShell | CloseShell


def message(operation_type: str, request_id: str, data: Any = None) -> bytes:
    return envelope.build(operation_type, request_id, data, SERVICE)


def status(code: str, text: str) -> dict[str, str]:
    return {"status_code": code, "status_msg": text}


def split_output(text: str, request_id: str, limit: int) -> list[bytes]:
    """`command_response` messages carrying `text` in order, each at most `limit` bytes of
    JSON, escaping included (a quote or a control character takes 2-6 bytes, a non-ASCII
    character 2-4)."""
    overhead = len(message("command_response", request_id, ""))
    budget = limit - overhead
    if budget < MIN_BUDGET:
        raise ValueError(f"a message limit of {limit} bytes leaves no room for output")
    out = []
    start = 0
    while start < len(text):
        n = min(len(text) - start, budget)
        while True:
            size = len(orjson.dumps(text[start:start + n])) - 2
            if size <= budget:
                break
            n = max(1, n * budget // size - 1)
        out.append(message("command_response", request_id, text[start:start + n]))
        start += n
    return out


class DeviceSession:
    """One WebSocket connection's worth of protocol state on the device side."""

    def __init__(self, max_message_size: int = 10240) -> None:
        self.max_message_size = max_message_size
        self.shell_open = False
        self.output_request_id: str | None = None
        self._closing = False      # we asked the shell to close: its end is not news
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    # -- messages from the relay ---------------------------------------------------------

    def received(self, text: str | bytes) -> list[Effect]:
        msg = envelope.parse(text)
        if msg is None:
            return []
        op = msg.get("operation_type")
        request_id = msg.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            request_id = "device"
        data = msg.get("data")
        if op == "connect":
            return self._connect(request_id, data)
        if op == "command":
            return self._command(request_id, data)
        if op == "disconnect":
            return self._end("disconnect" + _reason(data))
        # connect_tunnel goes to sources, ping is answered by the relay, pong needs nothing,
        # anything else is not for a device: nothing to do.
        return []

    def _connect(self, request_id: str, data: Any) -> list[Effect]:
        effects: list[Effect] = self._end("a new connect replaces the session")
        if not isinstance(data, dict) or not isinstance(data.get("username"), str) or not data["username"] \
                or not isinstance(data.get("password"), str):
            effects.append(ToSource(message("connect_response", request_id, status(
                "400", "connect needs data {\"username\": string, \"password\": string}"))))
            return effects
        effects.append(OpenShell(request_id, data["username"], data["password"]))
        return effects

    def _command(self, request_id: str, data: Any) -> list[Effect]:
        if not self.shell_open:
            return [ToSource(message("disconnect", request_id, status("400", "no SSH session: send connect first")))]
        if not isinstance(data, str):
            return [ToSource(message("command_response", request_id,
                                 "[relay agent] command data must be a string; nothing was written\r\n"))]
        self.output_request_id = request_id
        return [WriteShell(data.encode("utf-8", "surrogatepass"))]

    def _end(self, reason: str) -> list[Effect]:
        if not self.shell_open:
            return []
        self.shell_open = False
        self._closing = True
        return [CloseShell(reason)]

    # -- outcomes of SSH work ------------------------------------------------------------

    def login_succeeded(self, request_id: str, description: str) -> list[Effect]:
        self.shell_open = True
        self._closing = False
        self.output_request_id = request_id
        self._decoder.reset()
        return [ToSource(message("connect_response", request_id, status("200", description)))]

    def login_failed(self, request_id: str, code: str, reason: str) -> list[Effect]:
        self.shell_open = False
        return [ToSource(message("connect_response", request_id, status(code, reason)))]

    def output(self, data: bytes) -> list[Effect]:
        text = self._decoder.decode(data)
        if not text or self.output_request_id is None:
            return []
        return [ToSource(m) for m in split_output(text, self.output_request_id, self.max_message_size)]

    def shell_ended(self, exit_status: int | None) -> list[Effect]:
        """The shell's output is over (after `output` got all of it)."""
        tail = self._decoder.decode(b"", final=True)
        effects: list[Effect] = []
        if tail and self.output_request_id is not None:
            effects += [ToSource(m) for m in split_output(tail, self.output_request_id, self.max_message_size)]
        was_asked, self._closing = self._closing, False
        if was_asked:
            return effects
        self.shell_open = False
        text = "the SSH session ended" + (f" (exit status {exit_status})" if exit_status is not None else "")
        effects.append(ToSource(message("disconnect", self.output_request_id or "device", status("200", text))))
        effects.append(CloseShell("the shell ended"))
        return effects

    def connection_lost(self) -> list[Effect]:
        return self._end("the WebSocket connection ended")


def _reason(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("status_code"), str):
        return f" {data['status_code']} {str(data.get('status_msg', ''))[:100]}".rstrip()
    return ""
