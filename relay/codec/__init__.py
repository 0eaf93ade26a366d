"""WebSocket + tunnel-envelope codec of the relay's hot path (see docs/codec.md).

Two twins with the same API and the same answers: the Rust extension ``relay._codec_rs`` (used when
built; crate codec-rs/) and the pure-Python reference, the package ``relay.codec._py``, whose
modules mirror the crate's files one to one (``frame.rs`` -> ``_py/frame.py``, ...). This facade is
the one place that chooses: ``RELAY_CODEC=python`` forces the Python twin, ``RELAY_CODEC=rust``
forces the Rust one (ImportError if it is not built); tests/codec/test_implementation.py fails
under ``RELAY_EXPECT_RUST=1`` when the Rust one is not in use.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

from relay.codec import _py as python_impl

__all__ = [
    "SOURCE",
    "DEVICE",
    "IMPLEMENTATION",
    "Decoder",
    "AwsDecoder",
    "encode_text",
    "encode_binary",
    "encode_close",
    "encode_ping",
    "EndCodec",
    "AwsEndCodec",
    "python_impl",
    "rust_impl",
]


def _load_rust() -> ModuleType | None:
    try:
        return importlib.import_module("relay._codec_rs")
    except ModuleNotFoundError as exc:
        if exc.name != "relay._codec_rs":
            raise
        return None


rust_impl: ModuleType | None = _load_rust()

_choice = os.environ.get("RELAY_CODEC", "").strip().lower()
_impl: ModuleType
if _choice == "python":
    _impl = python_impl
elif _choice == "rust":
    if rust_impl is None:
        raise ImportError(
            "RELAY_CODEC=rust but the Rust codec relay._codec_rs is not built: "
            "run `maturin develop --release` (or `pip install -e .`) first"
        )
    _impl = rust_impl
elif _choice in ("", "auto"):
    _impl = rust_impl if rust_impl is not None else python_impl
else:
    raise ImportError(f"RELAY_CODEC must be 'rust', 'python' or unset, not {_choice!r}")

IMPLEMENTATION: str = _impl.IMPLEMENTATION
SOURCE: int = _impl.SOURCE
DEVICE: int = _impl.DEVICE

if TYPE_CHECKING:  # both twins share the Python twin's signatures
    from relay.codec._py import (
        AwsDecoder, AwsEndCodec, Decoder, EndCodec, encode_binary, encode_close, encode_ping, encode_text,
    )
else:
    Decoder = _impl.Decoder
    AwsDecoder = _impl.AwsDecoder
    encode_text = _impl.encode_text
    encode_binary = _impl.encode_binary
    encode_close = _impl.encode_close
    encode_ping = _impl.encode_ping
    EndCodec = _impl.EndCodec          # the ends' codec (docs/codec.md, "The ends' codec")
    AwsEndCodec = _impl.AwsEndCodec
