"""Settings of the relay: defaults, command-line options and `RELAY_*` environment variables.

Bottom layer: standard library only. Every option `--some-name` can also be given as the
environment variable `RELAY_SOME_NAME`; the command line wins.

Each setting is declared once: its type and default as a field of `Settings`, and its flag,
reader (which also checks it), environment variable and help as an `Option` of `SERVE_OPTIONS`.
`relay serve`'s parser, the reading of the environment and the table of docs/operations.md
are made from them (`add_options`, `settings_values`, `options_table`); the agent's settings
are declared the same way (relay/agent/settings.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, overload
from urllib.parse import urlsplit

from relay.errors import ConfigError

PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")   # the REST API's, the agent's and the broker's


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    """An API token: which project it acts for, and a name for the audit trail."""

    project_id: str
    name: str
    token: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""                 # how clients reach the relay; derived from host/port when empty
    db: str = "var/relay.db"
    api_keys: tuple[ApiKey, ...] = ()
    instance_id: str | None = None
    default_lifetime: int = 86400         # seconds a tunnel lives unless asked for less
    min_lifetime: int = 60
    closed_retention: int = 30 * 86400    # closed tunnels are deleted this long after closing
    max_tunnels_per_project: int = 1000
    max_body_bytes: int = 64 * 1024
    max_message_size: int = 10240
    max_connections_per_address: int = 0  # tunnel WebSockets one client address may hold; 0: no limit
    socket_buffer: int = 0                # kernel send/receive buffer of each tunnel socket, bytes; 0: the kernel's autotuning
    sweep_interval: float = 1.0           # how often expiry and retention are enforced
    heartbeat_interval: float = 20.0      # WebSocket ping period; a peer silent for two is dropped
    handshake_timeout: float = 10.0       # seconds a new connection may take to send its first request head
    # Bounds on what one client can hold (docs/operations.md, docs/security.md): slow or idle
    # HTTP connections are closed, and one address holds a bounded number of them.
    keepalive_timeout: float = 15.0       # an idle keep-alive connection is closed, and the next request head must be whole, within this
    body_timeout: float = 10.0            # seconds a request body may take to arrive
    max_http_connections_per_address: int = 256   # connections not (yet) tunnels one client address may hold; 0: no limit
    expose_device_token: bool = True      # also return the device token from create (AWS does)
    log_level: str = "INFO"
    tls_cert: str | None = None           # serve https/wss itself (PEM certificate chain)
    tls_key: str | None = None
    # Several replicas (docs/scaling.md): a shared Redis store and an internal port for
    # health checks and replica-to-replica forwarding.
    store_url: str = ""                   # redis://...; empty: the SQLite file of `db`
    sqlite_cache_kib: int = 2048          # the SQLite store's page cache (its memory), KiB
    replica_id: str = ""                  # empty: host name and process id
    internal_port: int | None = None      # None: no internal listener (a single relay)
    internal_host: str = "127.0.0.1"
    internal_address: str = ""            # host:port other replicas use; default internal_host:internal_port
    drain_seconds: float = 10.0           # on SIGTERM, closes are spread over this long
    reconcile_interval: float = 2.0       # leases renewed, ended tunnels and lost hints caught up
    lease_ttl: float = 15.0
    bridge_secret: str = dataclasses.field(default="", repr=False)   # shared by the replicas, never stored in Redis
    # The device side (docs/device.md): the MQTT broker that carries tunnel notifies and presence.
    mqtt_url: str = ""                    # mqtt://HOST[:1883] or mqtts://HOST[:8883]; empty: no broker
    mqtt_username: str | None = None
    mqtt_password: str | None = dataclasses.field(default=None, repr=False)
    mqtt_client_id: str = ""              # empty: "iot-tunnel-relay-" and a random suffix (unique per replica)
    mqtt_ca_file: str | None = None       # CA bundle for mqtts://; the system's when not given
    mqtt_reconnect_delay: float = 2.0     # seconds between attempts while the broker is unreachable
    presence_check: str = "known"         # strict | known | off; off whenever there is no broker
    managed_broker: bool = False          # the relay runs mosquitto itself on mqtt_url's host and port
    # The audit trail and session recordings (docs/audit.md).
    audit_retention: int = 30 * 86400     # seconds audit events and recordings are kept
    recording_cap: int = 1024 * 1024      # bytes of one session recording; the rest is cut (marked truncated)
    record_projects: tuple[str, ...] = () # projects whose ssh sessions are always recorded
    audit_queue_size: int = 10000         # events waiting to be written; beyond it they are counted as dropped
    audit_rate: float = 100.0             # audit events a second one project may add, sustained ...
    audit_burst: int = 2000               # ... and at once; beyond, counted and summed up in one event
    aws_region: str = "self-hosted"       # `region` in the notifies of AWS-protocol tunnels (docs/aws.md)
    # Pages of these origins may open tunnel WebSockets (docs/security.md, cross-site
    # WebSocket hijacking); empty: the origin of the public URL. Same-origin pages always may.
    allowed_origins: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def websocket_base(self) -> str:
        """`wss://` when the public URL is https, `ws://` otherwise."""
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}"

    @property
    def trusted_origins(self) -> frozenset[str]:
        """The origins whose pages may open tunnel WebSockets, normalized (origin_key)."""
        return frozenset(self.allowed_origins or (origin_key(self.base_url),))

    def tunnel_uri(self, tunnel_id: str, side: str) -> str:
        return f"{self.websocket_base}/v5/iot/tunnels/{tunnel_id}/{side}-connect"

    def aws_tunnel_uri(self, mode: str) -> str:
        """The AWS-protocol endpoint (docs/aws.md); `mode` is `source` or `destination`."""
        return f"{self.websocket_base}/tunnel?local-proxy-mode={mode}"


PRESENCE_MODES = ("strict", "known", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_key(url: str) -> str:
    """`scheme://host[:port]` of a URL or Origin value, lower-case and without the scheme's
    default port, so that equal origins compare equal; "" when it is not an http(s) origin."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port_part = f":{port}" if port is not None and port != _DEFAULT_PORTS[parts.scheme.lower()] else ""
    return f"{parts.scheme.lower()}://{host.lower()}{port_part}"


def parse_origins(text: str) -> tuple[str, ...]:
    """--allowed-origins: `scheme://host[:port]` entries, comma-separated; ConfigError otherwise."""
    origins = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        key = origin_key(entry)
        if not key or urlsplit(entry).path.strip("/") or urlsplit(entry).query:
            raise ConfigError(f"--allowed-origins: {entry[:100]!r} is not an origin like https://console.example.com")
        origins.append(key)
    return tuple(dict.fromkeys(origins))


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an `mqtt://` or `mqtts://` URL; raises ConfigError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"the MQTT URL {url!r} must look like mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    if parts.username or parts.password:
        raise ConfigError("give the MQTT user and password as their own settings, not inside the URL")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(f"the MQTT URL {url!r} has a bad port") from None
    return parts.hostname, port, tls


def parse_api_keys(text: str, origin: str) -> list[ApiKey]:
    """Parse `PROJECT:NAME:TOKEN` entries, separated by commas or new lines; `#` starts a comment."""
    keys = []
    for number, raw in enumerate(re.split(r"[\n,]", text), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ConfigError(
                f"{origin}, entry {number}: expected PROJECT:NAME:TOKEN, got {len(parts)} part(s)"
            )
        project, name, token = parts
        if not PROJECT_ID_RE.match(project):
            raise ConfigError(f"{origin}, entry {number}: project id {project!r} must be 1-64 of A-Z a-z 0-9 _ -")
        if len(token) < 16:
            raise ConfigError(f"{origin}, entry {number}: the token of {name!r} is shorter than 16 characters")
        keys.append(ApiKey(project, name, token))
    return keys


def load_api_keys(path: str | None, inline: str | None) -> tuple[ApiKey, ...]:
    keys: list[ApiKey] = []
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                keys += parse_api_keys(fh.read(), f"API token file {path}")
        except OSError as exc:
            raise ConfigError(f"cannot read the API token file {path}: {exc.strerror}") from exc
    if inline:
        keys += parse_api_keys(inline, "RELAY_API_TOKENS")
    seen: set[str] = set()
    for key in keys:
        if key.token in seen:
            raise ConfigError(f"the token of {key.name!r} is given twice")
        seen.add(key.token)
    return tuple(keys)


@overload
def env(name: str, default: str) -> str: ...


@overload
def env(name: str, default: None = None) -> str | None: ...


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"RELAY_{name.upper().replace('-', '_')}", default)


# -- readers of option values: each reads and checks one kind of text (argparse's `type`) -----


def _above_zero(text: str, parse: Callable[[str], float], what: str) -> Any:
    """`text` read by `parse` (int or float): a finite number above zero, or a message saying why not."""
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
    return value


def positive_int(text: str) -> int:
    return int(_above_zero(text, int, "a whole number"))


MAX_MESSAGE_SIZE_CAP = 16 * 1024 * 1024   # far above any protocol's limit (Huawei: 10 KB)


def message_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_MESSAGE_SIZE_CAP:
        raise argparse.ArgumentTypeError(
            f"{text!r} is above the most a message may be, {MAX_MESSAGE_SIZE_CAP} bytes (16 MiB)")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0-65535")
    return value


def port_list(text: str) -> tuple[int, ...]:
    """`22,8080` (or `none`/empty: no ports)."""
    if text.strip().lower() in ("", "none"):
        return ()
    ports = []
    for part in text.split(","):
        port = port_number(part.strip())
        if port == 0:
            raise argparse.ArgumentTypeError("port 0 cannot be forwarded")
        ports.append(port)
    return tuple(dict.fromkeys(ports))


def positive_float(text: str) -> float:
    return float(_above_zero(text, float, "a number"))


def parse_projects(text: str | None) -> tuple[str, ...]:
    """--record-projects: project ids, comma-separated."""
    projects = [part.strip() for part in (text or "").split(",") if part.strip()]
    for project in projects:
        if not PROJECT_ID_RE.match(project):
            raise ConfigError(f"--record-projects: {project[:64]!r} is not a project id (1-64 of A-Z a-z 0-9 _ -)")
    return tuple(dict.fromkeys(projects))


def or_none(value: str | None) -> str | None:
    """An empty text means not set."""
    return value or None


# -- one declaration per setting ---------------------------------------------------------------

FIELD: Any = object()   # an Option's default: the default of its settings field
SWITCH_ON = ("1", "true", "yes")   # what an environment variable says to turn a switch on


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """One command-line option and the environment variable that may give it instead.

    `parse` reads and checks the text (from the command line or the environment alike);
    `field` names the settings field it fills ("": the option's own name, None: none; the
    command then uses the value itself), `to_setting` turns the value into the field's
    (it may raise ConfigError). A `secret` is read from its variable only when the settings
    are made, so that --help never shows it."""

    flag: str
    help: str | None = None
    parse: Callable[[str], Any] | None = None
    default: Any = FIELD
    field: str | None = ""
    to_setting: Callable[[Any], Any] | None = None
    choices: Sequence[str] | None = None
    switch: bool = False          # a flag without a value
    required: bool = False        # unless its variable gives it
    secret: bool = False

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def target(self) -> str | None:
        return self.dest if self.field == "" else self.field

    def variable(self, prefix: str) -> str:
        """`RELAY_` (or `RELAY_AGENT_`) and the option's name."""
        return f"{prefix}{self.dest.upper()}"

    def default_value(self, defaults: object) -> Any:
        if self.default is not FIELD:
            return self.default
        if self.switch:
            return False
        assert self.target is not None, f"{self.flag} has neither a default nor a field"
        return getattr(defaults, self.target)


class _FromEnvironment(str):
    """An option's text that came from its environment variable, so that an error names it."""

    variable: str


def _reader(option: Option) -> Callable[[str], Any] | None:
    parse = option.parse
    if parse is None:
        return None

    def read(text: str) -> Any:
        try:
            return parse(text)
        except argparse.ArgumentTypeError as exc:
            if isinstance(text, _FromEnvironment):
                raise argparse.ArgumentTypeError(f"{exc} (from {text.variable})") from None
            raise

    read.__name__ = getattr(parse, "__name__", "value")   # argparse names it in some errors
    return read


def _environment_default(option: Option, defaults: object, prefix: str) -> Any:
    default = option.default_value(defaults)
    if option.secret:
        return None
    text = os.environ.get(option.variable(prefix))
    if option.switch:
        return text in SWITCH_ON if text is not None else default
    if text is None or (text == "" and option.parse is not None):   # an empty number is no number
        return default
    value = _FromEnvironment(text)
    value.variable = option.variable(prefix)
    return value


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, options: Iterable[Option],
                defaults: object, prefix: str) -> None:
    """The command-line options, each defaulting to its environment variable, then its field."""
    for option in options:
        default = _environment_default(option, defaults, prefix)
        kwargs: dict[str, Any] = {"default": default, "help": option.help}
        if option.switch:
            kwargs["action"] = "store_true"
        else:
            if option.parse is not None:
                kwargs["type"] = _reader(option)
            if option.choices is not None:
                kwargs["choices"] = list(option.choices)
        if option.required:
            kwargs["required"] = not default
        parser.add_argument(option.flag, **kwargs)


def settings_values(args: argparse.Namespace, options: Iterable[Option], prefix: str) -> dict[str, Any]:
    """The settings fields the options fill, from parsed arguments (secrets: or their variable)."""
    values: dict[str, Any] = {}
    for option in options:
        if option.target is None:
            continue
        value = getattr(args, option.dest)
        if option.secret and not value:
            value = os.environ.get(option.variable(prefix))
        values[option.target] = option.to_setting(value) if option.to_setting else value
    return values


def options_table(options: Iterable[Option], defaults: object, prefix: str) -> str:
    """A Markdown table of the options: flag, environment variable, default, help."""
    rows = ["| option | environment variable | default | what |", "| --- | --- | --- | --- |"]
    for option in options:
        default = option.default_value(defaults)
        shown = "" if default in (None, "", False) or option.secret else f"`{default}`"
        text = option.help or ""
        if option.choices:
            text = f"{text} (" if text else ""
            text += "one of " + ", ".join(f"`{choice}`" for choice in option.choices) + (")" if option.help else "")
        if option.switch:
            text += " (the variable: " + ", ".join(f"`{word}`" for word in SWITCH_ON) + " turn it on)"
        text = text.replace("|", "\\|")
        rows.append(f"| `{option.flag}` | `{option.variable(prefix)}` | {shown} | {text} |")
    return "\n".join(rows) + "\n"


# -- `relay serve` ----------------------------------------------------------------------------

DEV_PROJECT = "default"          # the project of the token `relay serve` generates when given none
MANAGED_BROKER_PORT = 1883       # where `--mqtt-url auto` runs mosquitto


def _at_least_zero(value: int) -> int:
    return max(0, value)


def _not_negative(value: float) -> float:
    return max(0.0, value)


def _expose(hide: bool) -> bool:
    return not hide


def _origins(text: str | None) -> tuple[str, ...]:
    return parse_origins(text or "")


# In the order of `relay serve --help`. With no field: the command combines the value itself
# (the API tokens, the bridge secret, the broker to run, the log format).
# Where the relay is and who we are, for the client commands (`relay tunnel`, `ssh`, `exec`,
# `forward`): options with their variables and no settings object (field=None). The API
# token's options are not here: the token is a secret, read when a command runs.
CONNECTION_OPTIONS: tuple[Option, ...] = (
    Option("--url", "the relay's base URL, http(s)://HOST[:PORT] (RELAY_URL; default http://127.0.0.1:8080)",
           default="http://127.0.0.1:8080", field=None),
    Option("--project", "the project id of the API paths (RELAY_PROJECT; default 'default')",
           default="default", field=None),
    Option("--instance-id", "sent as the Instance-Id header, for relays run with --instance-id (RELAY_INSTANCE_ID)",
           default=None, field=None),
    Option("--ca-file", "CA bundle to verify an https:// relay (RELAY_CA_FILE)", default=None, field=None),
)


SERVE_OPTIONS: tuple[Option, ...] = (
    Option("--host", "address to listen on"),
    Option("--port", "TCP port to listen on (0: any free port)", port_number),
    Option("--public-url",
           "the URL clients use to reach the relay, e.g. https://relay.example.com; "
           "tunnel_uri is built from it (wss:// for https). Default: http://HOST:PORT"),
    Option("--allowed-origins",
           "web origins (scheme://host[:port], comma-separated) whose pages may open tunnel "
           "WebSockets: a handshake that carries an Origin header (browsers send one) from any "
           "other origin is refused with 403, so a foreign page cannot ride the relay's cookie "
           "(docs/security.md). Pages served by the relay itself are always allowed; clients "
           "that send no Origin are not affected. Default: the origin of --public-url",
           default="", to_setting=_origins),
    Option("--db", "SQLite database file; created if missing"),
    Option("--api-tokens-file",
           "file of API tokens, one PROJECT:NAME:TOKEN per line. RELAY_API_TOKENS may hold "
           "the same entries separated by commas. With neither, a token for project "
           f"'{DEV_PROJECT}' is generated next to the database", default=None, field=None),
    Option("--instance-id", "when set, REST calls must send this value in the Instance-Id header",
           to_setting=or_none),
    Option("--default-lifetime",
           "seconds a tunnel lives when the create request does not ask for less (also the maximum)", positive_int),
    Option("--min-lifetime", "the shortest lifetime a create request may ask for, in seconds", positive_int),
    Option("--closed-retention", "seconds a closed tunnel is kept before it is deleted", positive_int),
    Option("--max-tunnels-per-project", "tunnels (open or closed, not deleted) a project may hold", positive_int),
    Option("--max-message-size", "largest WebSocket message relayed, in bytes (at most 16 MiB)", message_size),
    Option("--max-connections-per-address",
           "tunnel WebSocket connections one client IP address may hold at once (0: no limit; "
           "behind a load balancer every client shares its address, so leave it off there)",
           int, to_setting=_at_least_zero),
    Option("--socket-buffer",
           "kernel send and receive buffer of each tunnel connection, in bytes (0: let the kernel "
           "size them, up to several MB each under load; set e.g. 262144 to bound the kernel memory "
           "a slow reader can hold)", int, to_setting=_at_least_zero),
    Option("--sqlite-cache-kib", "memory of the SQLite store's page cache, in KiB", positive_int),
    Option("--aws-region", "the region named in AWS-format tunnel notifies (docs/aws.md)"),
    Option("--sweep-interval", "seconds between expiry and retention sweeps", positive_float),
    Option("--heartbeat-interval", "seconds between WebSocket pings; a peer silent for two intervals is dropped",
           positive_float),
    Option("--handshake-timeout",
           "seconds a new connection may take to send its request (slow clients are cut off)", positive_float),
    Option("--keepalive-timeout",
           "seconds an idle keep-alive connection is kept; the next request head must be whole by then",
           positive_float),
    Option("--body-timeout", "seconds a request body may take to arrive (then 408 and the connection is closed)",
           positive_float),
    Option("--max-http-connections-per-address",
           "connections one client IP address may hold on each port before they become tunnels "
           "(0: no limit; behind a load balancer or reverse proxy every client shares its address: "
           "raise it there, and bound clients in the proxy)", int, to_setting=_at_least_zero),
    Option("--hide-device-token",
           "do not return the device token from create and rotate (devices then get it only over MQTT)",
           switch=True, field="expose_device_token", to_setting=_expose),
    Option("--store-url",
           "redis://HOST:PORT/DB to share tunnels between replicas (docs/scaling.md); "
           "default: the SQLite file of --db"),
    Option("--replica-id", "this replica's name (default: host name and pid)"),
    Option("--internal-port",
           "port for /livez, /readyz and replica-to-replica forwarding; needed with --store-url redis://",
           port_number),
    Option("--internal-host", "address of the internal port"),
    Option("--internal-address",
           "HOST:PORT at which the other replicas reach this one's internal port "
           "(default: INTERNAL_HOST:INTERNAL_PORT; in Kubernetes the pod IP)"),
    Option("--bridge-secret-file",
           "file holding the secret (32 characters or more) that replicas share to authenticate "
           "the bridges between them; the same on every replica, needed with --store-url redis:// "
           "and --internal-port. RELAY_BRIDGE_SECRET may hold it instead. It is never stored in "
           "Redis (docs/scaling.md)", default=None, field=None),
    Option("--drain-seconds", "on SIGTERM, spread the closing of open connections over this many seconds",
           float, to_setting=_not_negative),
    Option("--reconcile-interval", "seconds between checks of leases and tunnel states when running as replicas",
           positive_float),
    Option("--tls-cert",
           "PEM certificate (chain) file: serve https:// and wss:// directly, for deployments "
           "without a TLS-terminating proxy (Huawei's device SDK only speaks wss://)", to_setting=or_none),
    Option("--tls-key", "PEM private key file of --tls-cert", to_setting=or_none),
    Option("--mqtt-url",
           "the MQTT broker that carries tunnel notifies to devices and their presence "
           "(docs/device.md): mqtt://HOST[:PORT] or mqtts://HOST[:PORT]. 'auto': run mosquitto "
           f"on 127.0.0.1:{MANAGED_BROKER_PORT} as a child of the relay when it is installed, "
           "no broker otherwise; it admits no anonymous client: the relay has its own account "
           "(password generated next to the database), devices get theirs from `relay device "
           "add`, each limited to its own topics; the relay refuses to start if something else "
           "listens on that port. 'none': no broker (no notifies, no presence check)",
           default="auto", field=None),
    Option("--mqtt-username", "user name for the broker", to_setting=or_none),
    Option("--mqtt-password",
           "password for the broker (prefer RELAY_MQTT_PASSWORD: a command line is visible to others)",
           secret=True, to_setting=or_none),
    Option("--mqtt-client-id", "MQTT client id of the relay; default: iot-tunnel-relay-<random>, unique per replica"),
    Option("--mqtt-ca-file", "CA bundle to verify an mqtts:// broker", to_setting=or_none),
    Option("--presence-check",
           "refuse tunnels to offline devices (409 TUNNEL.409003), as devices announce it over MQTT: "
           "strict = only devices that announced 'online'; known = all but those that announced "
           "'offline' (devices that never announce, like Huawei's C SDK, still work); off = never. "
           "Off whenever there is no broker", choices=PRESENCE_MODES),
    # the audit trail and session recordings (docs/audit.md)
    Option("--audit-retention", "seconds audit events and session recordings are kept", positive_int),
    Option("--record-projects", "projects whose SSH sessions are always recorded (asciicast), comma-separated",
           default="", to_setting=parse_projects),
    Option("--recording-cap",
           "largest session recording, in bytes; what follows is cut and the recording marked truncated",
           positive_int),
    Option("--audit-queue-size",
           "audit events held in memory while the store is slow or away; beyond it they are "
           "dropped and counted (relay_audit_events_dropped_total)", positive_int),
    Option("--audit-rate",
           "audit events a second one project may add, sustained (with --audit-burst at once); "
           "beyond, they are counted (relay_audit_events_limited_total) and summed up in one "
           "audit_events_limited event", positive_float),
    Option("--audit-burst", "audit events one project may add at once", positive_int),
    Option("--log-level", choices=LOG_LEVELS),
    Option("--log-format", choices=LOG_FORMATS, default="text", field=None),
)
