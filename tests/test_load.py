"""A short run of the bounded load test (benchmarks/load_test.py), on Huawei and on AWS tunnels:
nothing lost, duplicated, reordered or corrupted. The full-size runs and their figures are in
benchmarks/README.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_serve import clean_env

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "load_test.py"
# clean_env drops RELAY_*: keep RELAY_CODEC, so that RELAY_CODEC=python runs the relay on the Python twin
CODEC = {"RELAY_CODEC": os.environ["RELAY_CODEC"]} if "RELAY_CODEC" in os.environ else {}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("protocol", ["huawei", "aws"])
def test_short_load_run_loses_nothing(protocol):
    run = subprocess.run([sys.executable, str(SCRIPT), "--protocol", protocol, "--idle", "300", "--active", "100",
                          "--seconds", "2", "--rate", "10"], capture_output=True, text=True, timeout=170,
                         env=clean_env(**CODEC))
    report = dict(line.split(None, 1) for line in run.stdout.splitlines() if line.strip())
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert report["protocol"].startswith(protocol)
    assert int(report["tunnels_held"]) == 400
    assert int(report["messages_received"]) == int(report["messages_sent"]) > 0
    for problem in ("lost", "duplicated", "reordered", "corrupt", "errors"):
        assert int(report[problem]) == 0, problem
