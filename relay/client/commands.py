"""What `relay tunnel ...`, `relay ssh` and `relay exec` do with their parsed arguments
(relay/cli.py builds the parsers). Exit statuses: 0 done; 1 the API refused (its error
code is in the one-line message on stderr); 2 a usage or setting error; for ssh and exec
the remote shell's or command's status, or 255 when the relay, tunnel or login failed."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from relay import config
from relay.client import output
from relay.client.api import ApiError, ClientError, RelayApi
from relay.ends.websocket import tls_setting
from relay.client.remote import EXIT_FAILURE, Opened, execute, interactive, open_tunnel, waiter_for
from relay.client.session import SourceSession
from relay.client.terminal import Terminal
from relay.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_PROJECT = "default"
# where `relay serve` writes the token it generates (next to its default database): a relay
# started in this directory is found without any setting
GENERATED_TOKEN_FILE = Path("var/api-tokens.txt")


# -- settings ----------------------------------------------------------------------------------


def api_token(args: argparse.Namespace) -> str:
    """--token, RELAY_API_TOKEN, or --token-file / RELAY_API_TOKEN_FILE (a bare token, or
    PROJECT:NAME:TOKEN lines as `relay serve` reads them: the first of the project), or else
    var/api-tokens.txt when a relay started here generated it."""
    token = args.token or config.env("api_token")
    if token:
        return token.strip()
    path = args.token_file or config.env("api_token_file")
    if not path and GENERATED_TOKEN_FILE.is_file():
        path = str(GENERATED_TOKEN_FILE)
    if not path:
        raise ConfigError("no API token: set RELAY_API_TOKEN, or give --token-file FILE "
                          "(`relay serve` writes var/api-tokens.txt when it generates one; "
                          "run this command in the directory where the relay runs to use it)")
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the API token file {path}: {exc.strerror}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for entry in entries:
        parts = entry.split(":", 2)
        if len(parts) == 3 and parts[0] == args.project:
            return parts[2]
        if len(parts) == 1:
            return entry
    raise ConfigError(f"the API token file {path} has no token for project {args.project!r}")


def make_api(args: argparse.Namespace) -> RelayApi:
    return RelayApi(args.url, api_token(args), args.project, instance_id=args.instance_id or None,
                    ssl=tls_setting(args.ca_file, args.insecure), timeout=args.timeout)


def _fail(exc: Exception, err: TextIO) -> None:
    output.say(f"relay: {exc}", file=err)


# -- relay tunnel ------------------------------------------------------------------------------


def tunnel(args: argparse.Namespace) -> int:
    return asyncio.run(tunnel_async(args, sys.stdout, sys.stderr))


async def tunnel_async(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    api = make_api(args)
    try:
        async with api:
            return await _TUNNEL_ACTIONS[args.action](api, args, out, err)
    except ClientError as exc:
        _fail(exc, err)
        return 1


def _print(out: TextIO, text: str) -> None:
    output.say(text, file=out)


async def _create(api: RelayApi, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    made = await api.create(args.device_id, description=args.description, custom_info=args.custom_info,
                            expires_in=args.expires_in, record_session=args.record)
    _print(out, output.to_json(made) if args.json else output.fields(made, output.CREATED_FIELDS))
    return 0


async def _list(api: RelayApi, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.all:
        tunnels = await api.list_all(device_id=args.device_id, status=args.status)
        page: dict[str, Any] = {"tunnels": tunnels, "page": {"count": len(tunnels), "marker": None}}
    else:
        page = await api.list_page(device_id=args.device_id, status=args.status, limit=args.limit,
                              marker=args.marker, offset=args.offset)
    if args.json:
        _print(out, output.to_json(page))
        return 0
    _print(out, output.tunnels_table(page["tunnels"]))
    count = (page.get("page") or {}).get("count", len(page["tunnels"]))
    marker = (page.get("page") or {}).get("marker")
    if count > len(page["tunnels"]) and page["tunnels"]:
        more = f"; the next page: --marker {marker}" if marker else ""
        output.say(f"{len(page['tunnels'])} of {count} tunnels shown (--all for every one{more})", file=err)
    return 0


async def _show(api: RelayApi, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    info = await api.show(args.tunnel_id)
    _print(out, output.to_json(info) if args.json else output.fields(info))
    return 0


async def _rotate(api: RelayApi, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    answer = await api.rotate(args.tunnel_id, args.side)
    order = ("tunnel_id", "expires_in", "tunnel_access_token", "device_access_token")
    _print(out, output.to_json(answer) if args.json else output.fields(answer, order))
    return 0


async def _close_or_delete(api: RelayApi, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    action = args.action
    ids = list(dict.fromkeys(args.tunnel_ids))
    if len(ids) == 1:
        try:
            await (api.close(ids[0]) if action == "close" else api.delete(ids[0]))
        except ApiError as exc:
            if args.json:
                _print(out, output.to_json(output.single_result(ids[0], exc)))
            _fail(exc, err)
            return 1
        answer = output.single_result(ids[0])
    else:
        answer = await api.batch(action, ids)
    _print(out, output.to_json(answer) if args.json else output.batch_lines(action, answer))
    return 1 if answer.get("failure_count") else 0


_TUNNEL_ACTIONS = {"create": _create, "list": _list, "show": _show, "rotate": _rotate,
                   "close": _close_or_delete, "delete": _close_or_delete}


# -- relay ssh / relay exec --------------------------------------------------------------------


def ssh_password(args: argparse.Namespace, device_id: str, stdin: TextIO | None = None) -> str:
    if args.password_stdin:
        line = (stdin or sys.stdin).readline()
        if not line:
            raise ConfigError("--password-stdin: standard input is empty")
        return line.rstrip("\r\n")
    env = config.env("ssh_password")
    if env is not None:
        return env
    if not os.isatty(0):
        raise ConfigError("no SSH password: standard input is not a terminal to ask on; "
                          "give --password-stdin or set RELAY_SSH_PASSWORD")
    return getpass.getpass(f"{args.user}@{device_id}'s password: ")


def remote(args: argparse.Namespace) -> int:
    """`relay ssh` and `relay exec`."""
    password = ssh_password(args, args.device_id)   # before anything is opened on the relay
    terminal = Terminal(quiet=args.quiet, raw_output=args.raw_terminal)
    return asyncio.run(remote_async(args, password, terminal))


async def remote_async(args: argparse.Namespace, password: str, terminal: Terminal) -> int:
    api = make_api(args)
    try:
        async with api:
            opened = await open_tunnel(api, args.device_id, terminal.notice, expires_in=args.expires_in,
                                       description=f"relay {args.mode} as {args.user}")
            try:
                return await _run_remote(api, args, opened, password, terminal)
            finally:
                await _after(api, args, opened, terminal)
    except ClientError as exc:
        terminal.error(f"relay: {exc}")
        return EXIT_FAILURE


async def _run_remote(api: RelayApi, args: argparse.Namespace, opened: Opened, password: str,
                      terminal: Terminal) -> int:
    assert api.http is not None
    waiter = waiter_for(api, args.device_id, opened.tunnel_id)
    if args.mode == "ssh":
        session = SourceSession(args.user, password, relogin=True)
        return await interactive(api.http, opened, session, terminal, wait=args.wait, ssl=api.ssl,
                                 set_size=args.set_size, waiter=waiter)
    command = " ".join(args.command)   # as ssh does: the remote shell splits it again
    session = SourceSession(args.user, password, relogin=False)
    return await execute(api.http, opened, session, terminal, command, wait=args.wait, ssl=api.ssl,
                         timeout=args.timeout_command, crlf=args.crlf, waiter=waiter)


def closes_on_exit(created: bool, args: argparse.Namespace) -> bool:
    """Whether a command closes its tunnel when it ends: the one it created, unless --keep; one
    that was open before (someone else's, maybe), only when asked with --close."""
    if getattr(args, "close", False):
        return True
    return created and not args.keep


async def _after(api: RelayApi, args: argparse.Namespace, opened: Opened, terminal: Terminal) -> None:
    if not closes_on_exit(opened.created, args):
        if opened.created:
            terminal.notice(f"the tunnel {opened.tunnel_id} stays open (--keep); "
                            f"close it with: relay tunnel close {opened.tunnel_id}")
        else:
            terminal.notice(f"the tunnel {opened.tunnel_id} was open before this command and stays open "
                            f"(--close closes it on exit)")
        return
    try:
        await api.close(opened.tunnel_id)   # also after Ctrl-C: asyncio.run cancels once, then lets this run
    except ClientError as exc:
        terminal.error(f"relay: could not close the tunnel {opened.tunnel_id}: {exc}")
