"""Bounded runs of the coverage-guided differential fuzzers: fuzz/fuzz_codec.py (the Huawei
Decoder) and fuzz/fuzz_aws_codec.py (the AwsDecoder): no crash, no exception out of the Rust
module, no disagreement between the twins. RELAY_FUZZ_SECONDS (default 20) is shared between
the two targets. Longer runs: `python fuzz/fuzz_codec.py -max_total_time=600 CORPUS_DIR`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay import codec

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
TOTAL = int(os.environ.get("RELAY_FUZZ_SECONDS", "20"))
# (target, corpus maker, share of the budget)
TARGETS = {"huawei": ("fuzz_codec.py", "make_corpus.py", 0.5), "aws": ("fuzz_aws_codec.py", "make_aws_corpus.py", 0.5)}


@pytest.mark.skipif(codec.rust_impl is None, reason="the Rust codec is not built")
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.timeout(TOTAL + 120)
def test_fuzz_the_twins_for_a_bounded_time(tmp_path: Path, target: str) -> None:
    pytest.importorskip("atheris")
    script, make_corpus, share = TARGETS[target]
    seconds = max(1, round(TOTAL * share))
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(FUZZ / make_corpus), str(corpus)], check=True, timeout=60)
    run = subprocess.run(
        [sys.executable, str(FUZZ / script), f"-max_total_time={seconds}", "-rss_limit_mb=2048",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=seconds + 100)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Done" in run.stderr
