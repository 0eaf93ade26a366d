"""The agent's only asyncssh user. `Shell`: the device's own SSH server, reached with the
username and password of `connect`, an interactive shell on a PTY. `DemoSshServer`: the SSH
server of `relay demo-device` (relay/agent/demo.py), for trying the relay without a device."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import pwd
import secrets
import struct
import subprocess
import termios
from pathlib import Path

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
        except TimeoutError:
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


# -- the demo device's own SSH server (`relay demo-device`, docs/demo.md) ---------------------

DEMO_USER = "demo"


def _login_shell() -> str:
    shell = os.environ.get("SHELL") or pwd.getpwuid(os.getuid()).pw_shell
    return shell if shell and os.access(shell, os.X_OK) else "/bin/sh"


def _set_size(fd: int, cols: int, rows: int) -> None:
    if cols > 0 and rows > 0:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal(fd: int) -> None:
    """In the child: a session of its own whose controlling terminal is the pseudo-terminal, so
    that Ctrl-C reaches the foreground job and job control works. (Not start_new_session: under
    uvloop it may come after preexec_fn, and fd 0 may not be the terminal yet, so both are done
    here on the terminal's own descriptor.)"""
    os.setsid()
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


class _Server(asyncssh.SSHServer):
    def __init__(self, password: str) -> None:
        self._password = password

    def begin_auth(self, username: str) -> bool:
        return True   # always ask: nobody logs in without the password

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        ok_user = secrets.compare_digest(username.encode(), DEMO_USER.encode())
        ok_password = secrets.compare_digest(password.encode(), self._password.encode())
        return ok_user and ok_password


async def _serve_shell(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """One SSH session: the user's shell on a new pseudo-terminal, bytes both ways."""
    cols, rows, _, _ = process.get_terminal_size()
    master, slave = os.openpty()
    _set_size(slave, cols or 80, rows or 24)
    env = {**os.environ, "TERM": process.get_terminal_type() or "xterm", "PS1": "demo$ "}
    try:
        child = await asyncio.create_subprocess_exec(
            _login_shell(), stdin=slave, stdout=slave, stderr=slave, env=env, cwd=str(Path.home()),
            preexec_fn=functools.partial(_take_terminal, slave))
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(master)
        os.close(slave)
        process.stderr.write(f"demo device: cannot start a shell: {exc}\r\n".encode())
        process.exit(1)
        return
    os.close(slave)
    os.set_blocking(master, False)
    loop = asyncio.get_running_loop()
    output_done = asyncio.Event()

    def readable() -> None:
        try:
            data = os.read(master, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:   # EIO: the shell and everything it started have closed the terminal
            data = b""
        if data:
            process.stdout.write(data)
        else:
            loop.remove_reader(master)
            output_done.set()

    loop.add_reader(master, readable)

    async def typed() -> None:
        while True:
            try:
                data = await process.stdin.read(READ_SIZE)
            except asyncssh.TerminalSizeChanged as change:
                _set_size(master, change.width, change.height)
                continue
            except (asyncssh.Error, OSError):
                data = b""
            if not data:
                return
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(master, view):]
                except BlockingIOError:   # the shell is not reading: wait, as a terminal would
                    await asyncio.sleep(0.01)
                except OSError:
                    return

    typing = asyncio.create_task(typed())
    try:
        status = await child.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(output_done.wait(), 2)   # what the shell printed last
    finally:
        typing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await typing
        loop.remove_reader(master)
        os.close(master)
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, 9)
    process.exit(status if status >= 0 else 128 - status)


class DemoSshServer:
    """The demo device's SSH server on 127.0.0.1 (a free port unless given)."""

    def __init__(self, password: str, port: int = 0) -> None:
        self._password = password
        self._port = port
        self._server: asyncssh.SSHAcceptor | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        host_key = asyncssh.generate_private_key("ssh-ed25519")   # new each run: nothing to keep on disk
        self._server = await asyncssh.create_server(
            lambda: _Server(self._password), "127.0.0.1", self._port, server_host_keys=[host_key],
            process_factory=_serve_shell, encoding=None, allow_scp=False)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
