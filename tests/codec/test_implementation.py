"""The facade must pick the Rust codec whenever it is built (unless RELAY_CODEC=python)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import relay.codec


def _rust_importable() -> bool:
    try:
        importlib.import_module("relay._codec_rs")
    except ImportError:
        return False
    return True


def test_facade_picks_rust_when_built() -> None:
    forced = os.environ.get("RELAY_CODEC", "").strip().lower()
    if forced == "python":
        assert relay.codec.IMPLEMENTATION == "python"
        assert relay.codec.Decoder is relay.codec.python_impl.Decoder
        assert relay.codec.AwsDecoder is relay.codec.python_impl.AwsDecoder
        return
    if _rust_importable():
        assert relay.codec.rust_impl is not None
        assert relay.codec.IMPLEMENTATION == "rust", "relay._codec_rs is importable but the facade did not pick it"
        assert relay.codec.Decoder is relay.codec.rust_impl.Decoder
        assert relay.codec.encode_text is relay.codec.rust_impl.encode_text
        assert relay.codec.AwsDecoder is relay.codec.rust_impl.AwsDecoder
        assert relay.codec.encode_binary is relay.codec.rust_impl.encode_binary
    else:
        assert relay.codec.rust_impl is None
        assert relay.codec.IMPLEMENTATION == "python"


def test_rust_expected() -> None:
    if os.environ.get("RELAY_EXPECT_RUST") == "1":
        assert _rust_importable(), "RELAY_EXPECT_RUST=1 but relay._codec_rs is not built (maturin develop --release)"
        assert relay.codec.rust_impl is not None


def test_facade_exports() -> None:
    assert set(relay.codec.__all__) == {"SOURCE", "DEVICE", "IMPLEMENTATION", "Decoder", "AwsDecoder", "encode_text",
                                        "encode_binary", "encode_close", "encode_ping", "python_impl", "rust_impl",
                                        "EndCodec", "AwsEndCodec"}
    for name in relay.codec.__all__:
        assert hasattr(relay.codec, name)
    assert relay.codec.python_impl.IMPLEMENTATION == "python"


def _facade_in_subprocess(value: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RELAY_CODEC=value)
    code = "import relay.codec as c; print(c.IMPLEMENTATION)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_env_selection() -> None:
    assert _facade_in_subprocess("python").stdout.strip() == "python"
    rust = _facade_in_subprocess("rust")
    if _rust_importable():
        assert rust.stdout.strip() == "rust"
    else:
        assert rust.returncode != 0 and "not built" in rust.stderr
    bad = _facade_in_subprocess("java")
    assert bad.returncode != 0 and "RELAY_CODEC" in bad.stderr
