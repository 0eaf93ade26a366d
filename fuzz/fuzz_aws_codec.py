"""Coverage-guided differential fuzzing of the AWS tunnel decoder (AwsDecoder) with atheris.

Guided by coverage of the Python twin and of relay.aws_messages (the reference); every input is
fed to both twins, split into reads at fuzzer-chosen points, with peer toggles and a reset; any
difference in their answers (bytes for the peer, bytes for the sender, close code and reason,
counters), any exception from the Rust module, or a crash, stops the run.

    python fuzz/make_aws_corpus.py fuzz/aws-corpus
    python fuzz/fuzz_aws_codec.py -max_total_time=60 fuzz/aws-corpus
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from relay import aws_messages  # noqa: F401  (instrumented: the protobuf rules)
    from relay.codec._py import aws as python_twin

from relay import codec

rust_twin = codec.rust_impl
if rust_twin is None:
    sys.exit("the Rust codec is not built: run `make setup` first")

SERVICES = [None, ("SSH", "HTTP")]


def run(decoder, chunks, toggles):  # type: ignore[no-untyped-def]
    out = []
    for i, chunk in enumerate(chunks):
        decoder.peer_connected = toggles[i % len(toggles)]
        out.append(decoder.feed(chunk))
        if i == len(chunks) // 2 and toggles[0]:
            decoder.reset()
            out.append("reset")
    out.append((decoder.closed, decoder.messages, decoder.bytes))
    return out


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    side = fdp.ConsumeIntInRange(0, 1)
    services = SERVICES[fdp.ConsumeIntInRange(0, 1)]
    max_payload = fdp.ConsumeIntInRange(0, 300)
    toggles = [bool(b & 1) for b in fdp.ConsumeBytes(3)] or [True]
    cuts = sorted(fdp.ConsumeIntInRange(0, 512) for _ in range(fdp.ConsumeIntInRange(0, 6)))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    chunks, last = [], 0
    for cut in cuts:
        cut = min(cut, len(stream))
        chunks.append(stream[last:cut])
        last = cut
    chunks.append(stream[last:])
    expected = run(python_twin.AwsDecoder(side, services, max_payload), chunks, toggles)
    got = run(rust_twin.AwsDecoder(side, services, max_payload), chunks, toggles)
    if got != expected:
        raise AssertionError(f"the twins disagree:\n python: {expected!r}\n rust:   {got!r}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
