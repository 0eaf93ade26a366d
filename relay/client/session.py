"""The source (application) end of a tunnel: sans-I/O, no socket, no event loop.

`SourceSession` is fed the text of each message the relay delivers, and what the user
types; it returns events for the I/O layer to carry out in order: send a message, show
terminal output, tell the user something, the session is over. The rules it follows are
docs/protocol.md (the relay's) and docs/device.md (the agent's answers):

1. wait for `connect_tunnel` (the device is there), then send `connect` {username, password};
2. `connect_response` with status "200" opens the session; another status ends it. One with
   no status at all opens it too: Huawei's device SDK answers `connect` at once, before its SSH
   login, and tells a failed login afterwards as a `disconnect` (400). Until the first output
   shows the shell is there, a `disconnect` from the device is that failure (`LoginRule`);
3. typed text goes out as `command` messages, each with a new `request_id` (the relay
   refuses a reused one with 4409) and at most `max_message_size` bytes of JSON;
   `command_response` data is terminal output;
4. `disconnect` ends the session, except 499 (the device went away: wait for it to come
   back and log in again, when `relogin` allows) and 404 (a message found no device).

`ExecFraming` wraps one command for `relay exec`: it types a line that prints a begin
marker, runs the command, prints an end marker with `$?`, and exits; and it cuts the
terminal output down to what the command printed and its exit status.
"""

from __future__ import annotations

import codecs
import dataclasses
import enum
import re
import secrets
import shlex
import uuid
from collections.abc import Callable
from typing import Any


from relay import envelope
from relay.closes import describe_close, disconnect_is_final

SERVICE = "ssh"
MAX_ESCAPED = 6   # the most bytes one character takes in JSON text ("\u001b"; UTF-8 is at most 4)


# -- events --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ToDevice:
    payload: str   # one JSON text message


@dataclasses.dataclass(frozen=True, slots=True)
class Output:
    text: str      # terminal output from the device


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    text: str      # progress or status, for people (stderr)


@dataclasses.dataclass(frozen=True, slots=True)
class LoggedIn:
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class Ended:
    """The session is over. `exit_status`: the remote shell's, when the device said it;
    `error`: whether it ended by a failure (login refused, tunnel closed, ...)."""
    reason: str
    exit_status: int | None = None
    error: bool = True


Event = ToDevice | Output | Notice | LoggedIn | Ended


class Phase(str, enum.Enum):
    WAITING = "waiting for the device"
    LOGGING_IN = "logging in"
    OPEN = "open"
    ENDED = "ended"


def message(operation_type: str, request_id: str, data: Any = None) -> str:
    return envelope.build(operation_type, request_id, data, SERVICE).decode()


# Huawei's device SDK tells that its SSH channel closed (the shell ended) with this request_id
# and status 408 "SSH idles for too long..." (docs/device.md): not the relay's 408.
SDK_CHANNEL_CLOSED_ID = "SSH_timeout_disconnect"
_EXIT_STATUS = re.compile(r"exit status (\d+)")


class LoginRule:
    """What a login's answers mean, for `relay ssh` and `relay exec` (the console's
    relay/web/console/terminal.js `SshLogin` mirrors it). docs/device.md says what each device
    sends: the agent answers `connect` with status 200 once its shell is open, or with the
    failure's status; Huawei's device SDK answers at once with no `data` (no status), then logs
    in, and reports a failure as a `disconnect` with status 400 and its reason."""

    def __init__(self) -> None:
        self.unconfirmed = False   # accepted without a status, and no output seen yet

    def answered(self, code: str, text: str) -> tuple[bool, str]:
        """(accepted, what to tell) for a `connect_response` of status `code`."""
        if code == "200":
            self.unconfirmed = False
            return True, text or "logged in"
        if not code:
            self.unconfirmed = True
            return True, ("the device took the login request (it answers before its SSH login: "
                          "a refusal would follow as a disconnect)")
        return False, f"login failed ({code}): {text or 'the device gave no reason'}"

    def output(self) -> None:
        self.unconfirmed = False   # the shell is there: the login worked

    def refused(self, request_id: object, code: str, text: str) -> str | None:
        """The reason to end with when this `disconnect` is the device refusing the login."""
        from_device = not disconnect_is_final(code) or request_id == SDK_CHANNEL_CLOSED_ID
        if self.unconfirmed and from_device and code not in ("499", "404", "200"):
            self.unconfirmed = False
            return f"login failed ({code or 'no status'}): {text or 'the device gave no reason'}"
        return None


class SourceSession:
    """One source connection's protocol state."""

    def __init__(self, username: str, password: str, *, max_message_size: int = 10240,
                 relogin: bool = True, new_id: Callable[[], str] | None = None) -> None:
        self.username = username
        self._password = password
        self.max_message_size = max_message_size
        self.relogin = relogin
        self._new_id = new_id or (lambda: uuid.uuid4().hex)
        self.phase = Phase.WAITING
        self._connect_id: str | None = None
        self._logged_in_once = False
        self._login = LoginRule()
        self.ended: Ended | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        overhead = len(message("command", self._new_id_sample(), ""))
        self._chunk = max(1, (max_message_size - overhead) // MAX_ESCAPED)

    def _new_id_sample(self) -> str:
        return "x" * 128   # the longest request_id, so the chunk size holds for every id

    def __repr__(self) -> str:   # never the password
        return f"SourceSession(user={self.username!r}, phase={self.phase.value})"

    # -- from the relay ------------------------------------------------------------------

    def start(self) -> list[Event]:
        """The WebSocket is open."""
        return [Notice("waiting for the device...")]

    def received(self, text: str | bytes) -> list[Event]:
        if self.phase is Phase.ENDED:
            return []
        msg = envelope.parse(text)
        if msg is None:
            return []
        op = msg.get("operation_type")
        data = msg.get("data")
        if op == "connect_tunnel":
            return self._device_here()
        if op == "connect_response":
            return self._connect_response(msg.get("request_id"), data)
        if op == "command_response":
            if not (isinstance(data, str) and data):
                return []
            self._login.output()
            return [Output(data)]
        if op == "disconnect":
            return self._disconnect(msg.get("request_id"), data)
        return []   # ping is the relay's business, pong needs nothing, others are not for a source

    def _device_here(self) -> list[Event]:
        if self.phase is Phase.WAITING:
            if self._logged_in_once and not self.relogin:
                return self._end("the device reconnected, but its SSH session was lost")
            self.phase = Phase.LOGGING_IN
            self._connect_id = self._new_id()
            payload = message("connect", self._connect_id, {"username": self.username, "password": self._password})
            return [Notice(f"the device is connected; logging in as {self.username}..."), ToDevice(payload)]
        return []   # a repeated connect_tunnel while logging in or open: nothing new

    def _connect_response(self, request_id: Any, data: Any) -> list[Event]:
        if self.phase is not Phase.LOGGING_IN or request_id != self._connect_id:
            return []
        accepted, told = self._login.answered(*_status(data))
        if not accepted:
            return self._end(told)
        self.phase = Phase.OPEN
        self._logged_in_once = True
        return [LoggedIn(told)]

    def _disconnect(self, request_id: Any, data: Any) -> list[Event]:
        code, text = _status(data)
        refused = self._login.refused(request_id, code, text) if self.phase is Phase.OPEN else None
        if refused:
            return self._end(refused)
        if code == "499":   # the device went away; the relay keeps us connected and waits
            if self.phase is Phase.WAITING:
                return []
            self.phase = Phase.WAITING
            return [Notice(f"{text or 'the device disconnected'}; waiting for it to come back...")]
        if code == "404":   # something we sent found no device: it is not there (yet)
            if self.phase is Phase.OPEN and not self.relogin:
                return self._end("the device is not connected")
            self.phase = Phase.WAITING
            return [Notice("the device is not connected; waiting for it...")]
        if code == "200":   # the agent: the shell ended by itself
            found = _EXIT_STATUS.search(text)
            return self._end(text or "the SSH session ended", int(found.group(1)) if found else None, error=False)
        if request_id == SDK_CHANNEL_CLOSED_ID:   # Huawei's SDK: the shell ended (its status unknown)
            return self._end(f"the device closed the SSH session ({code or 'no status'}): {text or 'no reason given'}",
                             error=False)
        where = "the relay" if disconnect_is_final(code) else "the device"
        return self._end(f"{where} ended the session ({code or 'no status'}): {text or 'no reason given'}")

    def connection_closed(self, code: int | None) -> list[Event]:
        """The WebSocket ended (close frame `code`, or None when the network dropped)."""
        return self._end(describe_close(code))

    def give_up(self, reason: str) -> list[Event]:
        """The I/O layer stops waiting (the device did not come in time, ...)."""
        return self._end(reason)

    def _end(self, reason: str, exit_status: int | None = None, error: bool = True) -> list[Event]:
        if self.phase is Phase.ENDED:
            return []
        self.phase = Phase.ENDED
        self.ended = Ended(reason, exit_status, error)
        return [self.ended]

    # -- from the user -------------------------------------------------------------------

    def typed(self, data: str | bytes) -> list[Event]:
        """What the user typed (bytes from a raw terminal, or text): `command` messages."""
        text = self._decoder.decode(data) if isinstance(data, bytes) else data
        if not text or self.phase is not Phase.OPEN:
            return []   # nothing is sent while there is no shell (the device would refuse it)
        return [ToDevice(message("command", self._new_id(), text[i:i + self._chunk]))
                for i in range(0, len(text), self._chunk)]

    def close(self, reason: str = "the user left") -> list[Event]:
        """The user is leaving: end the device's SSH session if one is open."""
        events: list[Event] = []
        if self.phase in (Phase.OPEN, Phase.LOGGING_IN):
            events.append(ToDevice(message("disconnect", self._new_id(), {"status_code": "200", "status_msg": reason})))
        events += self._end(reason, error=False)
        return events


def _status(data: Any) -> tuple[str, str]:
    if not isinstance(data, dict):
        return "", ""
    code = data.get("status_code")
    text = data.get("status_msg")
    return (str(code) if isinstance(code, (str, int)) else "",
            " ".join(str(text).split()) if isinstance(text, str) else "")


# -- relay exec ----------------------------------------------------------------------------


class ExecFraming:
    """One command typed into the device's shell, and its output cut out of the terminal's.

    The line typed is, for a nonce N and the command C::

        stty -echo; printf '__RELAY_%s_BEGIN__\\n' N; (eval 'C'); printf '__RELAY_%s_END:%d__\\n' N $?; exit

    The terminal echoes the line as typed, but the echo holds `%s` and N apart, so only the
    printf output forms a marker. Everything before the begin marker (banner, prompt,
    echo) is dropped; what follows it up to the end marker is the command's output; the
    end marker carries the exit status. `eval` keeps a syntax error in C inside the
    command (status 2) instead of leaving the shell waiting for more lines; the subshell
    keeps an `exit 3` in C from ending the login shell before the end marker (and from
    its "logout"). Should the shell end anyway (killed), the agent's `disconnect` says
    "exit status N", which the caller passes to `shell_ended`. Output comes with the terminal's
    CRLF line ends; `crlf=False` gives plain LF, as a non-terminal `ssh host cmd` would.
    """

    def __init__(self, command: str, *, nonce: str | None = None, crlf: bool = False) -> None:
        self.nonce = nonce or secrets.token_hex(8)
        self.command = command
        self.crlf = crlf
        self._begin = f"__RELAY_{self.nonce}_BEGIN__"
        self._end_head = f"__RELAY_{self.nonce}_END:"
        self._end = re.compile(rf"__RELAY_{self.nonce}_END:(\d+)__(\r?\n)?")
        self._buffer = ""
        self.begun = False
        self.done = False
        self.exit_status: int | None = None

    @property
    def line(self) -> str:
        n = self.nonce
        return (f" stty -echo 2>/dev/null; printf '__RELAY_%s_BEGIN__\\n' {n}; (eval {shlex.quote(self.command)}); "
                f"printf '__RELAY_%s_END:%d__\\n' {n} $?; exit\n")

    def feed(self, text: str) -> str:
        """Terminal output in; the part of it that is the command's output out."""
        if self.done:
            return ""
        self._buffer += text
        if not self.begun:
            at = self._buffer.find(self._begin)
            if at < 0:
                keep = len(self._begin) + 2
                self._buffer = self._buffer[-keep:]   # a marker may be split across messages
                return ""
            rest = self._buffer[at + len(self._begin):]
            if rest in ("", "\r"):
                return ""   # wait for the line end after the marker
            self.begun = True
            self._buffer = rest[2:] if rest.startswith("\r\n") else rest[1:] if rest.startswith("\n") else rest
        found = self._end.search(self._buffer)
        if found:
            self.done = True
            self.exit_status = int(found.group(1))
            out, self._buffer = self._buffer[:found.start()], ""
            return self._clean(out)
        hold = self._partial_end(self._buffer)
        out, self._buffer = self._buffer[:hold], self._buffer[hold:]
        if out.endswith("\r"):   # its "\n" may be in the next message
            out, self._buffer = out[:-1], "\r" + self._buffer
        return self._clean(out)

    def _partial_end(self, text: str) -> int:
        """Where a suffix of `text` that may grow into the end marker starts (len(text): none)."""
        for at in range(max(0, len(text) - len(self._end_head) - 16), len(text)):
            tail = text[at:]
            if self._end_head.startswith(tail) or (
                    tail.startswith(self._end_head) and re.fullmatch(r"\d*_?", tail[len(self._end_head):])):
                return at
        return len(text)

    def shell_ended(self, exit_status: int | None) -> str:
        """The shell ended before the end marker (the command ran `exit`): the rest."""
        if not self.done:
            self.done = True
            self.exit_status = exit_status
        out, self._buffer = (self._buffer if self.begun else ""), ""
        return self._clean(out)

    def _clean(self, text: str) -> str:
        return text if self.crlf else text.replace("\r\n", "\n")
