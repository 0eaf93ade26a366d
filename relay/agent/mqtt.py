"""The agent's MQTT link (gmqtt): it announces the device's presence and hears its notifies.

On every connection: a last will that publishes a retained `offline` on the presence topic
if the connection is lost, a subscription to the down topic (QoS 1), then a retained
`online`. On a clean stop it publishes `offline` itself (a clean disconnect fires no will).
Like the platform's notifier, it reconnects with a fresh client each time.

The session is persistent (clean session off, the same client id every time): the broker
keeps the subscription and queues the QoS 1 notifies published while the agent is away (a
network outage, a restart), and hands them over when it is back. A notify published before
the agent's first session existed is sent again by the relay when the agent says `online`
(relay/notifier.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import gmqtt
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError

from relay.agent.settings import AgentSettings
from relay.config import parse_mqtt_url
from relay.notify import (OFFLINE, ONLINE, AwsNotify, TunnelNotify, aws_notify_topic, down_topic, mqtt_tls_context,
                          parse_aws_notify, parse_notifies, presence_topic, quiet_gmqtt_logger)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
KEEPALIVE = 30


class _Client(gmqtt.Client):
    """Reports a lost connection instead of reconnecting by itself."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lost = asyncio.Event()

    async def reconnect(self, delay=False):
        self.lost.set()


class DeviceLink:
    def __init__(self, settings: AgentSettings, on_notify: Callable[[TunnelNotify], None],
                 on_aws_notify: Callable[[AwsNotify], None] | None = None) -> None:
        self.settings = settings
        self.on_notify = on_notify
        self.on_aws_notify = on_aws_notify
        self.host, self.port, _ = parse_mqtt_url(settings.mqtt_url)
        self.down = down_topic(settings.device_id)
        self.aws_down = aws_notify_topic(settings.device_id)   # AWS IoT Secure Tunneling's notify
        self.presence = presence_topic(settings.device_id)
        self.connected = asyncio.Event()
        self._client: _Client | None = None
        self.stopping = False
        self._gmqtt_log = quiet_gmqtt_logger("relay.agent.gmqtt")

    async def run(self) -> None:
        delay = self.settings.mqtt_reconnect_delay
        said = False
        while not self.stopping:
            client = self._new_client()
            try:
                await asyncio.wait_for(client.connect(
                    self.host, self.port, ssl=mqtt_tls_context(self.settings.mqtt_url, self.settings.mqtt_ca_file),
                    keepalive=KEEPALIVE, version=MQTTv311), CONNECT_TIMEOUT)
            except (TimeoutError, OSError, MQTTConnectError) as exc:
                if not said:
                    log.warning("MQTT broker %s unreachable (%s); retrying every %s s",
                                self.settings.mqtt_url, exc or type(exc).__name__, delay)
                    said = True
                await _discard(client)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                await _discard(client)
                raise
            said = False
            self._client = client
            client.subscribe(self.down, qos=1)
            if self.on_aws_notify is not None:
                client.subscribe(self.aws_down, qos=1)
            client.publish(self.presence, ONLINE, qos=1, retain=True)
            self.connected.set()
            log.info("connected to MQTT broker %s as device %s; online", self.settings.mqtt_url, self.settings.device_id)
            try:
                await client.lost.wait()
            finally:
                self.connected.clear()
                self._client = None
            if self.stopping:
                break
            log.warning("lost the MQTT broker; reconnecting")
            await _discard(client)
            await asyncio.sleep(min(delay, 1.0))

    async def close(self) -> None:
        """Say `offline` and disconnect (call before cancelling `run`)."""
        client = self._client
        if client is not None and not client.lost.is_set():
            client.publish(self.presence, OFFLINE, qos=1, retain=True)
            await _discard(client)

    def _new_client(self) -> _Client:
        will = gmqtt.Message(self.presence, OFFLINE, qos=1, retain=True)
        client = _Client(self.settings.client_id, clean_session=False, will_message=will, logger=self._gmqtt_log)
        if self.settings.mqtt_username:
            client.set_auth_credentials(self.settings.mqtt_username, self.settings.mqtt_password)
        client.on_message = self._on_message
        return client

    def _on_message(self, client, topic, payload, qos, properties):
        if topic == self.aws_down and self.on_aws_notify is not None:
            try:
                aws_notify = parse_aws_notify(payload)
            except ValueError as exc:   # never log the payload: it holds a token
                log.warning("ignored a message on %s: %s", topic, exc)
                return 0
            try:
                self.on_aws_notify(aws_notify)
            except Exception:
                log.exception("could not act on an AWS tunnel notify")
            return 0
        if topic != self.down:
            return 0
        try:
            notifies = parse_notifies(payload)
        except ValueError as exc:   # the payload may hold a token: say what is wrong, not what it is
            log.warning("ignored a message on %s: %s", topic, exc)
            return 0
        for notify in notifies:
            try:
                self.on_notify(notify)
            except Exception:
                log.exception("could not act on a tunnel notify")
        return 0


async def _discard(client: gmqtt.Client) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.disconnect(), 5)
