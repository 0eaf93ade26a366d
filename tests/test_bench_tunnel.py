"""benchmarks/tunnel_bench.py in the suite: correctness only, no timing. A few MB through our
Huawei and AWS paths (real `relay serve`, `relay agent`, `relay forward`, mosquitto, sshd for
scp) must arrive whole (sha256) and the table must be printed. rathole is never built here
(--no-build): its paths run only where it was built before, and are skipped otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "tunnel_bench.py"
RATHOLE = Path(os.environ.get("RELAY_BENCH_CACHE", Path.home() / ".cache/relay-bench")) / "rathole/bin/rathole"


def run_bench(tmp_path: Path, paths: str) -> tuple[dict, str]:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--size", "3", "--rounds", "1", "--rtt-count", "20", "--paths", paths,
         "--no-build", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


def check(results: dict, stdout: str, names: list[str]) -> None:
    assert results["skipped"] == {}, results["skipped"]
    summaries = {s["path"]: s for s in results["summaries"]}
    assert sorted(summaries) == sorted(names)
    assert "| path | upload MB/s | download MB/s |" in stdout
    for name in names:
        summary = summaries[name]
        assert summary["sha256_ok"] is True, summary
        assert stdout.count(f"| {name} |") == 1
        (result,) = results["rounds"][name]
        assert result["sha256_ok"] is True and result["bytes"] == 3_000_000
        assert result["up_mb_s"] > 0 and result["down_mb_s"] > 0
        if not results["scp_skipped"]:   # a real sshd is here: scp went through the path too
            assert result.get("scp_sha256_ok") is True, result


@pytest.mark.timeout(300)
def test_huawei_and_aws_paths_carry_the_bytes_whole(tmp_path):
    results, stdout = run_bench(tmp_path, "direct,huawei,aws")
    check(results, stdout, ["direct", "huawei", "aws"])
    for name, processes in (("huawei", {"relay", "agent", "forward"}), ("aws", {"relay", "agent", "forward"})):
        (result,) = results["rounds"][name]
        assert set(result["cpu_s_per_gb"]) == processes


@pytest.mark.timeout(300)
def test_rathole_paths_when_rathole_is_built(tmp_path):
    if not os.access(RATHOLE, os.X_OK):
        pytest.skip(f"rathole is not built ({RATHOLE}): python benchmarks/tunnel_bench.py builds it")
    results, stdout = run_bench(tmp_path, "rathole-tcp,rathole-ws")
    check(results, stdout, ["rathole-tcp", "rathole-ws"])


def test_a_missing_rathole_is_a_skip_line_not_a_crash(tmp_path):
    env = {**os.environ, "RELAY_BENCH_RATHOLE": str(tmp_path / "no-such-rathole")}
    done = subprocess.run(
        [sys.executable, str(BENCH), "--size", "1", "--rounds", "1", "--rtt-count", "5", "--paths", "direct,rathole-tcp",
         "--no-build", "--no-scp"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rathole-tcp: skipped (RELAY_BENCH_RATHOLE=" in done.stderr
    assert "| rathole-tcp | skipped: RELAY_BENCH_RATHOLE=" in done.stdout
    assert "| direct |" in done.stdout
