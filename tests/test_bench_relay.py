"""benchmarks/relay_bench.py --shape per-read in the suite: correctness only, no timing. A
short paced run through our relay and the picows baseline must deliver every message (the
run waits for all of them, bounded) and print its table."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(200)
def test_per_read_shape_delivers_every_message_through_each_relay(tmp_path):
    rows = {"rust codec": "relay (rust codec)"}
    if importlib.util.find_spec("picows"):
        rows["picows"] = "picows"
    relays = list(rows)
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/relay_bench.py", "--shape", "per-read", "--tunnels", "5", "--rate", "20",
         "--seconds", "1", "--rounds", "2", "--json", str(out), *[a for r in relays for a in ("--only", r)]],
        cwd=ROOT, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
        env={"BENCH_RUN_LIMIT": "60", **os.environ})
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert len(results) == 2 * len(relays)
    for result in results:
        assert result["messages"] == 5 * 20 and result["shape"] == "per-read"
        assert result["cpu_us_per_msg"] >= 0
    assert "| relay | CPU per message, median | min | messages per round |" in done.stdout
    for row in rows.values():
        assert done.stdout.count(f"| {row} |") == 1, done.stdout
