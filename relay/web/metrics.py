"""Prometheus metrics, served at /metrics on the internal port, written by prometheus_client
(the only module that imports it, tests/test_layers.py).

Counting costs nothing on the hot path: the decoders count what they relay and the Hub keeps
a few counters of its own; prometheus_client counts nothing. A custom collector reads those
counters when Prometheus scrapes, so each scrape is a snapshot of the relay as it is.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.model import Side, TunnelProtocol
from relay.store.base import TunnelStore

PROTOCOLS = [p.value for p in TunnelProtocol]
OUTBOX_SCAN = 100_000   # the outbox depth is counted up to this many notifies


class Counters:
    """Events of the data plane, counted as they happen (none per message)."""

    def __init__(self) -> None:
        self.closes: Counter[int] = Counter()            # close codes the relay sent
        # counts of decoders no longer in use, by (protocol, side)
        self.retired_messages: Counter[tuple[str, str]] = Counter()
        self.retired_bytes: Counter[tuple[str, str]] = Counter()
        self.refused_connections = 0                      # over --max-http-connections-per-address


@dataclasses.dataclass(frozen=True, slots=True)
class StoreFigures:
    """What the store says at scrape time. Read before collecting: a collector's collect() is
    synchronous, and the store is asynchronous."""

    tunnels_by_status: dict[str, int]
    outbox_depth: int

    @classmethod
    async def read(cls, store: TunnelStore) -> StoreFigures:
        by_status = await store.count_by_status()
        pending = await store.pending_notifies(OUTBOX_SCAN)
        return cls(tunnels_by_status=dict(by_status), outbox_depth=len(pending))


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


class RelayCollector(Collector):
    """Every metric of docs/operations.md, read from the Hub, its decoders, the audit log and
    the store's figures. `hub` is the data plane's Hub (relay.web.sockets), passed in to keep
    imports one-way. Label names are given in sorted order, as the exposition always had them."""

    def __init__(self, hub: Any, store: StoreFigures) -> None:
        self.hub = hub
        self.store = store

    def collect(self) -> Iterator[Metric]:
        hub, counters = self.hub, self.hub.counters
        # Every (protocol, side) pair is always listed, at 0 when there is none: dashboards and
        # alerts see a series that exists.
        kinds = [(protocol, side.value) for protocol in PROTOCOLS for side in Side]

        connections = Counter((e.pairing.protocol, e.side.value) for e in hub.local_ends())
        family = GaugeMetricFamily("relay_connections", "WebSocket connections held by this replica, by protocol and side.",
                                   labels=["protocol", "side"])
        for kind in kinds:
            family.add_metric(list(kind), connections[kind])
        yield family

        pairs = sum(1 for p in hub.pairings.values() if all(e is not None for e in p.ends.values()))
        yield _gauge("relay_tunnels_active", "Tunnels with at least one end on this replica.", len(hub.pairings))
        yield _gauge("relay_tunnels_paired", "Tunnels whose two ends are connected (here or through a bridge).", pairs)
        # an end without a decoder is a bridge's stand-in for the end on another replica
        bridges = sum(1 for p in hub.pairings.values() for e in p.ends.values() if e is not None and not hasattr(e, "decoder"))
        yield _gauge("relay_bridges", "Ends reached through another replica (cross-replica forwarding).", bridges)

        messages: Counter[tuple[str, str]] = Counter(counters.retired_messages)
        volume: Counter[tuple[str, str]] = Counter(counters.retired_bytes)
        for pairing in hub.pairings.values():
            for side, decoder in pairing.decoders.items():
                messages[pairing.protocol, side.value] += decoder.messages
                volume[pairing.protocol, side.value] += decoder.bytes
        sent = CounterMetricFamily("relay_messages_total",
                                   "Messages accepted from clients of this replica, by protocol and sending side.",
                                   labels=["protocol", "side"])
        size = CounterMetricFamily("relay_message_bytes_total", "Payload bytes of accepted messages, by protocol and sending side.",
                                   labels=["protocol", "side"])
        for kind in kinds:
            sent.add_metric(list(kind), messages[kind])
            size.add_metric(list(kind), volume[kind])
        yield sent
        yield size

        closes = CounterMetricFamily(
            "relay_closes_total",
            "Connections closed by the relay, by close code (4000 = evicted, 44xx and 1002-1009 = rejected input).",
            labels=["code"])
        for code, n in sorted(counters.closes.items()):
            closes.add_metric([str(code)], n)
        yield closes

        yield _counter("relay_connections_refused_total",
                       "Connections refused (429) because their client address held --max-http-connections-per-address.",
                       counters.refused_connections)

        tunnels = GaugeMetricFamily("relay_tunnels", "Tunnels in the store, by status.", labels=["status"])
        for status, n in sorted(self.store.tunnels_by_status.items()):
            tunnels.add_metric([status], n)
        yield tunnels
        yield _gauge("relay_notify_outbox_depth", "Tunnel notifies waiting for the MQTT broker.", self.store.outbox_depth)

        audit = getattr(getattr(hub, "service", None), "audit", None)   # relay.auditlog.AuditLog (docs/audit.md)
        if audit is not None:
            yield from _audit_metrics(audit)


def _audit_metrics(audit: Any) -> Iterator[Metric]:
    yield _counter("relay_audit_events_written_total", "Audit events stored.", audit.written)
    yield _counter("relay_audit_events_dropped_total",
                   "Audit events not stored: the queue was full while the store was slow or away, or shutdown came first.",
                   audit.dropped)
    yield _counter("relay_audit_write_failures_total", "Audit writes the store refused (each is retried).", audit.write_failures)
    yield _gauge("relay_audit_queue_depth", "Audit events waiting to be written.", audit.queue_depth)
    limited = CounterMetricFamily(
        "relay_audit_events_limited_total",
        "Audit events not stored because their project went over --audit-rate/--audit-burst, by project.",
        labels=["project_id"])
    for project, n in sorted(audit.limited.items()):
        limited.add_metric([project], n)
    yield limited
    yield _counter("relay_audit_recordings_saved_total", "Session recordings stored.", audit.recordings_saved)
    yield _counter("relay_audit_recordings_dropped_total",
                   "Session recordings not stored (their queue was full, or shutdown came first).", audit.recordings_dropped)


async def render(hub: Any, store: TunnelStore) -> str:
    """The exposition of one scrape, in Prometheus's text format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(hub, await StoreFigures.read(store)))
    return generate_latest(registry).decode()
