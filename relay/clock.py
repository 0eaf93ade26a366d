"""Time: one place that reads the wall clock, so tests can move it."""

from __future__ import annotations

import time
from datetime import datetime, UTC

HUAWEI_TIME_FORMAT = "%Y%m%dT%H%M%SZ"  # yyyyMMdd'T'HHmmss'Z', UTC


class Clock:
    """The wall clock, in seconds since the epoch."""

    def now(self) -> float:
        return time.time()


class ManualClock(Clock):
    """A clock that only moves when told to (tests, simulations)."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def format_time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).strftime(HUAWEI_TIME_FORMAT)
