"""The hub carries out the control plane's and the other replicas' word, without sockets: a
hint names why a tunnel's ends end (relay.protocol.EndCause); a reason this replica does not
know is not guessed at (the reconciliation, which reads the store, settles it)."""

from __future__ import annotations

import logging

import pytest

from relay.clock import ManualClock
from relay.cluster import Cluster, Hint
from relay.config import Settings
from relay.model import Side
from relay.protocol import Pairing
from relay.service import TunnelService
from relay.store.sqlite import SqliteStore
from relay.web.sockets import Hub


class FakeEnd:
    """An end as the rules see it (relay.protocol.End), recording what it is asked."""

    version = 0

    def __init__(self, side: Side) -> None:
        self.side = side
        self.sent: list[bytes] = []
        self.closed: list[tuple[int, str]] = []

    def send_message(self, payload: bytes) -> None:
        self.sent.append(payload)

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    def link(self, peer: FakeEnd | None) -> None:
        pass


@pytest.fixture
async def hub(tmp_path):
    store = SqliteStore(str(tmp_path / "relay.db"))
    settings = Settings(db=str(tmp_path / "relay.db"))
    clock = ManualClock()
    yield Hub(TunnelService(store, settings, clock), Cluster(store, clock), settings)
    await store.aclose()


def paired(hub: Hub) -> tuple[FakeEnd, FakeEnd]:
    pairing = Pairing("t-1")
    hub.pairings["t-1"] = pairing
    source, device = FakeEnd(Side.SOURCE), FakeEnd(Side.DEVICE)
    pairing.attach(source)
    pairing.attach(device)
    return source, device


@pytest.mark.parametrize("reason, code", [("closed", 1000), ("expired", 1000), ("rotated", 4001)])
async def test_an_ended_hint_closes_the_named_sides_for_its_reason(hub, reason, code):
    source, device = paired(hub)
    hub.on_hint(Hint("ended", "t-1", ("source",), reason, "other-replica"))
    assert [c for c, _ in source.closed] == [code]
    assert device.closed == []


async def test_an_ended_hint_with_an_unknown_reason_ends_nothing_and_says_so(hub, caplog):
    source, device = paired(hub)
    caplog.set_level(logging.WARNING, logger="relay.web.sockets")
    hub.on_hint(Hint("ended", "t-1", ("source", "device"), "evaporated", "other-replica"))
    assert source.closed == [] and device.closed == []
    assert [r.getMessage() for r in caplog.records] == ["ignoring a cluster hint with an unknown reason"]
