"""The `relay` command. The only module that installs uvloop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from relay import config, logs
from relay.config import Settings
from relay.errors import ConfigError
from relay.tokens import new_token

DEV_PROJECT = "default"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0-65535")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
    return value


def _add_serve(sub: argparse._SubParsersAction) -> None:
    d = Settings()
    p = sub.add_parser(
        "serve",
        help="run the relay (REST API and WebSocket endpoints)",
        description="Run the relay. Every option can also be set as an environment variable "
                    "RELAY_<OPTION> (for example RELAY_PUBLIC_URL); the command line wins.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e = config.env
    p.add_argument("--host", default=e("host", d.host), help="address to listen on")
    p.add_argument("--port", type=_port, default=int(e("port", str(d.port))), help="TCP port to listen on (0: any free port)")
    p.add_argument("--public-url", default=e("public_url", d.public_url),
                   help="the URL clients use to reach the relay, e.g. https://relay.example.com; "
                        "tunnel_uri is built from it (wss:// for https). Default: http://HOST:PORT")
    p.add_argument("--db", default=e("db", d.db), help="SQLite database file; created if missing")
    p.add_argument("--api-tokens-file", default=e("api_tokens_file"),
                   help="file of API tokens, one PROJECT:NAME:TOKEN per line. RELAY_API_TOKENS may hold "
                        "the same entries separated by commas. With neither, a token for project "
                        f"'{DEV_PROJECT}' is generated next to the database")
    p.add_argument("--instance-id", default=e("instance_id"),
                   help="when set, REST calls must send this value in the Instance-Id header")
    p.add_argument("--default-lifetime", type=_positive_int, default=int(e("default_lifetime", str(d.default_lifetime))),
                   help="seconds a tunnel lives when the create request does not ask for less (also the maximum)")
    p.add_argument("--min-lifetime", type=_positive_int, default=int(e("min_lifetime", str(d.min_lifetime))),
                   help="the shortest lifetime a create request may ask for, in seconds")
    p.add_argument("--closed-retention", type=_positive_int, default=int(e("closed_retention", str(d.closed_retention))),
                   help="seconds a closed tunnel is kept before it is deleted")
    p.add_argument("--max-tunnels-per-project", type=_positive_int,
                   default=int(e("max_tunnels_per_project", str(d.max_tunnels_per_project))),
                   help="tunnels (open or closed, not deleted) a project may hold")
    p.add_argument("--max-message-size", type=_positive_int, default=int(e("max_message_size", str(d.max_message_size))),
                   help="largest WebSocket message relayed, in bytes")
    p.add_argument("--sweep-interval", type=_positive_float, default=float(e("sweep_interval", str(d.sweep_interval))),
                   help="seconds between expiry and retention sweeps")
    p.add_argument("--heartbeat-interval", type=_positive_float,
                   default=float(e("heartbeat_interval", str(d.heartbeat_interval))),
                   help="seconds between WebSocket pings; a peer silent for two intervals is dropped")
    p.add_argument("--hide-device-token", action="store_true",
                   default=e("hide_device_token", "") in ("1", "true", "yes"),
                   help="do not return the device token from create and rotate (devices then get it only over MQTT)")
    p.add_argument("--tls-cert", default=e("tls_cert"),
                   help="PEM certificate (chain) file: serve https:// and wss:// directly, for deployments "
                        "without a TLS-terminating proxy (Huawei's device SDK only speaks wss://)")
    p.add_argument("--tls-key", default=e("tls_key"), help="PEM private key file of --tls-cert")
    p.add_argument("--log-level", default=e("log_level", d.log_level), choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default=e("log_format", "text"), choices=["text", "json"])
    p.set_defaults(func=_serve)


def _dev_token_file(db: str) -> Path:
    """Create (once) a token file for the development project next to the database."""
    folder = Path(db).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "api-tokens.txt"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"# generated by `relay serve`; one PROJECT:NAME:TOKEN per line\n{DEV_PROJECT}:dev:{new_token()}\n")
    return path


def settings_from_args(args: argparse.Namespace) -> tuple[Settings, str | None]:
    tokens_file = args.api_tokens_file
    inline = config.env("api_tokens")
    generated = None
    if not tokens_file and not inline:
        tokens_file = generated = str(_dev_token_file(args.db))
    settings = Settings(
        host=args.host, port=args.port, public_url=args.public_url, db=args.db,
        api_keys=config.load_api_keys(tokens_file, inline), instance_id=args.instance_id or None,
        default_lifetime=args.default_lifetime, min_lifetime=min(args.min_lifetime, args.default_lifetime),
        closed_retention=args.closed_retention, max_tunnels_per_project=args.max_tunnels_per_project,
        max_message_size=args.max_message_size, sweep_interval=args.sweep_interval,
        heartbeat_interval=args.heartbeat_interval, expose_device_token=not args.hide_device_token,
        log_level=args.log_level, tls_cert=args.tls_cert or None, tls_key=args.tls_key or None,
    )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    return settings, generated


def _serve(args: argparse.Namespace) -> int:
    from relay.web.server import run  # the web layer is loaded only for commands that serve

    settings, generated = settings_from_args(args)
    logs.setup(settings.log_level, args.log_format)
    _install_uvloop()
    return asyncio.run(run(settings, generated_token_file=generated))


def _install_uvloop() -> None:
    if os.environ.get("RELAY_NO_UVLOOP"):
        return
    try:
        import uvloop
    except ImportError:  # optional: the relay works on the standard loop, only slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Self-hostable secure-tunnel relay for IoT fleets, compatible with the Huawei "
                    "IoTDA v5 tunnel API. Run `relay serve` to start it; `relay COMMAND --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
