"""Twin of the argument checks of codec-rs/src/lib.rs (``mod bindings``).

The Rust decoders' cores take checked values; lib.rs converts and checks what Python passes. The
Python decoders make the same checks with these helpers, in the same order and with the same
errors; the public names themselves are in ``__init__.py``, the twin of lib.rs's ``#[pymodule]``.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable

from relay.codec._py.envelope import DEVICE, SOURCE


def side_arg(side: object) -> int:
    """The ``side`` argument of both decoders."""
    try:
        value = operator.index(side)  # type: ignore[arg-type]
    except TypeError:
        value = -1
    if value not in (SOURCE, DEVICE):
        raise ValueError("side must be SOURCE (0) or DEVICE (1)")
    return value


def size_arg(value: int, name: str) -> int:
    """A size or count argument: an int in 0..2**63."""
    value = operator.index(value)
    if not 0 <= value < 1 << 63:
        raise ValueError(f"{name} must be >= 0")
    return value


def str_items(value: object, what: str) -> tuple[str, ...]:
    """An iterable of ``str`` that is not itself a ``str`` (``what`` names the argument in the error)."""
    message = f"{what} must be an iterable of str"
    if isinstance(value, str):
        raise TypeError(message)
    try:
        items: tuple[object, ...] = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(message) from None
    strings = tuple(s for s in items if isinstance(s, str))
    if len(strings) != len(items):
        raise TypeError(message)
    return strings


def services_arg(services: object, default: tuple[str, ...]) -> tuple[str, ...]:
    """The ``services`` argument of both decoders (the tunnel's service types): an iterable of
    ``str``; None gives the decoder's default. One check, so the two decoders cannot drift."""
    return default if services is None else str_items(services, "services")


def callback_arg(callback: object, name: str) -> Callable[..., object] | None:
    """A callback argument: a callable or None."""
    if callback is not None and not callable(callback):
        raise TypeError(f"{name} must be callable or None")
    return callback


class _Unraisable:
    """The argument of ``sys.unraisablehook``, as ``PyErr_WriteUnraisable`` builds it."""

    __slots__ = ("exc_type", "exc_value", "exc_traceback", "err_msg", "object")

    def __init__(self, exc: BaseException, obj: object) -> None:
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = None
        self.object = obj


def write_unraisable(exc: BaseException, callback: object) -> None:
    """Report a callback's exception as the Rust twin's ``PyErr::write_unraisable`` does."""
    sys.unraisablehook(_Unraisable(exc, callback))  # type: ignore[arg-type]
