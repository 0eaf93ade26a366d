"""The metrics collector (relay/web/metrics.py) without sockets: a Hub and a store stand-in hold
the counters the relay keeps, and the exposition prometheus_client writes from them is parsed
back with prometheus_client's own parser."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from relay.model import Side
from relay.web import metrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


class Store:
    def __init__(self) -> None:
        self.by_status = {"OPEN": 2, "CLOSED": 5}
        self.pending = ["n1", "n2", "n3"]

    async def count_by_status(self) -> dict[str, int]:
        return self.by_status

    async def pending_notifies(self, limit: int) -> list[str]:
        return self.pending[:limit]


def end(pairing, side, decoder=True):
    found = SimpleNamespace(pairing=pairing, side=side)
    if decoder:
        found.decoder = object()
    return found


def hub_with_one_paired_tunnel():
    pairing = SimpleNamespace(protocol="huawei", ends={}, decoders={})
    pairing.ends = {Side.SOURCE: end(pairing, Side.SOURCE), Side.DEVICE: end(pairing, Side.DEVICE, decoder=False)}
    pairing.decoders = {Side.SOURCE: SimpleNamespace(messages=3, bytes=300)}
    counters = metrics.Counters()
    counters.closes.update({4400: 2, 4000: 1})
    counters.retired_messages["aws", "device"] = 7
    counters.retired_bytes["aws", "device"] = 70
    counters.refused_connections = 4
    audit = SimpleNamespace(written=9, dropped=1, write_failures=0, queue_depth=2, limited={"proj-a": 30},
                            recordings_saved=1, recordings_dropped=0)
    return SimpleNamespace(counters=counters, pairings={"t1": pairing}, service=SimpleNamespace(audit=audit),
                           local_ends=lambda: [pairing.ends[Side.SOURCE]])


def parse(text: str) -> dict[str, tuple[str, str, dict[tuple[tuple[str, str], ...], float]]]:
    """name -> (type, help, {sorted labels: value}) as prometheus_client's parser reads them."""
    found = {}
    for family in text_string_to_metric_families(text):
        samples = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        # the parser names a counter family without its _total; the exposition spells it with it
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = (family.type, family.documentation, samples)
    return found


async def test_the_exposition_parses_and_carries_the_relays_counters():
    text = await metrics.render(hub_with_one_paired_tunnel(), Store())
    found = parse(text)
    assert found["relay_connections"][0] == "gauge"
    assert found["relay_connections"][2] == {
        (("protocol", "huawei"), ("side", "source")): 1, (("protocol", "huawei"), ("side", "device")): 0,
        (("protocol", "aws"), ("side", "source")): 0, (("protocol", "aws"), ("side", "device")): 0}
    assert found["relay_messages_total"][0] == "counter"
    assert found["relay_messages_total"][2][("protocol", "huawei"), ("side", "source")] == 3
    assert found["relay_messages_total"][2][("protocol", "aws"), ("side", "device")] == 7    # retired decoders
    assert found["relay_message_bytes_total"][2][("protocol", "aws"), ("side", "device")] == 70
    assert found["relay_closes_total"][2] == {(("code", "4000"),): 1, (("code", "4400"),): 2}
    assert found["relay_tunnels_active"][2] == {(): 1}
    assert found["relay_tunnels_paired"][2] == {(): 1}
    assert found["relay_bridges"][2] == {(): 1}   # the device end has no decoder: another replica's
    assert found["relay_connections_refused_total"][2] == {(): 4}
    assert found["relay_tunnels"][2] == {(("status", "CLOSED"),): 5, (("status", "OPEN"),): 2}
    assert found["relay_notify_outbox_depth"][2] == {(): 3}
    assert found["relay_audit_events_limited_total"][2] == {(("project_id", "proj-a"),): 30}
    assert found["relay_audit_queue_depth"] == ("gauge", "Audit events waiting to be written.", {(): 2})
    # Series are written with their labels in sorted order, as dashboards and tests match them.
    assert 'relay_connections{protocol="huawei",side="source"} 1.0' in text.splitlines()


async def test_every_metric_of_the_operations_guide_is_exposed_with_its_type():
    documented = {}
    for row in re.findall(r"^\| `(relay_[a-z_]+)` \| (gauge|counter) \|", DOCS.read_text(), re.M):
        documented[row[0]] = row[1]
    assert len(documented) >= 10
    found = parse(await metrics.render(hub_with_one_paired_tunnel(), Store()))
    for name, kind in documented.items():
        assert found[name][0] == kind, name
    for name in ("relay_audit_events_written_total", "relay_audit_events_dropped_total", "relay_audit_write_failures_total",
                 "relay_audit_recordings_saved_total", "relay_audit_recordings_dropped_total"):
        assert found[name][0] == "counter", name


async def test_the_collector_reads_the_counters_at_scrape_time():
    hub, store = hub_with_one_paired_tunnel(), Store()
    figures = await metrics.StoreFigures.read(store)
    collector = metrics.RelayCollector(hub, figures)
    before = {m.name: m for m in collector.collect()}
    assert before["relay_messages"].samples[0].value == 3   # prometheus_client's name: without _total
    # The relay counts; the collector only reads: a second collect sees the new figures.
    hub.pairings["t1"].decoders[Side.SOURCE].messages = 5
    hub.counters.closes[1001] += 1
    after = {m.name: m for m in collector.collect()}
    assert after["relay_messages"].samples[0].value == 5
    assert {s.labels["code"]: s.value for s in after["relay_closes"].samples} == {"1001": 1, "4000": 1, "4400": 2}


async def test_without_an_audit_log_no_audit_series():
    hub = hub_with_one_paired_tunnel()
    hub.service = None
    found = parse(await metrics.render(hub, Store()))
    assert "relay_connections" in found and not [n for n in found if n.startswith("relay_audit")]
