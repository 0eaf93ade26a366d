"""The MQTT contract between the relay and its devices: topics and payloads.

Sans-I/O and bottom layer (standard library and orjson): the platform's notifier builds
these messages, the device agent parses them, and tests check both against the seed
(Huawei IoTDA's "Platform Delivering Tunnel Information"). See docs/device.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from typing import Any

import orjson

from relay.clock import format_time
from relay.config import parse_mqtt_url

SERVICE_ID = "$tunnel_manager"
EVENT_TYPE = "tunnel_notify"

# Huawei's downstream event topic: the platform publishes the tunnel notify here (QoS 1).
DOWN_TOPIC = "$oc/devices/{device_id}/sys/events/down"
# Ours: the agent publishes a retained "online" here when it connects and sets a last will
# that publishes a retained "offline" when its connection is lost.
PRESENCE_TOPIC = "$oc/devices/{device_id}/sys/presence"
PRESENCE_FILTER = "$oc/devices/+/sys/presence"
ONLINE = b"online"
OFFLINE = b"offline"


# AWS IoT's tunnel notify topic: the destination token of an AWS-protocol tunnel (docs/aws.md).
AWS_NOTIFY_TOPIC = "$aws/things/{thing_name}/tunnels/notify"
AWS_DESTINATION = "destination"


def aws_notify_topic(device_id: str) -> str:
    """The device id is the AWS thing name."""
    return AWS_NOTIFY_TOPIC.format(thing_name=device_id)


def build_aws_notify(*, token: str, region: str, services: tuple[str, ...] | list[str]) -> bytes:
    """The payload AWS IoT publishes for a new tunnel, as its device clients expect it."""
    return orjson.dumps({"clientAccessToken": token, "clientMode": AWS_DESTINATION, "region": region,
                         "services": list(services)})


@dataclasses.dataclass(frozen=True, slots=True)
class AwsNotify:
    token: str = dataclasses.field(repr=False)   # a secret
    region: str
    services: tuple[str, ...]


def parse_aws_notify(payload: bytes) -> AwsNotify:
    """An AWS tunnel notify; ValueError when it is not one for the destination."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    token, mode, region, services = (body.get("clientAccessToken"), body.get("clientMode"), body.get("region"),
                                     body.get("services"))
    if not isinstance(token, str) or not token:
        raise ValueError("no clientAccessToken")
    if mode != AWS_DESTINATION:
        raise ValueError("clientMode is not destination")
    if not isinstance(region, str):
        raise ValueError("region is not a string")
    if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
        raise ValueError("services is not a list of strings")
    return AwsNotify(token, region, tuple(services))


def down_topic(device_id: str) -> str:
    return DOWN_TOPIC.format(device_id=device_id)


def presence_topic(device_id: str) -> str:
    return PRESENCE_TOPIC.format(device_id=device_id)


def device_of_presence_topic(topic: str) -> str | None:
    """The device id in a presence topic, None when the topic is not one."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[0] == "$oc" and parts[1] == "devices" and parts[3:] == ["sys", "presence"]:
        return parts[2] or None
    return None


def build_notify(*, tunnel_uri: str, token: str, expires_in: int, now: float,
                 custom_info: str | None = None) -> bytes:
    """The payload of the tunnel notify, exactly as in Huawei's documentation; `custom_info`
    (from the create request) rides along in `paras` when there is one."""
    paras: dict[str, Any] = {"tunnel_uri": tunnel_uri, "tunnel_access_token": token, "expires_in": expires_in}
    if custom_info is not None:
        paras["custom_info"] = custom_info
    return orjson.dumps({"services": [{
        "service_id": SERVICE_ID,
        "event_type": EVENT_TYPE,
        "event_time": format_time(now),
        "paras": paras,
    }]})


@dataclasses.dataclass(frozen=True, slots=True)
class TunnelNotify:
    tunnel_uri: str
    token: str = dataclasses.field(repr=False)   # a secret: keep it out of reprs and logs
    expires_in: int
    custom_info: str | None = None
    event_time: str | None = None

    @property
    def tunnel_id(self) -> str:
        """The tunnel id inside `.../tunnels/{id}/device-connect` (the URI itself otherwise)."""
        parts = self.tunnel_uri.rstrip("/").split("/")
        return parts[-2] if len(parts) >= 2 and parts[-1] == "device-connect" else self.tunnel_uri


def parse_notifies(payload: bytes) -> list[TunnelNotify]:
    """The tunnel notifies in a message of the down topic; other events are skipped. Raises
    ValueError when the payload is not a JSON object with a `services` list."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("services"), list):
        raise ValueError("not an event message: no `services` list")
    found = []
    for service in body["services"]:
        if not isinstance(service, dict):
            continue
        if service.get("service_id") != SERVICE_ID or service.get("event_type") != EVENT_TYPE:
            continue
        paras = service.get("paras")
        if not isinstance(paras, dict):
            raise ValueError("a tunnel_notify without `paras`")
        uri, token, expires_in = paras.get("tunnel_uri"), paras.get("tunnel_access_token"), paras.get("expires_in")
        if not isinstance(uri, str) or not uri.startswith(("ws://", "wss://")):
            raise ValueError("a tunnel_notify whose tunnel_uri is not a ws:// or wss:// address")
        if not isinstance(token, str) or not token:
            raise ValueError("a tunnel_notify without tunnel_access_token")
        if not isinstance(expires_in, int) or isinstance(expires_in, bool):
            raise ValueError("a tunnel_notify whose expires_in is not a whole number")
        custom = paras.get("custom_info")
        event_time = service.get("event_time")
        found.append(TunnelNotify(uri, token, expires_in, custom if isinstance(custom, str) else None,
                                  event_time if isinstance(event_time, str) else None))
    return found


# -- shared by the notifier and the agent (the two gmqtt users) ---------------------------


def mqtt_tls_context(url: str, ca_file: str | None) -> ssl.SSLContext | bool:
    """What gmqtt's `connect(ssl=...)` takes for a broker URL: False for mqtt://."""
    _, _, tls = parse_mqtt_url(url)
    if not tls:
        return False
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


def quiet_gmqtt_logger(name: str) -> logging.Logger:
    """A logger for gmqtt that shows only warnings and errors: at DEBUG gmqtt prints every
    packet, payloads included, and payloads carry device tokens; at INFO it chatters."""
    for logger_name in ("gmqtt", name):
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    return logging.getLogger(name)


async def cancel_and_wait(task: asyncio.Task) -> None:
    """Cancel a task and wait for its end. Cancels again while it runs: on Python 3.11 a
    `wait_for` whose inner work finishes as the cancel arrives swallows the cancel."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()
