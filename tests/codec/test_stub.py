"""The hand-written type stub of the Rust module matches the built module."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relay import codec


@pytest.mark.skipif(codec.rust_impl is None, reason="the Rust codec is not built")
@pytest.mark.timeout(180)
def test_stub_matches_the_built_module():
    pytest.importorskip("mypy")
    run = subprocess.run([sys.executable, "-m", "mypy.stubtest", "relay._codec_rs"],
                         capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stdout + run.stderr
