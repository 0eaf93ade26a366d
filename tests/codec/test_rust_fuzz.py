"""A bounded run of the Rust-only libFuzzer targets (codec-rs/fuzz/, built and run by
scripts/fuzz-rust.sh): the Huawei Decoder, the AwsDecoder and the envelope layer, guided by the
Rust code's own coverage, with no Python in the loop: no panic, no broken invariant (same output
whatever the read boundaries, nothing after a close, well-formed frames within the limits).
RELAY_RUST_FUZZ_SECONDS (default 15) is the time per target. Longer runs:
`scripts/fuzz-rust.sh 300`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fuzz-rust.sh"
SECONDS = int(os.environ.get("RELAY_RUST_FUZZ_SECONDS", "15"))
TARGETS = ("huawei_decoder", "aws_decoder", "envelope")
# a fresh build (libFuzzer's C++ sources, the codec, the targets) takes ~70 s on 2 cores
BUILD = 400


@pytest.mark.skipif(shutil.which("cargo") is None, reason="cargo is not on PATH: the Rust fuzz targets cannot be built")
@pytest.mark.skipif(os.environ.get("RELAY_CODEC", "").strip().lower() == "python",
                    reason="Rust-only fuzzing does not depend on the codec choice: it already ran in the Rust pass")
@pytest.mark.timeout(BUILD + len(TARGETS) * (SECONDS + 30))
def test_fuzz_the_rust_codec_alone_for_a_bounded_time() -> None:
    run = subprocess.run(["bash", str(SCRIPT), str(SECONDS)], capture_output=True, text=True,
                         timeout=BUILD + len(TARGETS) * (SECONDS + 20))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    # the script prints "== TARGET: ..." then libFuzzer's closing "Done N runs in S second(s)"
    parts = re.split(r"^== (\w+): ", run.stdout, flags=re.M)
    runs = {name: re.search(r"^Done (\d+) runs in \d+ second", body, re.M)
            for name, body in zip(parts[1::2], parts[2::2])}
    assert sorted(runs) == sorted(TARGETS), run.stdout
    assert all(m and int(m[1]) > 0 for m in runs.values()), run.stdout
