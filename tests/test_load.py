"""A short run of the bounded load test (benchmarks/load_test.py): nothing lost, duplicated,
reordered or corrupted. The full-size run and its figures are in benchmarks/README.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_serve import clean_env

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "load_test.py"


@pytest.mark.timeout(180)
def test_short_load_run_loses_nothing():
    run = subprocess.run([sys.executable, str(SCRIPT), "--idle", "300", "--active", "100", "--seconds", "2",
                          "--rate", "10"], capture_output=True, text=True, timeout=170, env=clean_env())
    report = dict(line.split(None, 1) for line in run.stdout.splitlines() if line.strip())
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert int(report["tunnels_held"]) == 400
    assert int(report["messages_received"]) == int(report["messages_sent"]) > 0
    for problem in ("lost", "duplicated", "reordered", "corrupt", "errors"):
        assert int(report[problem]) == 0, problem
