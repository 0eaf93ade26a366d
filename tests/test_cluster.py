"""The replicas' lease rules, without sockets: the epoch an end holds (`held_epoch`, the one
lease-epoch check of the hub and the bridges) and what reconciliation does with an end
(`reconcile_verdict`)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from relay.cluster import held_epoch, reconcile_verdict
from relay.model import CloseReason, Side, Status, Tunnel
from relay.protocol import Reasons

NOW = 1_000.0


async def test_an_end_holds_the_epoch_of_its_successful_claim():
    claim: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    assert held_epoch(claim) is None           # still asking the store
    claim.set_result(7)
    assert held_epoch(claim) == 7


async def test_an_end_whose_claim_failed_or_was_cancelled_holds_no_epoch():
    failed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    failed.set_exception(ConnectionError("the store is away"))
    cancelled: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    cancelled.cancel()
    assert held_epoch(failed) is None
    assert held_epoch(cancelled) is None
    assert held_epoch(None) is None            # never claimed


def a_tunnel(**changes) -> Tunnel:
    tunnel = Tunnel(tunnel_id="t-1", project_id="p", device_id="d", create_time=NOW - 10, expires_at=NOW + 60,
                    source_token_hash="src-hash", device_token_hash="dev-hash")
    return dataclasses.replace(tunnel, **changes)


@pytest.mark.parametrize("side, token_hash", [(Side.SOURCE, "src-hash"), (Side.DEVICE, "dev-hash")])
def test_an_end_of_an_open_tunnel_with_its_token_is_kept(side, token_hash):
    assert reconcile_verdict(a_tunnel(), side, token_hash, NOW, lease_lost=False) is None


def test_an_end_whose_lease_another_replica_took_is_evicted():
    # whatever the store says of the tunnel: the newer connection elsewhere wins
    assert reconcile_verdict(a_tunnel(), Side.SOURCE, "src-hash", NOW, lease_lost=True) is Reasons.EVICTED
    assert reconcile_verdict(None, Side.SOURCE, "src-hash", NOW, lease_lost=True) is Reasons.EVICTED


def test_an_end_of_a_tunnel_the_store_no_longer_has_is_told_it_was_closed():
    assert reconcile_verdict(None, Side.DEVICE, "dev-hash", NOW, lease_lost=False) is Reasons.TUNNEL_CLOSED


def test_an_end_of_a_closed_tunnel_hears_why_it_closed():
    closed = a_tunnel(status=Status.CLOSED, close_reason=CloseReason.CLOSED)
    expired = a_tunnel(status=Status.CLOSED, close_reason=CloseReason.EXPIRED)
    assert reconcile_verdict(closed, Side.SOURCE, "src-hash", NOW, lease_lost=False) is Reasons.TUNNEL_CLOSED
    assert reconcile_verdict(expired, Side.SOURCE, "src-hash", NOW, lease_lost=False) is Reasons.TUNNEL_EXPIRED


def test_an_end_of_an_open_tunnel_past_its_lifetime_ends():
    # not settled yet by the sweep: no close reason recorded, so it is told the tunnel closed
    due = a_tunnel(expires_at=NOW)
    assert reconcile_verdict(due, Side.DEVICE, "dev-hash", NOW, lease_lost=False) is Reasons.TUNNEL_CLOSED


def test_an_end_whose_token_was_rotated_elsewhere_ends_with_4001():
    rotated = a_tunnel(source_token_hash="new-hash")
    reason = reconcile_verdict(rotated, Side.SOURCE, "src-hash", NOW, lease_lost=False)
    assert reason is Reasons.TOKEN_ROTATED and reason.close_code == 4001
    # the other side's token is unchanged: its end stays
    assert reconcile_verdict(rotated, Side.DEVICE, "dev-hash", NOW, lease_lost=False) is None
