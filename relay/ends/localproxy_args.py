"""The service mappings of AWS's localproxy, as its command line writes them (`-d`, `-s`), for
`relay localproxy`, the agent's --aws-services and `relay forward --protocol aws`: text in,
mappings out, ValueError with what is wrong. Standard library only."""

from __future__ import annotations


def _split_port(text: str, what: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{what}: port {port} is outside 0-65535")
    return port


def parse_endpoint(text: str, default_host: str, what: str | None = None) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[IPv6]:PORT` (`what` names it in errors)."""
    what = what or text
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = default_host, text.strip()
    host = host.strip("[]") or default_host
    number = _split_port(port, what)
    if number == 0:
        raise ValueError(f"{what}: port 0 cannot be reached")
    return host, number


def parse_destinations(text: str, default_host: str = "127.0.0.1") -> dict[str, tuple[str, int]]:
    """localproxy's `-d`: `SSH=22,HTTP=10.0.0.1:80`, or one bare endpoint (`22`, `host:22`)
    for a tunnel of a single service, whatever its id (the key is then "")."""
    mapping: dict[str, tuple[str, int]] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        service, sep, endpoint = part.partition("=")
        if not sep:
            service, endpoint = "", part
        service = service.strip()
        if service in mapping:
            raise ValueError(f"service {service or '(unnamed)'} is mapped twice")
        mapping[service] = parse_endpoint(endpoint, default_host, part)
    if not mapping:
        raise ValueError("no service mapping given")
    if "" in mapping and len(mapping) > 1:
        raise ValueError("a bare endpoint (no SERVICE=) is only allowed for a single service")
    return mapping


def parse_listeners(text: str) -> dict[str, int]:
    """localproxy's `-s`: `SSH1=5555,SSH2=6666`, or one bare port (`5555`; 0 picks a free one)."""
    mapping: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        service, sep, port = part.partition("=")
        if not sep:
            service, port = "", part
        service = service.strip()
        if service in mapping:
            raise ValueError(f"service {service or '(unnamed)'} is given twice")
        mapping[service] = _split_port(port.strip(), part)
    if not mapping:
        raise ValueError("no listening port given")
    if "" in mapping and len(mapping) > 1:
        raise ValueError("a bare port (no SERVICE=) is only allowed for a single service")
    return mapping
