"""The agent as a whole: the MQTT link, and the tunnel its latest notify names."""

from __future__ import annotations

import asyncio
import logging

from relay.agent.aws import AwsTunnels
from relay.agent.mqtt import DeviceLink
from relay.agent.settings import AgentSettings
from relay.agent.tunnel import TunnelClient
from relay.notify import TunnelNotify, cancel_and_wait

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.aws = AwsTunnels(settings)   # AWS IoT Secure Tunneling notifies (docs/aws-clients.md)
        self.link = DeviceLink(settings, self.on_notify, self.aws.on_notify)
        self.tunnel: TunnelClient | None = None
        self._tunnel_task: asyncio.Task[str] | None = None
        self._link_task: asyncio.Task[None] | None = None
        self._old: set[asyncio.Task[None]] = set()

    def on_notify(self, notify: TunnelNotify) -> None:
        extra = {"tunnel_id": notify.tunnel_id, "device_id": self.settings.device_id}
        log.info("tunnel notify received (expires in %s s)", notify.expires_in, extra=extra)
        running = self._tunnel_task is not None and not self._tunnel_task.done()
        if running and self.tunnel is not None and self.tunnel.tunnel_id == notify.tunnel_id:
            self.tunnel.update(notify)   # a rotated device token, or the same notify again
            return
        if running and self._tunnel_task is not None:
            log.info("a new tunnel replaces the current one", extra=extra)
            old = asyncio.create_task(cancel_and_wait(self._tunnel_task))
            self._old.add(old)
            old.add_done_callback(self._old.discard)
        self.tunnel = TunnelClient(notify, self.settings)
        self._tunnel_task = asyncio.create_task(self.tunnel.run(), name=f"tunnel-{notify.tunnel_id}")
        self._tunnel_task.add_done_callback(_report_failure)

    async def start(self) -> None:
        self._link_task = asyncio.create_task(self.link.run(), name="mqtt-link")

    async def stop(self) -> None:
        self.link.stopping = True
        await self.link.close()
        for task in [t for t in (self._link_task, self._tunnel_task, *self._old) if t is not None]:
            await cancel_and_wait(task)
        await self.aws.stop()

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def _report_failure(task: asyncio.Task[str]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the tunnel client failed", exc_info=task.exception())


async def run(settings: AgentSettings) -> int:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("agent of device %s: MQTT %s, SSH server %s:%s", settings.device_id, settings.mqtt_url,
             settings.ssh_host, settings.ssh_port)
    await Agent(settings).run_until(stop)
    log.info("agent stopped")
    return 0
