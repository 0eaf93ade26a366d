"""The expiry sweep while its store fails (a Redis outage): one line when it starts failing,
one when it works again, not a traceback every round (issue 15, finding 11)."""

from __future__ import annotations

import asyncio
import logging


async def test_a_failing_store_is_one_warning_not_a_traceback_per_round(relay, caplog):
    from relay.web import rest

    service = relay.client.server.app[rest.SERVICE]
    real = service.store.due_for_expiry
    failing = True

    async def due_for_expiry(now):  # type: ignore[no-untyped-def]
        if failing:
            raise ConnectionError("Redis is down")
        return await real(now)

    service.store.due_for_expiry = due_for_expiry
    caplog.set_level(logging.INFO, logger="relay.service")
    await asyncio.sleep(0.6)   # about 12 rounds at the test's 0.05 s sweep interval
    failing = False
    await asyncio.sleep(0.3)
    records = [r for r in caplog.records if r.name == "relay.service" and "sweep" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO], [r.getMessage() for r in records]
    assert "Redis is down" in records[0].getMessage() and records[0].exc_info is None
    assert records[1].getMessage() == "expiry sweep works again"
