"""The agent's SSH adapter against a real OpenSSH server."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import unused_port

from relay.agent.ssh import LoginFailed, Shell


async def read_until(shell: Shell, marker: bytes, timeout: float = 10) -> bytes:
    out = b""
    async with asyncio.timeout(timeout):
        while marker not in out:
            chunk = await shell.read()
            assert chunk, f"the shell ended before {marker!r}; got {out[-500:]!r}"
            out += chunk
    return out


async def test_login_and_real_output(sshd):
    shell = await Shell.open("127.0.0.1", sshd.port, sshd.user, sshd.password)
    try:
        shell.write(b"echo hello-$((6*7)); whoami\n")
        # the two commands' output, one line each and in order (the typed line reads hello-$((6*7)))
        out = await read_until(shell, b"hello-42\r\n" + sshd.user.encode() + b"\r\n")
        assert out.count(b"hello-42") == 1
    finally:
        await shell.close()


async def test_the_shell_has_a_terminal(sshd):
    shell = await Shell.open("127.0.0.1", sshd.port, sshd.user, sshd.password)
    try:
        shell.write(b"tty -s && echo is-a-$((1))-tty; stty size\n")
        out = await read_until(shell, b"30 128")
        assert b"is-a-1-tty" in out
    finally:
        await shell.close()


async def test_exit_ends_the_shell(sshd):
    shell = await Shell.open("127.0.0.1", sshd.port, sshd.user, sshd.password)
    try:
        shell.write(b"exit 3\n")
        async with asyncio.timeout(10):
            while await shell.read():
                pass
        assert shell.exit_status == 3
    finally:
        await shell.close()


async def test_wrong_password(sshd):
    with pytest.raises(LoginFailed) as caught:
        await Shell.open("127.0.0.1", sshd.port, sshd.user, "not-the-password")
    assert caught.value.code == "401" and "refused" in caught.value.message
    assert "not-the-password" not in caught.value.message


async def test_no_ssh_server():
    with pytest.raises(LoginFailed) as caught:
        await Shell.open("127.0.0.1", unused_port(), "someone", "pw")
    assert caught.value.code == "502" and "cannot reach the SSH server" in caught.value.message
