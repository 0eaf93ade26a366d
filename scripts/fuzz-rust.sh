#!/usr/bin/env bash
# Coverage-guided fuzzing of the Rust codec alone (no Python): builds the libFuzzer targets of
# codec-rs/fuzz/ and runs each for a bounded time on a fresh corpus seeded by the target itself.
#
#   scripts/fuzz-rust.sh [SECONDS_PER_TARGET]      (default 15)
#   FUZZ_TARGETS="aws_decoder" scripts/fuzz-rust.sh 300
#
# How it builds, on the stable toolchain: codec-rs/fuzz/ is a cargo-fuzz project, but this script
# does not need cargo-fuzz (installing it costs ~1 minute of a CI budget of ~2). It runs the
# `cargo build` that `cargo fuzz build --sanitizer none` runs (cargo-fuzz 0.13): the same RUSTFLAGS
# (SanitizerCoverage instrumentation for libFuzzer, `--cfg fuzzing`, debug assertions), release
# mode, `--target <host>` so the flags skip build scripts, and the same target/ directory. Every
# flag is a stable `-C`/`--cfg` one: no -Z flag, no nightly, no RUSTC_BOOTSTRAP. Without a
# sanitizer, memory errors in `unsafe` code are not detected, but the codec's fuzzed paths are
# safe Rust, where panics, failed assertions and overflows are the bugs to catch.
# With cargo-fuzz installed, the same targets run with
#   cd codec-rs/fuzz && cargo fuzz run --sanitizer none huawei_decoder
# (seed corpus/huawei_decoder with `CODEC_FUZZ_SEEDS=corpus/huawei_decoder` in the environment).
#
# Exits non-zero on the first crash, panic, timeout or out-of-memory, naming the artifact
# (the input that failed); reproduce it with `target/<host>/release/<target> <artifact>`.
set -euo pipefail

seconds="${1:-15}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2; }
fuzz_dir="$(cd "$(dirname "$0")/../codec-rs/fuzz" && pwd)"
read -r -a targets <<<"${FUZZ_TARGETS:-huawei_decoder aws_decoder envelope}"
host="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="${CARGO_TARGET_DIR:-$fuzz_dir/target}/$host/release"

export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 -Cdebug-assertions \
 -Ccodegen-units=1"
cargo build --manifest-path "$fuzz_dir/Cargo.toml" --locked --release --target "$host" \
    --config 'profile.release.debug="line-tables-only"' --bins
unset RUSTFLAGS

work="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-rust.XXXXXX")"
trap 'rm -rf "$work"' EXIT
artifacts="$fuzz_dir/artifacts"
status=0
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    mkdir -p "$corpus" "$artifacts/$target"
    echo "== $target: ${seconds}s"
    # the target writes its seeds into the corpus directory before libFuzzer reads it;
    # -max_total_time stops it, -timeout flags a hang, -rss_limit_mb a runaway allocation
    if ! CODEC_FUZZ_SEEDS="$corpus" "$bin_dir/$target" \
            -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
            -artifact_prefix="$artifacts/$target/" "$corpus" 2>"$work/$target.log"; then
        tail -n 60 "$work/$target.log" >&2
        found="$(sed -n 's/^.*Test unit written to \(.*\)$/\1/p' "$work/$target.log" | tail -n 1)"
        echo "FAIL $target: artifact ${found:-not written}" >&2
        # the artifact dies with a CI clone: print it (hex) so the log keeps it
        [[ -n "$found" && -f "$found" ]] && echo "input (hex): $(head -c 4096 "$found" | od -An -v -tx1 | tr -d ' \n')" >&2
        status=1
        break
    fi
    grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|Done [0-9]+ runs)' "$work/$target.log" || true
done
exit "$status"
