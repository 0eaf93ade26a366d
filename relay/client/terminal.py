"""The local terminal of `relay ssh`: raw mode, stdin as it is typed, output, notices.

In raw mode the terminal hands over every byte as typed (Ctrl-C is byte 0x03, sent to the
device's shell like any other key, where it interrupts the running program) and echoes
nothing: the remote PTY echoes. Its output already has CRLF line ends, so it is written
as it comes, through the filter of the sequences that reach past the screen (termfilter.py;
`raw_output` passes everything). Our own notices go to stderr, sanitized (relay/printable.py: they
quote what the device and the relay said), with an explicit CRLF while raw mode is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import termios
import tty
from collections.abc import Iterator
from typing import BinaryIO, TextIO

from relay.client.termfilter import TerminalFilter
from relay.printable import safe

READ_SIZE = 4096


class Terminal:
    def __init__(self, stdin_fd: int | None = None, stdout: BinaryIO | None = None,
                 stderr: TextIO | None = None, quiet: bool = False, raw_output: bool = False) -> None:
        self.quiet = quiet
        self.screen = None if raw_output else TerminalFilter()   # of the remote terminal's stream
        self.stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
        self.stdout = stdout or sys.stdout.buffer
        self.stderr = stderr or sys.stderr
        self.raw = False

    @property
    def interactive(self) -> bool:
        return os.isatty(self.stdin_fd)

    def size(self) -> tuple[int, int]:
        """(columns, rows) of the local terminal."""
        try:
            size = os.get_terminal_size(self.stdin_fd)
            return size.columns, size.lines
        except OSError:
            fallback = shutil.get_terminal_size()
            return fallback.columns, fallback.lines

    @contextlib.contextmanager
    def raw_mode(self) -> Iterator[None]:
        """Raw mode while inside; the previous settings restored on the way out, whatever happens."""
        if not self.interactive:
            yield
            return
        saved = termios.tcgetattr(self.stdin_fd)
        tty.setraw(self.stdin_fd, termios.TCSANOW)
        self.raw = True
        try:
            yield
        finally:
            self.raw = False
            termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, saved)

    def write(self, text: str) -> None:
        """The remote terminal's own output."""
        if self.screen is not None:
            text = self.screen.feed(text)
        self.stdout.write(text.encode("utf-8", "replace"))
        self.stdout.flush()

    def notice(self, text: str) -> None:
        """A line of our own (progress, status) on stderr, never mixed into stdout."""
        if not self.quiet:
            self.error(text)

    def error(self, text: str) -> None:
        """Like `notice`, also when quiet."""
        text = safe(text)
        if self.raw:
            lines = text.replace("\n", "\r\n")
            self.stderr.write(f"\r\n[relay] {lines}\r\n")
        else:
            self.stderr.write(f"{text}\n")
        self.stderr.flush()

    @contextlib.contextmanager
    def reading(self, queue: asyncio.Queue[bytes]) -> Iterator[None]:
        """Put what arrives on stdin into `queue` as it comes (b"" at end of file)."""
        loop = asyncio.get_running_loop()
        fd = self.stdin_fd
        was_blocking = os.get_blocking(fd)
        os.set_blocking(fd, False)

        def ready() -> None:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(fd)
            queue.put_nowait(data)

        try:
            loop.add_reader(fd, ready)
        except (PermissionError, ValueError):   # a regular file cannot be watched: read it at once
            os.set_blocking(fd, True)
            while data := os.read(fd, READ_SIZE):
                queue.put_nowait(data)
            queue.put_nowait(b"")
            try:
                yield
            finally:
                os.set_blocking(fd, was_blocking)
            return
        try:
            yield
        finally:
            loop.remove_reader(fd)
            os.set_blocking(fd, was_blocking)
