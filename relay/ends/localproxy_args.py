"""The service mappings of AWS's localproxy, as its command line writes them (`-d`, `-s`), for
`relay localproxy`, the agent's --aws-services and `relay forward --protocol aws`: text in,
mappings out, ValueError with what is wrong; and the reading of `HOST:PORT` that `relay forward
--listen` shares (`split_endpoint`). Standard library only."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

_Value = TypeVar("_Value")


def _split_port(text: str, what: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{what}: port {port} is outside 0-65535")
    return port


def split_endpoint(text: str, default_host: str) -> tuple[str, str]:
    """`PORT`, `HOST:PORT` or `[IPv6]:PORT` -> (host, port text): the one reading of an
    address on the command line (here and `relay forward --listen`); each command checks the
    port in its own words."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    return host.strip("[]") or default_host, port


def parse_endpoint(text: str, default_host: str, what: str | None = None) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[IPv6]:PORT` (`what` names it in errors)."""
    host, port = split_endpoint(text.strip(), default_host)
    number = _split_port(port, what or text)
    if number == 0:
        raise ValueError(f"{what or text}: port 0 cannot be reached")
    return host, number


def _services(text: str, value: Callable[[str, str], _Value], *, twice: str, none: str, bare: str) -> dict[str, _Value]:
    """`SERVICE=VALUE,...`, or one bare VALUE for a tunnel of a single service (the key is
    then ""): each service once. `value(text, part)` reads a value (`part` names it in errors);
    the rest are the words of the errors."""
    mapping: dict[str, _Value] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        service, sep, given = part.partition("=")
        if not sep:
            service, given = "", part
        service = service.strip()
        if service in mapping:
            raise ValueError(f"service {service or '(unnamed)'} is {twice}")
        mapping[service] = value(given, part)
    if not mapping:
        raise ValueError(none)
    if "" in mapping and len(mapping) > 1:
        raise ValueError(f"{bare} (no SERVICE=) is only allowed for a single service")
    return mapping


def parse_destinations(text: str, default_host: str = "127.0.0.1") -> dict[str, tuple[str, int]]:
    """localproxy's `-d`: `SSH=22,HTTP=10.0.0.1:80`, or one bare endpoint (`22`, `host:22`)
    for a tunnel of a single service, whatever its id (the key is then "")."""
    return _services(text, lambda endpoint, part: parse_endpoint(endpoint, default_host, part),
                     twice="mapped twice", none="no service mapping given", bare="a bare endpoint")


def parse_listeners(text: str) -> dict[str, int]:
    """localproxy's `-s`: `SSH1=5555,SSH2=6666`, or one bare port (`5555`; 0 picks a free one)."""
    return _services(text, lambda port, part: _split_port(port.strip(), part),
                     twice="given twice", none="no listening port given", bare="a bare port")
