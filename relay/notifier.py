"""The platform's MQTT side: tunnel notifies to devices, and device presence. The only module
of the platform that imports gmqtt.

Delivery is at least once and survives restarts: the service puts every notify in the
store's outbox (with the tunnel, in one step); this notifier publishes each waiting outbox
entry with QoS 1 to `$oc/devices/{device_id}/sys/events/down` (AWS-protocol tunnels: AWS's
`$aws/things/{device_id}/tunnels/notify`, docs/aws.md) and marks it delivered when the
broker's PUBACK comes. While the broker is unreachable entries wait; after every
(re)connection everything still waiting is published again. A tunnel closed before delivery
has no entry any more, so it is never delivered. The device token in an entry is a secret: it
goes into the MQTT payload and nowhere else (logs carry tunnel and device ids only).

A PUBACK only says the broker took the notify: a device that was not subscribed at that
moment (its agent started a moment later, or its session was new) never hears of it. So the
notifier listens to `$oc/devices/+/sys/presence` (whatever `--presence-check` says) and, each
time a device says `online`, has the store queue again the notify of every open tunnel of
that device whose device end is not connected (`NotifyOutbox.renotify`). Acknowledgements are
recorded before that: a publish the device missed was acknowledged before its `online` came
(the broker answers a connection in order), so it is queued again.

Presence also feeds `relay.presence.Presence`, which the service asks before creating a
tunnel (when `--presence-check` is strict or known).

Reconnection is ours, not gmqtt's: every connection gets a fresh client, so its state
(packet ids, in-flight packets, subscriptions) never outlives the connection it belongs to,
and stopping leaves no gmqtt task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import Callable
from typing import Protocol

import gmqtt
from gmqtt.mqtt.constants import MQTTv311
from gmqtt.mqtt.handler import MQTTConnectError
from gmqtt.storage import PersistentStorage

from relay.clock import Clock
from relay.config import Settings, parse_mqtt_url
from relay.model import CloseReason, PendingNotify, Side, Status, Tunnel, TunnelProtocol
from relay.notify import (ONLINE, PRESENCE_FILTER, aws_notify_topic, build_aws_notify, build_notify, cancel_and_wait,
                          device_of_presence_topic, down_topic, mqtt_tls_context, quiet_gmqtt_logger)
from relay.presence import Presence, State
from relay.store.base import NotifyOutbox, Tunnels

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 64           # notifies published and not yet acknowledged, per connection
CONNECT_TIMEOUT = 10.0       # seconds for TCP + TLS + CONNACK
KEEPALIVE = 30               # MQTT keepalive, seconds
PRESENCE_SETTLE = 2.0        # seconds after subscribing in which the retained presence arrives


class _TrackedStorage(PersistentStorage):
    """gmqtt's in-flight store, which also tells which packet id a publish got and when the
    broker acknowledged it (gmqtt's `publish` does not return the id)."""

    def __init__(self, on_ack) -> None:
        super().__init__()
        self.last_mid: int | None = None
        self._on_ack = on_ack
        self._ours: set[int] = set()

    def push_message(self, mid, raw_package):
        super().push_message(mid, raw_package)
        self.last_mid = mid
        self._ours.add(mid)

    def remove_message_by_mid(self, mid):
        super().remove_message_by_mid(mid)   # called on PUBACK
        if mid in self._ours:
            self._ours.discard(mid)
            self._on_ack(mid)


class _Client(gmqtt.Client):
    """A gmqtt client that reports a lost connection instead of reconnecting by itself."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lost = asyncio.Event()

    async def reconnect(self, delay=False):  # gmqtt's hook on a lost link
        self.lost.set()


class NotifierStore(NotifyOutbox, Tunnels, Protocol):
    """What the notifier works on: the store's outbox, and the tunnel of each entry."""


class Notifier:
    """A TunnelListener: told of creations and rotations, it wakes its delivery loop."""

    def __init__(self, settings: Settings, store: NotifierStore, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.host, self.port, _ = parse_mqtt_url(settings.mqtt_url)
        self.client_id = settings.mqtt_client_id or f"iot-tunnel-relay-{uuid.uuid4().hex[:12]}"
        mode = settings.presence_check
        self.presence: Presence | None = Presence(mode) if mode in ("strict", "known") else None
        self.connected = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._in_flight: dict[int, PendingNotify] = {}
        self._acked: list[PendingNotify] = []
        self._came_online: set[str] = set()   # devices that said `online` since the last round
        self._gmqtt_log = quiet_gmqtt_logger("relay.notifier.gmqtt")
        self.on_delivered: Callable[[Tunnel], None] | None = None   # the audit trail's hook (set by the app)

    # -- TunnelListener ------------------------------------------------------------------

    def tunnel_created(self, tunnel: Tunnel, device_token: str) -> None:
        self._wake.set()   # the service has put the notify in the outbox already

    def tunnel_closed(self, tunnel: Tunnel, reason: CloseReason) -> None:
        pass               # the store dropped its outbox entry; a late PUBACK matches nothing

    def tokens_rotated(self, tunnel: Tunnel, sides: frozenset[Side], device_token: str | None) -> None:
        if device_token:
            self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-notifier")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        delay = self.settings.mqtt_reconnect_delay
        announced_down = False
        while not self._stopping:
            client = self._new_client()
            try:
                await asyncio.wait_for(self._connect(client), CONNECT_TIMEOUT)
            except (TimeoutError, OSError, MQTTConnectError, ssl.SSLError) as exc:
                if not announced_down:
                    log.warning("MQTT broker %s unreachable (%s); notifies wait in the outbox, retrying every %s s",
                                self.settings.mqtt_url, _describe(exc), delay)
                    announced_down = True
                await self._discard(client)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                await self._discard(client)
                raise
            announced_down = False
            log.info("connected to MQTT broker %s as %s", self.settings.mqtt_url, self.client_id)
            try:
                await self._serve(client)
            finally:
                self.connected = False
                self._in_flight.clear()
                await self._discard(client)
            log.warning("lost the MQTT broker %s; reconnecting", self.settings.mqtt_url)
            await asyncio.sleep(min(delay, 1.0))

    def _new_client(self) -> _Client:
        storage = _TrackedStorage(self._acknowledged)
        client = _Client(self.client_id, clean_session=True, persistent_storage=storage, logger=self._gmqtt_log)
        client.storage = storage
        if self.settings.mqtt_username:
            client.set_auth_credentials(self.settings.mqtt_username, self.settings.mqtt_password)
        client.on_message = self._on_message
        return client

    async def _connect(self, client: _Client) -> None:
        tls = mqtt_tls_context(self.settings.mqtt_url, self.settings.mqtt_ca_file)
        await client.connect(self.host, self.port, ssl=tls, keepalive=KEEPALIVE, version=MQTTv311)

    async def _discard(self, client: _Client) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 5)

    async def _serve(self, client: _Client) -> None:
        self.connected = True
        refresh = None
        client.subscribe(PRESENCE_FILTER, qos=1)   # for presence checks and to notify devices again
        if self.presence is not None:
            refresh = asyncio.get_running_loop().time() + PRESENCE_SETTLE
            self.presence.begin_refresh()
        self._wake.set()   # publish whatever waits in the outbox
        lost = asyncio.ensure_future(client.lost.wait())
        try:
            while not lost.done():
                woken = asyncio.ensure_future(self._wake.wait())
                timeout = None if refresh is None else max(0.0, refresh - asyncio.get_running_loop().time())
                await asyncio.wait({lost, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if refresh is not None and asyncio.get_running_loop().time() >= refresh:
                    self.presence.end_refresh()  # type: ignore[union-attr]
                    refresh = None
                if lost.done():
                    break
                if self._wake.is_set():
                    self._wake.clear()
                    await self._record_acks()
                    await self._renotify()
                    await self._publish_pending(client)
        finally:
            lost.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lost
        await self._record_acks()

    def _acknowledged(self, mid: int) -> None:
        entry = self._in_flight.pop(mid, None)
        if entry is not None:
            self._acked.append(entry)
            self._wake.set()

    async def _record_acks(self) -> None:
        acked, self._acked = self._acked, []
        for entry in acked:
            if await self.store.notify_delivered(entry.tunnel_id, entry.device_token):
                log.info("tunnel notify acknowledged by the MQTT broker", extra={"tunnel_id": entry.tunnel_id})
                if self.on_delivered is not None:
                    tunnel = await self.store.get(entry.tunnel_id)
                    if tunnel is not None:
                        self.on_delivered(tunnel)

    async def _renotify(self) -> None:
        devices, self._came_online = self._came_online, set()
        for device_id in sorted(devices):
            for tunnel_id in await self.store.renotify(device_id):
                log.info("tunnel notify queued again: the device came online and its end is not connected",
                         extra={"tunnel_id": tunnel_id, "device_id": device_id})

    async def _publish_pending(self, client: _Client) -> None:
        waiting = {(e.tunnel_id, e.device_token) for e in self._in_flight.values()}
        for entry in await self.store.pending_notifies(MAX_IN_FLIGHT):
            if len(self._in_flight) >= MAX_IN_FLIGHT or client.lost.is_set():
                return
            if (entry.tunnel_id, entry.device_token) in waiting:
                continue
            tunnel = await self.store.get(entry.tunnel_id)
            if tunnel is None or tunnel.status is not Status.OPEN:
                continue   # closing drops the entry; this one is on its way out
            topic, payload = self._notify(tunnel, entry.device_token)
            client.publish(topic, payload, qos=1)
            mid = client.storage.last_mid
            if mid is not None:
                self._in_flight[mid] = entry
            log.info("tunnel notify published", extra={"tunnel_id": tunnel.tunnel_id, "device_id": tunnel.device_id})

    def _notify(self, tunnel: Tunnel, device_token: str) -> tuple[str, bytes]:
        """The topic and payload that tell the device of `tunnel` its token, in its protocol's way."""
        if tunnel.protocol is TunnelProtocol.AWS:
            return aws_notify_topic(tunnel.device_id), build_aws_notify(
                token=device_token, region=self.settings.aws_region, services=tunnel.services)
        now = self.clock.now()
        return down_topic(tunnel.device_id), build_notify(
            tunnel_uri=self.settings.tunnel_uri(tunnel.tunnel_id, "device"), token=device_token,
            expires_in=tunnel.remaining_lifetime(now), now=now, custom_info=tunnel.custom_info,
        )

    def _on_message(self, client, topic, payload, qos, properties):
        device_id = device_of_presence_topic(topic)
        if device_id is None:
            return 0
        if payload.strip().lower() == ONLINE:
            self._came_online.add(device_id)
            self._wake.set()
        if self.presence is None:
            return 0
        before = self.presence.state(device_id)
        after = self.presence.update(device_id, payload, self.clock.now())
        if after is not before and after is not State.UNKNOWN:
            log.info("device %s", after.value, extra={"device_id": device_id})
        return 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer"
    text = str(exc) or type(exc).__name__
    return text.split("\n", 1)[0][:200]
