"""Every codec test runs on both twins: the Python reference and the Rust extension (when built)."""

from __future__ import annotations

from types import ModuleType

import pytest

import relay.codec


@pytest.fixture(params=["python", "rust"])
def codec(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "rust":
        if relay.codec.rust_impl is None:
            pytest.skip("relay._codec_rs is not built (maturin develop --release)")
        return relay.codec.rust_impl
    return relay.codec.python_impl
