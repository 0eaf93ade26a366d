"""Which test opened a transport that was never closed.

asyncio warns about an unclosed transport (a ResourceWarning, an error in this suite) when the
garbage collector frees it, which may be several tests later, so pytest reports it in a test
that has nothing to do with it. Every transport of the suite's event loops therefore notes the
test that was running when it opened and where in our code that happened, and its `repr`, which
the warning prints, says so. Tests only: the relay itself runs on uvloop.
"""

from __future__ import annotations

import os
import traceback
from asyncio import selector_events
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1]) + os.sep
_Transport = selector_events._SelectorTransport
_open = _Transport.__init__
_repr = _Transport.__repr__


def _where() -> str:
    """The frames of the relay and the tests that led here, innermost last."""
    frames = traceback.extract_stack(limit=24)[:-3]
    ours = [f for f in frames if f.filename.startswith(ROOT) and "site-packages" not in f.filename]
    return " < ".join(f"{f.filename[len(ROOT):]}:{f.lineno}" for f in reversed(ours[-6:])) or "?"


def _noting_open(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    _open(self, *args, **kwargs)
    self._opened_in = os.environ.get("PYTEST_CURRENT_TEST", "no test")
    self._opened_at = _where()


def _noted_repr(self) -> str:  # type: ignore[no-untyped-def]
    return f"{_repr(self)[:-1]} opened in {getattr(self, '_opened_in', '?')} at {getattr(self, '_opened_at', '?')}>"


def install() -> None:
    _Transport.__init__ = _noting_open  # type: ignore[method-assign]
    _Transport.__repr__ = _noted_repr  # type: ignore[method-assign]
