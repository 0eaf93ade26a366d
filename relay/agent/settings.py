"""Settings of the device agent (`relay agent`). Standard library only."""

from __future__ import annotations

import dataclasses


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
