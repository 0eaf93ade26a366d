"""Settings of the relay: defaults, command-line options and `RELAY_*` environment variables.

Bottom layer: standard library only. Every option `--some-name` can also be given as the
environment variable `RELAY_SOME_NAME`; the command line wins.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import overload
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
