"""The `relay` command. The only module that installs uvloop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from relay import config, logs
from relay.config import Settings
from relay.errors import ConfigError
from relay.tokens import new_token

SERVE_PREFIX = "RELAY_"          # RELAY_<OPTION> gives `relay serve --<option>`


def _check_device_id(device_id: str | None) -> None:
    if not config.DEVICE_ID_RE.match(device_id or ""):
        raise ConfigError(f"device id {device_id!r} must be 1-128 of A-Z a-z 0-9 _ -")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the relay (REST API and WebSocket endpoints)",
        description="Run the relay. Every option can also be set as an environment variable "
                    "RELAY_<OPTION> (for example RELAY_PUBLIC_URL); the command line wins.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    config.add_options(p, config.SERVE_OPTIONS, Settings(), SERVE_PREFIX)
    p.set_defaults(func=_serve)


def _add_agent(sub: argparse._SubParsersAction) -> None:
    from relay.agent.settings import AGENT_OPTIONS, AgentSettings
    from relay.agent.settings import PREFIX as AGENT_PREFIX

    p = sub.add_parser(
        "agent",
        help="run the device agent: serve this device's tunnels with its own SSH server",
        description="The device agent (docs/device.md). It connects to the MQTT broker as the device, "
                    "announces it online (a retained 'online' on $oc/devices/DEVICE/sys/presence, with a last "
                    "will that says 'offline'), and listens on $oc/devices/DEVICE/sys/events/down. On a "
                    "tunnel_notify it connects to the relay's device-connect address with the token of the "
                    "notify; each 'connect' logs in to the device's SSH server with the username and password "
                    "the application sent and opens a shell on a terminal; 'command' data is typed into it and "
                    "the output goes back as 'command_response' messages. It reconnects with growing delays "
                    "after network trouble, waits for a new token (it comes over MQTT) when its token was "
                    "rotated, and stops when the tunnel is closed or expired or another connection replaced "
                    "it. Tokens and passwords are never logged. Every option can also be set as an "
                    "environment variable RELAY_AGENT_<OPTION>.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    config.add_options(p, AGENT_OPTIONS, AgentSettings(device_id=""), AGENT_PREFIX)
    p.set_defaults(func=_agent)


def _add_device(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "device", help="accounts of devices on the relay's managed MQTT broker (add, remove, list)",
        description="The MQTT broker that `relay serve` runs itself (no --mqtt-url) lets no one in without an "
                    "account (docs/device.md, docs/security.md). `add DEVICE_ID` creates the account of a "
                    "device, whose user name is its device id, and prints its password once (or writes it to "
                    "--password-file); only the hash is stored, in mqtt-passwd next to the relay's database. A "
                    "running relay picks the change up within a second. The account may use its own topics "
                    "only ($oc/devices/DEVICE_ID/...). For a broker of your own, make accounts with its tools.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--db", default=config.env("db", Settings().db),
                       help="the relay's database file (RELAY_DB): the accounts are in its folder")
    a = actions.add_parser("add", parents=[where], help="create a device's account and print its password")
    a.add_argument("device_id", metavar="DEVICE_ID")
    a.add_argument("--replace", action="store_true", help="give an existing account a new password")
    a.add_argument("--password-file", help="write the password to this new file (mode 0600) instead of printing it")
    r = actions.add_parser("remove", parents=[where],
                           help="delete a device's account (the running broker cuts its connection and refuses it)")
    r.add_argument("device_id", metavar="DEVICE_ID")
    actions.add_parser("list", parents=[where], help="the device accounts")
    p.set_defaults(func=lambda args: _device(args) if args.action else _help(p))


def _device(args: argparse.Namespace) -> int:
    from relay.broker import BrokerAccounts, accounts_folder

    accounts = BrokerAccounts(accounts_folder(args.db))
    if args.action == "list":
        for device_id in accounts.devices():
            print(device_id)
        return 0
    if args.action == "remove":
        if not accounts.remove_device(args.device_id):
            raise ConfigError(f"device {args.device_id[:140]!r} has no account in {accounts.password_file}")
        print(f"removed the MQTT account of device {args.device_id}")
        return 0
    if args.password_file and os.path.exists(args.password_file):
        raise ConfigError(f"{args.password_file} exists already: name a new file")
    password = accounts.add_device(args.device_id, replace=args.replace)
    broker = f"mqtt://127.0.0.1:{config.MANAGED_BROKER_PORT}"
    if args.password_file:
        fd = os.open(args.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(password + "\n")
        print(f"device {args.device_id}: MQTT user name {args.device_id}, password in {args.password_file}\n"
              f"  on the device: relay agent --device-id {args.device_id} --mqtt-url {broker} "
              f"--mqtt-password-file {args.password_file}")
    else:
        print(f"device {args.device_id}: MQTT user name {args.device_id}, password (shown once):\n{password}\n"
              f"  on the device: RELAY_AGENT_MQTT_PASSWORD=... relay agent --device-id {args.device_id} "
              f"--mqtt-url {broker}")
    return 0


def _agent(args: argparse.Namespace) -> int:
    from relay.agent.runner import run

    settings = agent_settings(args)
    logs.setup(args.log_level, args.log_format)
    return asyncio.run(run(settings))


def agent_settings(args: argparse.Namespace):
    """The agent's settings from its options (AgentSettings)."""
    from relay.agent.settings import AGENT_OPTIONS, AgentSettings
    from relay.agent.settings import PREFIX as AGENT_PREFIX

    _check_device_id(args.device_id)
    config.parse_mqtt_url(args.mqtt_url)
    values = config.settings_values(args, AGENT_OPTIONS, AGENT_PREFIX)
    values["mqtt_password"] = password = values["mqtt_password"] or _secret_file(args.mqtt_password_file)
    values["mqtt_username"] = values["mqtt_username"] or (args.device_id if password else None)
    settings = AgentSettings(**values, aws_services=_aws_services(args.aws_services))
    return settings


def _secret_file(path: str | None, what: str = "password file") -> str | None:
    """The first line of a file that holds a secret (None without a file)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            secret = fh.readline().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"the {what} {path} is empty")
    return secret


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-device",
        help="a demo device on this machine: the agent plus its own SSH server (to try the relay; never on a real device)",
        description="Runs the device agent for DEVICE_ID together with an SSH server of its own on a loopback "
                    "port, so that `relay ssh`, `relay exec`, `relay forward --port 22` and the console's terminal "
                    "can be tried on one machine, without root and without a system sshd (docs/demo.md). The SSH "
                    "server has one account, 'demo', whose password is new each run and written to "
                    "--password-file (0600); it opens the shell of the user who runs this command. That is why it "
                    "is a separate command and never part of `relay agent`: run it on a developer's machine only. "
                    "It connects to the MQTT broker `relay serve` runs (mqtt://127.0.0.1:1883) unless told otherwise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("device_id", metavar="DEVICE_ID", help="the device id to announce (1-128 of A-Z a-z 0-9 _ -)")
    from relay.agent.settings import AGENT_OPTIONS, AgentSettings
    from relay.agent.settings import PREFIX as AGENT_PREFIX

    broker = [option for option in AGENT_OPTIONS if option.flag == "--mqtt-url"]   # the agent's, as it is
    config.add_options(p, broker, AgentSettings(device_id=""), AGENT_PREFIX)
    p.add_argument("--mqtt-username", default=config.env("agent_mqtt_username"),
                   help="user name for the broker (with RELAY_AGENT_MQTT_PASSWORD); without one, on the relay's "
                        "managed broker, the demo device gives itself an account there (`relay device add`)")
    p.add_argument("--db", default=config.env("db", Settings().db),
                   help="the relay's database file (RELAY_DB): its folder holds the managed broker's accounts")
    p.add_argument("--password-file", default="var/demo-device.password",
                   help="where to write the demo account's password (removed on exit)")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    def run(args: argparse.Namespace) -> int:
        from relay.agent.demo import run_demo

        _check_device_id(args.device_id)
        config.parse_mqtt_url(args.mqtt_url)
        username, password = args.mqtt_username or None, config.env("agent_mqtt_password") or None
        if password is None and args.mqtt_url == f"mqtt://127.0.0.1:{config.MANAGED_BROKER_PORT}":
            # the broker `relay serve` runs lets no one in without an account: make (or renew) ours,
            # as `relay device add --replace` would; the running relay reloads the broker's accounts
            from relay.broker import BrokerAccounts, accounts_folder
            username = args.device_id
            password = BrokerAccounts(accounts_folder(args.db)).add_device(args.device_id, replace=True)
        settings = AgentSettings(device_id=args.device_id, mqtt_url=args.mqtt_url,
                                 mqtt_username=username, mqtt_password=password)
        logs.setup(args.log_level, "text")
        return asyncio.run(run_demo(settings, Path(args.password_file), lambda text: print(text, file=sys.stderr, flush=True)))

    p.set_defaults(func=run)


def _aws_services(text: str | None) -> tuple[tuple[str, str, int], ...]:
    """--aws-services: SERVICE=PORT or SERVICE=HOST:PORT, comma-separated (a bare host: --ssh-host)."""
    from relay.ends.localproxy_args import parse_destinations

    if not (text or "").strip():
        return ()
    try:
        mapping = parse_destinations(text or "", default_host="")
    except ValueError as exc:
        raise ConfigError(f"--aws-services: {exc}") from None
    if "" in mapping:
        raise ConfigError("--aws-services: name the service of each address (SSH=22)")
    return tuple((service, host, port) for service, (host, port) in mapping.items())


def _dev_token_file(db: str) -> Path:
    """Create (once) a token file for the development project next to the database."""
    folder = Path(db).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "api-tokens.txt"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"# generated by `relay serve`; one PROJECT:NAME:TOKEN per line\n{config.DEV_PROJECT}:dev:{new_token()}\n")
    return path


def settings_from_args(args: argparse.Namespace) -> tuple[Settings, str | None]:
    tokens_file = args.api_tokens_file
    inline = config.env("api_tokens")
    generated = None
    if not tokens_file and not inline:
        tokens_file = generated = str(_dev_token_file(args.db))
    api_keys = config.load_api_keys(tokens_file, inline)
    values = config.settings_values(args, config.SERVE_OPTIONS, SERVE_PREFIX)
    values["min_lifetime"] = min(values["min_lifetime"], values["default_lifetime"])
    bridge_secret = _secret_file(args.bridge_secret_file, "bridge secret file") or config.env("bridge_secret") or ""
    settings = Settings(api_keys=api_keys, bridge_secret=bridge_secret, **values)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    mqtt_url, managed = _resolve_mqtt_url(args.mqtt_url)
    return dataclasses.replace(settings, mqtt_url=mqtt_url, managed_broker=managed), generated


def _resolve_mqtt_url(value: str | None) -> tuple[str, bool]:
    """(broker URL, whether the relay runs it itself) from --mqtt-url."""
    text = (value or "").strip()
    if text.lower() in ("", "none", "off"):
        return "", False
    if text.lower() == "auto":
        from relay.broker import find_mosquitto  # standard library only
        if find_mosquitto():
            return f"mqtt://127.0.0.1:{config.MANAGED_BROKER_PORT}", True
        return "", False
    config.parse_mqtt_url(text)  # raises ConfigError with an explanation
    return text, False


def _serve(args: argparse.Namespace) -> int:
    from relay.web.server import run  # the web layer is loaded only for commands that serve

    settings, generated = settings_from_args(args)
    logs.setup(settings.log_level, args.log_format)
    return asyncio.run(run(settings, generated_token_file=generated))


# The commands that run until stopped and carry a tunnel's data (or serve it) run on uvloop:
# its loop costs the ends a fraction of the standard one's per message (issue 17). The short
# REST commands (tunnel, audit, playback) keep the standard loop, which they do not wait on.
LONG_RUNNING = frozenset({"serve", "agent", "demo-device", "forward", "ssh", "exec", "localproxy"})


@contextlib.contextmanager
def _on_uvloop() -> Iterator[None]:
    """Every asyncio.run inside runs on uvloop; RELAY_NO_UVLOOP=1 opts out. The policy in force
    before comes back after, so that a caller of main() in the same process keeps its own."""
    if os.environ.get("RELAY_NO_UVLOOP"):
        yield
        return
    try:
        import uvloop
    except ImportError:  # optional: the relay works on the standard loop, only slower
        yield
        return
    before = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(before)


# -- the application side: relay tunnel, relay ssh, relay exec (docs/cli.md) -----------------


def _connection_options() -> argparse.ArgumentParser:
    """Where the relay is and who we are: shared by `tunnel`, `ssh` and `exec`.

    The API token has no default shown by --help (it may come from the environment)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("relay connection (each also from the environment)")
    where, who = config.CONNECTION_OPTIONS[:1], config.CONNECTION_OPTIONS[1:]   # the token's options between them
    config.add_options(g, where, None, "RELAY_")
    g.add_argument("--token", default=None,
                   help="the API token (prefer RELAY_API_TOKEN: a command line is visible to others)")
    g.add_argument("--token-file", default=None,
                   help="a file holding the API token, bare or as PROJECT:NAME:TOKEN lines like the one "
                        "`relay serve` generates (RELAY_API_TOKEN_FILE)")
    config.add_options(g, who, None, "RELAY_")
    g.add_argument("--insecure", action="store_true", help="do not verify the relay's TLS certificate")
    g.add_argument("--timeout", type=config.positive_float, default=30.0, help="seconds to wait for each REST call (default 30)")
    return p


def _add_tunnel(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from relay.client import commands

    p = sub.add_parser(
        "tunnel", help="create, list, show, close, delete tunnels and rotate their tokens (REST API)",
        description="Manage tunnels through a relay's REST API (docs/api.md, docs/cli.md). Tables for people; "
                    "--json prints the API's answers for scripts. An API error is one line on stderr with its "
                    "error code, and exit status 1.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print the API's answer as JSON")

    c = actions.add_parser("create", parents=[common, out], help="open a tunnel to a device; prints its tokens")
    c.add_argument("device_id", metavar="DEVICE_ID")
    c.add_argument("--description", help="for people (at most 1024 characters)")
    c.add_argument("--custom-info", help="for the device: sent along with the MQTT notify")
    c.add_argument("--expires-in", type=config.positive_int, help="lifetime in seconds (default: the relay's)")
    c.add_argument("--record", action="store_true",
                   help="record the tunnel's SSH sessions (asciicast), to play back with `relay playback` "
                        "(record_session, docs/audit.md)")

    ls = actions.add_parser("list", parents=[common, out], help="list tunnels (a table, or --json)")
    ls.add_argument("--device-id", help="only this device's tunnels")
    ls.add_argument("--status", type=str.upper, choices=["OPEN", "CLOSED"], help="only tunnels in this state")
    ls.add_argument("--limit", type=config.positive_int, help="tunnels per page, 1-50 (the relay's default: 10)")
    ls.add_argument("--marker", help="start after this marker (page.marker of the previous page)")
    ls.add_argument("--offset", type=int, help="skip this many tunnels")
    ls.add_argument("--all", action="store_true", help="every matching tunnel, page after page")

    sh = actions.add_parser("show", parents=[common, out], help="show one tunnel")
    sh.add_argument("tunnel_id", metavar="TUNNEL_ID")

    for name, verb in (("close", "close"), ("delete", "delete (closed tunnels only)")):
        b = actions.add_parser(name, parents=[common, out],
                               help=f"{verb} tunnels; several ids use the batch endpoint (100 per call)")
        b.add_argument("tunnel_ids", metavar="TUNNEL_ID", nargs="+")

    r = actions.add_parser("rotate", parents=[common, out],
                           help="replace a tunnel's tokens (the old ones stop working at once); prints the new ones")
    r.add_argument("tunnel_id", metavar="TUNNEL_ID")
    r.add_argument("--side", choices=["source", "device", "all"], default="source",
                   help="whose token: source (the application's, default), device, or all")
    p.set_defaults(func=lambda args: commands.tunnel(args) if args.action else _help(p))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


RAW = ("write the device's terminal output as it comes: by default the sequences that reach past the screen "
       "are removed (clipboard writes OSC 52, palette and font changes, window operations, DCS/APC strings, "
       "queries answered into standard input; docs/security.md)")


def _add_remote(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from relay.client import commands

    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("device_id", metavar="DEVICE_ID")
    shared.add_argument("-l", "--user", default=config.env("ssh_user"), required=not config.env("ssh_user"),
                        help="the user to log in as on the device's SSH server (RELAY_SSH_USER)")
    shared.add_argument("--password-stdin", action="store_true",
                        help="read the SSH password from the first line of standard input; otherwise "
                             "RELAY_SSH_PASSWORD, otherwise it is asked for on the terminal")
    shared.add_argument("--keep", action="store_true",
                        help="leave the tunnel open on exit (a tunnel this command created is closed otherwise; "
                             "one that was open before is always left open)")
    shared.add_argument("--close", action="store_true",
                        help="close the tunnel on exit even when it was open before this command")
    shared.add_argument("--wait", type=config.positive_float, default=60.0,
                        help="seconds to wait for the device to connect and log in (default 60)")
    shared.add_argument("--expires-in", type=config.positive_int, help="lifetime of a new tunnel, in seconds")
    shared.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr (errors still)")
    shared.add_argument("--raw-terminal", action="store_true", help=RAW)

    s = sub.add_parser(
        "ssh", parents=[shared, common], help="an interactive shell on a device, through a tunnel",
        description="Open (or reuse) the device's tunnel, wait for the device, log in to its SSH server and "
                    "give an interactive terminal: every key goes to the remote shell (Ctrl-C included), its "
                    "output comes back as it is produced. A reused tunnel gets a new source token, which cuts "
                    "off any other application connected to it. The tunnel is closed on exit unless --keep. "
                    "The remote terminal is 128x30 (the protocol has no resize message; see --set-size). "
                    "Exit status: the remote shell's, or 255 when the relay, the tunnel or the login failed.")
    s.add_argument("--set-size", action="store_true",
                   help="after login, type `stty cols C rows R` (this terminal's size) into the remote shell once")
    s.set_defaults(func=commands.remote, mode="ssh")

    e = sub.add_parser(
        "exec", parents=[shared, common], help="run one command on a device and exit with its status",
        description="Run COMMAND in the device's shell (after `--`; the words are joined with spaces and the "
                    "remote shell splits them again, as ssh does) and print its output. The exit status is the "
                    "command's, read from a marker the shell prints after it (docs/cli.md); 255 when the relay, "
                    "the tunnel or the login failed. Needs a POSIX shell on the device.")
    e.add_argument("command", metavar="COMMAND", nargs="+", help="the command and its arguments, after --")
    e.add_argument("--command-timeout", dest="timeout_command", type=config.positive_float,
                   help="give up (status 255) if the command has not finished after this many seconds")
    e.add_argument("--crlf", action="store_true", help="keep the terminal's CRLF line ends (default: plain LF)")
    e.set_defaults(func=commands.remote, mode="exec", set_size=False)


def _add_forward(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from relay.client.forward import forward_command

    f = sub.add_parser(
        "forward", parents=[common], help="forward a local TCP port to a port on a device, through a tunnel",
        description="Open (or reuse) the device's tunnel, wait for the device, then listen on --listen; every "
                    "local TCP connection is forwarded to --port on the device (the agent's --forward-ports "
                    "allow-list decides which ports may be reached). Several connections at once, each "
                    "independent, with flow control (docs/forwarding.md). Runs until Ctrl-C; the tunnel is "
                    "closed on exit unless --keep. Example: relay forward my-device --listen 127.0.0.1:2222 "
                    "--port 22, then ssh -p 2222 pi@127.0.0.1.")
    f.add_argument("device_id", metavar="DEVICE_ID", nargs="?", help="the device (not needed with --tunnel)")
    f.add_argument("--listen", default="127.0.0.1:2222",
                   help="local HOST:PORT to listen on (default 127.0.0.1:2222; port 0: any free port, printed)")
    f.add_argument("--port", type=config.port_number, default=22, help="the port on the device (default 22)")
    f.add_argument("--tunnel", metavar="TUNNEL_ID",
                   help="use this tunnel (its source token is rotated, unless --source-token-stdin gives it)")
    f.add_argument("--source-token-stdin", action="store_true",
                   help="read the tunnel's source token from the first line of standard input (with --tunnel)")
    f.add_argument("--keep", action="store_true",
                   help="leave the tunnel open on exit (a tunnel this command created is closed otherwise; "
                        "one that was open before is always left open)")
    f.add_argument("--close", action="store_true",
                   help="close the tunnel on exit even when it was open before this command")
    f.add_argument("--wait", type=config.positive_float, default=60.0,
                   help="seconds to wait for the device to connect, and for it to answer each connection (default 60)")
    f.add_argument("--expires-in", type=config.positive_int, help="lifetime of a new tunnel, in seconds")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr (errors still)")
    f.add_argument("--protocol", choices=["huawei", "aws"], default="huawei",
                   help="huawei (default): the tcp service of Huawei's protocol (docs/forwarding.md); aws: an AWS "
                        "IoT Secure Tunneling tunnel, whose device end maps --service to an address itself "
                        "(--port is not used; docs/aws-clients.md)")
    f.add_argument("--service", default="SSH",
                   help="with --protocol aws: the tunnel's service id (default SSH)")

    def run(args: argparse.Namespace) -> int:
        if args.protocol == "aws":
            from relay.client.aws_tunnel import forward_aws_command
            return forward_aws_command(args)
        return forward_command(args)

    f.set_defaults(func=run)


def _add_localproxy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "localproxy", help="AWS IoT Secure Tunneling's local proxy, in source (-s) or destination (-d) mode",
        description="Either end of a tunnel of the AWS IoT Secure Tunneling protocol (V1-V3), with the flags of "
                    "AWS's localproxy (docs/aws-clients.md). Source: listen on a local port per service and carry "
                    "each connection to the destination (relay localproxy -s 5555, then ssh -p 5555 user@127.0.0.1). "
                    "Destination: connect each stream to the address of its service (relay localproxy -d SSH=22). "
                    "The access token comes from AWSIOT_TUNNEL_ACCESS_TOKEN (or --access-token-stdin, or -t); a "
                    "client token of its own lets it reconnect with the same access token after the connection "
                    "drops. Runs until the tunnel is over or Ctrl-C.")
    p.add_argument("-s", "--source-listen-port", metavar="[SERVICE=]PORT[,...]",
                   help="source mode: the local port for each service id, e.g. 5555 or SSH1=5555,SSH2=6666 "
                        "(port 0: a free one, printed)")
    p.add_argument("-d", "--destination-app", metavar="[SERVICE=]ENDPOINT[,...]",
                   help="destination mode: where each service's streams go, e.g. 22 or SSH=22,HTTP=10.0.0.1:80")
    p.add_argument("-m", "--mode", choices=["src", "source", "dst", "destination"],
                   help="the mode, when it should be said (it follows from -s or -d)")
    p.add_argument("-e", "--proxy-endpoint",
                   help="the relay: http(s)://HOST[:PORT] or ws(s)://HOST[:PORT] (AWSIOT_TUNNEL_ENDPOINT; "
                        "default RELAY_URL, or http://127.0.0.1:8080)")
    p.add_argument("-r", "--region", help="AWS's own endpoint of this region instead (AWSIOT_TUNNEL_REGION)")
    p.add_argument("-t", "--access-token", default=None,
                   help="the access token (prefer AWSIOT_TUNNEL_ACCESS_TOKEN: a command line is visible to others)")
    p.add_argument("--access-token-stdin", action="store_true",
                   help="read the access token from the first line of standard input")
    p.add_argument("--client-token", default=None,
                   help="the client token (32-128 of A-Z a-z 0-9 -) sent with the access token; default: a new "
                        "UUID per run")
    p.add_argument("-b", "--local-bind-address", default=None,
                   help="source: the address to listen on (default 127.0.0.1); destination: the host of bare ports")
    p.add_argument("-c", "--capath", default=None, help="a directory of CA certificates to verify a wss:// relay")
    p.add_argument("--ca-file", default=None, help="a CA bundle file to verify a wss:// relay")
    p.add_argument("-k", "--no-ssl-host-verify", action="store_true", help="do not verify the relay's certificate")
    p.add_argument("-y", "--destination-client-type", type=str.upper, choices=["V1", "V2", "V3"], default=None,
                   help="source: the protocol of the destination, for older ones (V2: one connection per "
                        "stream; V1: no service ids); default V3")
    p.add_argument("-v", "--verbose", type=int, default=4, help="log level 0-6, as localproxy's (default 4: info)")

    def run(args: argparse.Namespace) -> int:
        from relay.agent.aws import localproxy_destination
        from relay.client.aws_tunnel import localproxy_command
        return localproxy_command(args, localproxy_destination)

    p.set_defaults(func=run)


def _add_audit(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`relay audit` and `relay playback` (docs/audit.md)."""
    from relay.client import audit

    a = sub.add_parser(
        "audit", parents=[common], help="the audit trail: who opened what on which device, when (REST API)",
        description="List the project's audit events, newest first (docs/audit.md): a table, or --json. "
                    "--since and --until take 20261124T161807Z, 2026-11-24T16:18:07Z, or a duration ago "
                    "(90s, 15m, 2h, 7d). A session_recorded event names the session_id that `relay playback` plays.")
    a.add_argument("--device", metavar="DEVICE_ID", help="only this device's events")
    a.add_argument("--tunnel", metavar="TUNNEL_ID", help="only this tunnel's events")
    a.add_argument("--type", action="append", metavar="EVENT",
                   help="only events of this type (repeat it, or separate types with commas), e.g. "
                        "ssh_login_succeeded,ssh_login_failed")
    a.add_argument("--since", help="events at or after this time")
    a.add_argument("--until", help="events before this time")
    a.add_argument("--limit", type=config.positive_int, default=50, help="events to show (default 50; pages are fetched as needed)")
    a.add_argument("--marker", help="start after this marker (printed when there are older events)")
    a.add_argument("--json", action="store_true", help="print {events, count, marker} as JSON")
    a.set_defaults(func=audit.audit)

    p = sub.add_parser(
        "playback", parents=[common], help="play a recorded SSH session on this terminal",
        description="Fetch a session recording (asciicast v2, docs/audit.md) and write its output to the terminal "
                    "with its original timing, or faster. --out saves the .cast file instead (asciinema can play it).")
    p.add_argument("session_id", metavar="SESSION_ID", help="the session_id of a session_recorded event")
    p.add_argument("--speed", type=config.positive_float, default=1.0, help="play this many times faster (default 1)")
    p.add_argument("--max-idle", type=float, default=None, metavar="SECONDS",
                   help="shorten pauses longer than this (before --speed); default: keep them")
    p.add_argument("--out", metavar="FILE", help="save the .cast file to FILE ('-': standard output) instead of playing")
    p.add_argument("-q", "--quiet", action="store_true", help="no lines about the recording on stderr")
    p.add_argument("--raw-terminal", action="store_true", help=RAW)
    p.set_defaults(func=audit.playback)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Self-hostable secure-tunnel relay for IoT fleets, compatible with the Huawei "
                    "IoTDA v5 tunnel API. Run `relay serve` to start it, `relay agent` on a device, "
                    "`relay tunnel`, `relay ssh`, `relay exec` and `relay forward` to use it (`relay localproxy` for tunnels of "
                    "the AWS IoT Secure Tunneling protocol); `relay COMMAND --help` for details.",
    )
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")   # `exec` has a positional named command
    _add_serve(sub)
    _add_agent(sub)
    _add_demo(sub)
    _add_device(sub)
    common = _connection_options()
    _add_tunnel(sub, common)
    _add_remote(sub, common)
    _add_forward(sub, common)
    _add_audit(sub, common)
    _add_localproxy(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    loop = _on_uvloop() if args.subcommand in LONG_RUNNING else contextlib.nullcontext()
    try:
        with loop:
            return args.func(args)
    except ConfigError as exc:
        from relay.client.output import say   # a setting may quote what the relay answered
        say(f"relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
