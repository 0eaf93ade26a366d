"""The device's own SSH server, reached with asyncssh (the agent's only asyncssh user): log
in with the username and password of `connect`, open an interactive shell on a PTY."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncssh

log = logging.getLogger(__name__)
logging.getLogger("asyncssh").setLevel(logging.WARNING)   # it logs every channel at INFO

TERM_TYPE = "xterm"
TERM_SIZE = (128, 30)   # columns, rows: what Huawei's device SDK opens
READ_SIZE = 8192


class LoginFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Shell:
    def __init__(self, conn: asyncssh.SSHClientConnection, process: asyncssh.SSHClientProcess) -> None:
        self._conn = conn
        self._process = process

    @classmethod
    async def open(cls, host: str, port: int, username: str, password: str, *,
                   known_hosts: str | None = None, timeout: float = 15.0) -> Shell:
        where = f"{host}:{port}"
        try:
            conn = await asyncio.wait_for(asyncssh.connect(
                host, port, username=username, password=password,
                known_hosts=known_hosts,          # None: not checked (the device's own server, on loopback)
                client_keys=None, agent_path=None, # the tunnel user's password, nothing of the agent's own
                preferred_auth=("password", "keyboard-interactive"),
            ), timeout)
        except asyncssh.PermissionDenied:
            raise LoginFailed("401", f"SSH login to {where} as {username!r} refused: wrong user name or password") from None
        except asyncio.TimeoutError:
            raise LoginFailed("504", f"the SSH server at {where} did not answer within {timeout:g} s") from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise LoginFailed("502", f"the SSH server at {where} has a host key that is not trusted: {exc.reason}") from None
        except (OSError, asyncssh.Error) as exc:
            text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise LoginFailed("502", f"cannot reach the SSH server at {where}: {text}") from None
        try:
            process = await conn.create_process(term_type=TERM_TYPE, term_size=TERM_SIZE, encoding=None)
        except (OSError, asyncssh.Error) as exc:
            conn.close()
            await conn.wait_closed()
            raise LoginFailed("502", f"logged in to {where}, but no shell was given: {exc}") from None
        return cls(conn, process)

    def write(self, data: bytes) -> None:
        if not self._process.stdin.is_closing():
            self._process.stdin.write(data)

    async def read(self) -> bytes:
        """Terminal output (stdout and stderr share the PTY); b"" at the end."""
        try:
            data = await self._process.stdout.read(READ_SIZE)
        except (asyncssh.Error, OSError):
            data = b""
        if not data:   # the exit status may come just after the end of output: give it a moment
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._process.wait_closed(), 2)
        return data

    @property
    def exit_status(self) -> int | None:
        return self._process.exit_status

    async def close(self) -> None:
        self._process.close()
        self._conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.wait_closed(), 5)
