"""relay/logs.py: the handler `setup` installs writes to the stderr of the moment.

Commands run in-process by the tests (and by embedders) call `setup` while pytest has put a
capture stream in sys.stderr; the next test closes that stream. A handler bound to it would
print a `--- Logging error --- ValueError: I/O operation on closed file` traceback for every
later record, burying the one failure that matters."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from relay import logs


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_records_go_to_the_current_stderr_after_the_old_one_closed(root_logging, monkeypatch, fmt):
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.setup("INFO", fmt)
    logging.getLogger("relay.test").info("first record")
    assert "first record" in first.getvalue()
    first.close()   # what pytest does to a test's capture stream when the test ends

    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("relay.test").info("second record")
    written = second.getvalue()
    assert "second record" in written
    assert "Logging error" not in written
