"""AWS's protocol constants live in relay/aws_messages.py, and the relay's side uses those
(its subprotocols and payload limit, the endpoint's client-token check)."""

from __future__ import annotations

import pytest

from relay import aws_messages, protocol_aws


def test_subprotocols_and_versions():
    assert aws_messages.subprotocols(3) == ["aws.iot.securetunneling-3.0", "aws.iot.securetunneling-2.0",
                                            "aws.iot.securetunneling-1.0"]
    assert aws_messages.subprotocols(1) == ["aws.iot.securetunneling-1.0"]
    assert {aws_messages.VERSION_OF[name] for name in aws_messages.subprotocols()} == {1, 2, 3}
    assert protocol_aws.SUBPROTOCOLS == aws_messages.VERSION_OF


def test_the_payload_limit():
    assert aws_messages.MAX_PAYLOAD == protocol_aws.MAX_PAYLOAD == 64512


@pytest.mark.parametrize("token, valid", [
    ("a" * 32, True), ("A-9" * 40 + "abcdefgh", True), ("a" * 31, False), ("a" * 129, False),
    ("a" * 31 + "_", False), ("a" * 32 + "\n", False), ("", False),
])
def test_client_tokens(token, valid):
    assert aws_messages.valid_client_token(token) is valid


def test_a_new_client_token_is_valid_and_new():
    first, second = aws_messages.new_client_token(), aws_messages.new_client_token()
    assert aws_messages.valid_client_token(first) and first != second
