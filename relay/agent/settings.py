"""Settings of the device agent (`relay agent`), declared once as in relay/config.py: each
field's type and default here, each option (flag, `RELAY_AGENT_*` variable, reader, help) in
`AGENT_OPTIONS`. Standard library and relay.config only."""

from __future__ import annotations

import dataclasses

from relay.config import LOG_FORMATS, LOG_LEVELS, Option, or_none, port_list, port_number, positive_float, positive_int

PREFIX = "RELAY_AGENT_"   # RELAY_AGENT_<OPTION> gives `relay agent --<option>`


@dataclasses.dataclass(frozen=True, slots=True)
class AgentSettings:
    device_id: str
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = dataclasses.field(default=None, repr=False)
    mqtt_client_id: str = ""                # empty: the device id (Huawei's devices use theirs)
    mqtt_ca_file: str | None = None
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 22
    ssh_known_hosts: str | None = None      # None: the host key is not checked (loopback by default)
    ssh_timeout: float = 15.0
    forward_ports: tuple[int, ...] = (22,)  # TCP forwarding (docs/forwarding.md): the ports a source may reach
    forward_host: str = ""                  # where they are; empty: ssh_host
    # a port the source names -> the port it reaches here (`relay demo-device`: 22 -> its own SSH server)
    forward_port_map: tuple[tuple[int, int], ...] = ()
    tls_ca_file: str | None = None          # to verify a wss:// relay; the system's CAs otherwise
    tls_insecure: bool = False              # do not verify the relay's certificate (Huawei's SDK does not)
    max_message_size: int = 10240
    heartbeat: float = 20.0                 # WebSocket ping period; the relay pings too
    reconnect_initial: float = 1.0          # backoff after a lost connection: 1, 2, 4, ... seconds
    reconnect_max: float = 30.0
    mqtt_reconnect_delay: float = 2.0
    # AWS IoT Secure Tunneling (docs/aws-clients.md): the relay's address for tunnels announced on
    # $aws/things/{device_id}/tunnels/notify (empty: AWS's endpoint of the notify's region), and
    # service id -> (host, port) of the streams ("" host: ssh_host); empty: SSH -> ssh_host:ssh_port
    aws_endpoint: str = ""
    aws_services: tuple[tuple[str, str, int], ...] = ()

    @property
    def client_id(self) -> str:
        return self.mqtt_client_id or self.device_id


# In the order of `relay agent --help`. With no field: the command combines the value itself.
AGENT_OPTIONS: tuple[Option, ...] = (
    Option("--device-id", "this device's id, as the tunnels name it (1-128 of A-Z a-z 0-9 _ -)",
           default=None, required=True),
    Option("--mqtt-url", "the broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
    Option("--mqtt-username",
           "user name for the broker; default with a password: the device id (the relay's managed "
           "broker names device accounts so: `relay device add`)"),
    Option("--mqtt-password",
           "password for the broker (prefer RELAY_AGENT_MQTT_PASSWORD or --mqtt-password-file: a "
           "command line is visible to others)", secret=True),
    Option("--mqtt-password-file",
           "a file whose first line is the broker password (as `relay device add --password-file` writes it)",
           default=None, field=None),
    Option("--mqtt-client-id",
           "MQTT client id, stable: the broker keeps this agent's session (and the notifies "
           "published while it is away) under it; default: the device id"),
    Option("--mqtt-ca-file", "CA bundle to verify an mqtts:// broker", to_setting=or_none),
    Option("--ssh-host", "the device's SSH server"),
    Option("--ssh-port", "its port", port_number),
    Option("--ssh-known-hosts",
           "known_hosts file to check the SSH server's host key against; by default it is not "
           "checked (the server is the device's own, on loopback)", to_setting=or_none),
    Option("--forward-ports",
           "TCP forwarding (docs/forwarding.md): the device ports a tunnel's source may connect "
           "to, comma-separated ('none': no forwarding)", port_list, default="22"),
    Option("--forward-host", "the host the forwarded ports are on (default: --ssh-host)"),
    Option("--aws-endpoint",
           "AWS IoT Secure Tunneling (docs/aws-clients.md): the relay that serves the tunnels "
           "announced on $aws/things/DEVICE/tunnels/notify, http(s):// or ws(s)://HOST[:PORT] "
           "(default: AWS's endpoint of the notify's region)"),
    Option("--aws-services",
           "where the streams of each AWS service id go: SERVICE=PORT or SERVICE=HOST:PORT, "
           "comma-separated (default: SSH to --ssh-host:--ssh-port)", default="", field=None),
    Option("--tls-ca-file", "CA bundle to verify a wss:// relay", to_setting=or_none),
    Option("--tls-insecure", "do not verify the relay's TLS certificate (Huawei's device SDK does not either)",
           switch=True),
    Option("--max-message-size", "largest message sent to the relay, in bytes of JSON (the relay's limit)",
           positive_int),
    Option("--heartbeat", "seconds between WebSocket pings to the relay", positive_float),
    Option("--log-level", choices=LOG_LEVELS, default="INFO", field=None),
    Option("--log-format", choices=LOG_FORMATS, default="text", field=None),
)
