"""A bounded run of the coverage-guided differential fuzzer (fuzz/fuzz_codec.py): no crash,
no exception out of the Rust module, no disagreement between the twins. Longer runs:
`python fuzz/fuzz_codec.py -max_total_time=600 CORPUS_DIR`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay import codec

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
SECONDS = int(os.environ.get("RELAY_FUZZ_SECONDS", "20"))


@pytest.mark.skipif(codec.rust_impl is None, reason="the Rust codec is not built")
@pytest.mark.timeout(SECONDS + 120)
def test_fuzz_the_twins_for_a_bounded_time(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(FUZZ / "make_corpus.py"), str(corpus)], check=True, timeout=60)
    run = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_codec.py"), f"-max_total_time={SECONDS}", "-rss_limit_mb=2048",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=SECONDS + 100)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Done" in run.stderr
