"""Prometheus metrics, in the text exposition format, served at /metrics on the internal
port. Counting costs nothing on the hot path: the decoders count what they relay, and the
rest is read when Prometheus scrapes."""

from __future__ import annotations

from collections import Counter

from typing import Any

from relay.model import Side, TunnelProtocol
from relay.store.base import TunnelStore


PROTOCOLS = [p.value for p in TunnelProtocol]


class Counters:
    """Events of the data plane, counted as they happen (none per message)."""

    def __init__(self) -> None:
        self.closes: Counter[int] = Counter()            # close codes the relay sent
        # counts of decoders no longer in use, by (protocol, side)
        self.retired_messages: Counter[tuple[str, str]] = Counter()
        self.retired_bytes: Counter[tuple[str, str]] = Counter()
        self.refused_connections = 0                      # over --max-http-connections-per-address


def _line(name: str, value: float, **labels: str) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


async def render(hub: Any, store: TunnelStore) -> str:
    """`hub` is the data plane's Hub (relay.web.sockets), passed in to keep imports one-way."""
    counters = hub.counters
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[float, dict[str, str]]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(_line(name, value, **labels) for value, labels in samples)

    # Every (protocol, side) pair is always listed, at 0 when there is none: dashboards and
    # alerts see a series that exists.
    kinds = [(protocol, side.value) for protocol in PROTOCOLS for side in Side]
    connections = Counter((e.pairing.protocol, e.side.value) for e in hub.local_ends())
    metric("relay_connections", "gauge", "WebSocket connections held by this replica, by protocol and side.",
           [(connections[k], {"protocol": k[0], "side": k[1]}) for k in kinds])
    pairs = sum(1 for p in hub.pairings.values() if all(e is not None for e in p.ends.values()))
    metric("relay_tunnels_active", "gauge", "Tunnels with at least one end on this replica.", [(len(hub.pairings), {})])
    metric("relay_tunnels_paired", "gauge", "Tunnels whose two ends are connected (here or through a bridge).", [(pairs, {})])
    bridges = sum(1 for p in hub.pairings.values() for e in p.ends.values() if e is not None and not hasattr(e, "decoder"))
    metric("relay_bridges", "gauge", "Ends reached through another replica (cross-replica forwarding).", [(bridges, {})])

    messages: Counter[tuple[str, str]] = Counter(counters.retired_messages)
    volume: Counter[tuple[str, str]] = Counter(counters.retired_bytes)
    for pairing in hub.pairings.values():
        for side, decoder in pairing.decoders.items():
            messages[pairing.protocol, side.value] += decoder.messages
            volume[pairing.protocol, side.value] += decoder.bytes
    metric("relay_messages_total", "counter",
           "Messages accepted from clients of this replica, by protocol and sending side.",
           [(messages[k], {"protocol": k[0], "side": k[1]}) for k in kinds])
    metric("relay_message_bytes_total", "counter", "Payload bytes of accepted messages, by protocol and sending side.",
           [(volume[k], {"protocol": k[0], "side": k[1]}) for k in kinds])
    metric("relay_closes_total", "counter",
           "Connections closed by the relay, by close code (4000 = evicted, 44xx and 1002-1009 = rejected input).",
           [(n, {"code": str(code)}) for code, n in sorted(counters.closes.items())])

    metric("relay_connections_refused_total", "counter",
           "Connections refused (429) because their client address held --max-http-connections-per-address.",
           [(counters.refused_connections, {})])

    by_status = await store.count_by_status()
    metric("relay_tunnels", "gauge", "Tunnels in the store, by status.", [(n, {"status": s}) for s, n in sorted(by_status.items())])
    pending = await store.pending_notifies(100_000)
    metric("relay_notify_outbox_depth", "gauge", "Tunnel notifies waiting for the MQTT broker.", [(len(pending), {})])

    audit = getattr(getattr(hub, "service", None), "audit", None)   # relay.auditlog.AuditLog (docs/audit.md)
    if audit is not None:
        metric("relay_audit_events_written_total", "counter", "Audit events stored.", [(audit.written, {})])
        metric("relay_audit_events_dropped_total", "counter",
               "Audit events not stored: the queue was full while the store was slow or away, or shutdown came first.",
               [(audit.dropped, {})])
        metric("relay_audit_write_failures_total", "counter", "Audit writes the store refused (each is retried).",
               [(audit.write_failures, {})])
        metric("relay_audit_queue_depth", "gauge", "Audit events waiting to be written.", [(audit.queue_depth, {})])
        metric("relay_audit_events_limited_total", "counter",
               "Audit events not stored because their project went over --audit-rate/--audit-burst, by project.",
               [(n, {"project_id": project}) for project, n in sorted(audit.limited.items())])
        metric("relay_audit_recordings_saved_total", "counter", "Session recordings stored.", [(audit.recordings_saved, {})])
        metric("relay_audit_recordings_dropped_total", "counter",
               "Session recordings not stored (their queue was full, or shutdown came first).",
               [(audit.recordings_dropped, {})])
    return "\n".join(out) + "\n"
