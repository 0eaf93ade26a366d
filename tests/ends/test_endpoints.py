"""`HOST:PORT` as the commands read it: `relay forward --listen` (relay/client/forward.py
`parse_listen`) and localproxy's `-d`/`-s` mappings (relay/ends/localproxy_args.py). One split
of the text (`split_endpoint`); each command keeps what it accepts and its error texts. And
what `relay forward` (either protocol) says when it cannot listen there."""

from __future__ import annotations

import pytest

from relay.client.forward import parse_listen
from relay.ends import localproxy_args
from relay.errors import ConfigError


@pytest.mark.parametrize("text, expected", [
    ("2222", ("127.0.0.1", 2222)),
    ("0", ("127.0.0.1", 0)),                      # --listen: 0 picks a free port
    ("0.0.0.0:2222", ("0.0.0.0", 2222)),
    ("[::1]:2222", ("::1", 2222)),
    ("::1:2222", ("::1", 2222)),
    (":2222", ("127.0.0.1", 2222)),
    ("[]:2222", ("127.0.0.1", 2222)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_relay_forward_listen_accepts(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text, message", [
    ("x", "--listen 'x': expected HOST:PORT"),
    ("host:", "--listen 'host:': expected HOST:PORT"),
    ("host:ssh", "--listen 'host:ssh': expected HOST:PORT"),
    ("65536", "--listen '65536': port outside 0-65535"),
    ("host:-1", "--listen 'host:-1': port outside 0-65535"),
])
def test_relay_forward_listen_refuses_with_its_own_words(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_listen(text)
    assert str(caught.value) == message


@pytest.mark.parametrize("text, expected", [
    ("22", ("192.0.2.1", 22)),
    (" 22 ", ("192.0.2.1", 22)),
    ("10.0.0.1:80", ("10.0.0.1", 80)),
    ("[::1]:8080", ("::1", 8080)),
    (":22", ("192.0.2.1", 22)),
])
def test_localproxy_endpoints_accept(text, expected):
    assert localproxy_args.parse_endpoint(text, "192.0.2.1") == expected


@pytest.mark.parametrize("text, message", [
    ("0", "0: port 0 cannot be reached"),
    ("host:x", "host:x: 'x' is not a port number"),
    ("70000", "70000: port 70000 is outside 0-65535"),
])
def test_localproxy_endpoints_refuse_with_their_own_words(text, message):
    with pytest.raises(ValueError) as caught:
        localproxy_args.parse_endpoint(text, "127.0.0.1")
    assert str(caught.value) == message


@pytest.mark.parametrize("parse, text, message", [
    (localproxy_args.parse_destinations, "", "no service mapping given"),
    (localproxy_args.parse_destinations, "SSH=22,SSH=23", "service SSH is mapped twice"),
    (localproxy_args.parse_destinations, "22,HTTP=80", "a bare endpoint (no SERVICE=) is only allowed for a single service"),
    (localproxy_args.parse_destinations, "SSH=x", "SSH=x: 'x' is not a port number"),
    (localproxy_args.parse_listeners, " , ", "no listening port given"),
    (localproxy_args.parse_listeners, "5555,5556", "service (unnamed) is given twice"),
    (localproxy_args.parse_listeners, "5555,SSH=6666", "a bare port (no SERVICE=) is only allowed for a single service"),
    (localproxy_args.parse_listeners, "SSH=-1", "SSH=-1: port -1 is outside 0-65535"),
])
def test_localproxy_mappings_refuse_with_their_own_words(parse, text, message):
    with pytest.raises(ValueError) as caught:
        parse(text)
    assert str(caught.value) == message


def test_what_relay_forward_of_either_protocol_says_when_it_cannot_listen_or_the_relay_fails_it():
    from relay.client.api import ClientError
    from relay.client.forward import forward_failed

    said: list[str] = []
    assert forward_failed(said.append, ("::1", 2222), OSError(98, "Address already in use")) == 255
    assert forward_failed(said.append, ("127.0.0.1", 0), ClientError("the tunnel is closed or expired (410)")) == 255
    assert said == ["relay: cannot listen on [::1]:2222: Address already in use",
                    "relay: the tunnel is closed or expired (410)"]
