"""The command lines of our AWS-protocol ends: `relay localproxy`'s flags and usage errors,
the agent's --aws-services and --aws-endpoint, `relay forward --protocol aws`'s options."""

from __future__ import annotations

import pytest

from relay.agent.aws import destinations
from relay.agent.settings import AgentSettings
from relay.cli import _aws_services, build_parser, main
from relay.client.aws_tunnel import endpoint_of, highest_version


@pytest.fixture(autouse=True)
def no_tokens(monkeypatch):
    for name in ("AWSIOT_TUNNEL_ACCESS_TOKEN", "AWSIOT_TUNNEL_ENDPOINT", "AWSIOT_TUNNEL_REGION", "RELAY_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("argv, message", [
    ([], "give -s/--source-listen-port (source mode) or -d/--destination-app"),
    (["-s", "5555", "-d", "22"], "give -s/--source-listen-port (source mode) or -d/--destination-app"),
    (["-s", "5555"], "no access token: set AWSIOT_TUNNEL_ACCESS_TOKEN"),
    (["-s", "5555", "-m", "dst"], "--mode dst does not go with -s"),
    (["-s", "5555", "--client-token", "short"], "--client-token: 32-128 of"),
    (["-s", "5555", "-t", "tok", "-e", "http://x", "-r", "eu-west-1"], "exclude each other"),
    (["-s", "SSH=5555,SSH=6666", "-t", "tok"], "-s: service SSH is given twice"),
    (["-d", "SSH=99999", "-t", "tok"], "-d: SSH=99999: port 99999 is outside 0-65535"),
])
def test_localproxy_usage_errors_are_one_line_and_status_2(capsys, argv, message):
    assert main(["localproxy", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relay: ") and message in err and err.count("\n") == 1
    assert "tok" not in err.replace("token", "")


def test_localproxy_flags_are_localproxy_s():
    args = build_parser().parse_args(["localproxy", "-s", "SSH1=5555", "-e", "https://relay.example.com", "-b", "::1",
                                      "-y", "v2", "-k", "-v", "5", "-c", "/etc/ssl/certs"])
    assert (args.source_listen_port, args.proxy_endpoint, args.local_bind_address, args.destination_client_type,
            args.no_ssl_host_verify, args.verbose, args.capath) == (
        "SSH1=5555", "https://relay.example.com", "::1", "V2", True, 5, "/etc/ssl/certs")
    assert highest_version(args.destination_client_type) == 2 and highest_version(None) == 3
    assert endpoint_of(args) == "https://relay.example.com"


def test_the_endpoint_comes_from_the_flags_then_the_environment(monkeypatch):
    args = build_parser().parse_args(["localproxy", "-s", "5555"])
    assert endpoint_of(args) == "http://127.0.0.1:8080"
    monkeypatch.setenv("RELAY_URL", "http://relay:8080")
    assert endpoint_of(args) == "http://relay:8080"
    monkeypatch.setenv("AWSIOT_TUNNEL_REGION", "eu-west-1")
    assert endpoint_of(args) == "wss://data.tunneling.iot.eu-west-1.amazonaws.com"
    monkeypatch.setenv("AWSIOT_TUNNEL_ENDPOINT", "https://other")
    assert endpoint_of(args) == "https://other"


def test_the_agent_maps_services_to_addresses():
    assert destinations(AgentSettings(device_id="d", ssh_port=2222)) == {"SSH": ("127.0.0.1", 2222)}
    services = _aws_services("SSH=22, HTTP=10.0.0.1:80")
    assert services == (("SSH", "", 22), ("HTTP", "10.0.0.1", 80))
    assert destinations(AgentSettings(device_id="d", ssh_host="192.0.2.7", aws_services=services)) == {
        "SSH": ("192.0.2.7", 22), "HTTP": ("10.0.0.1", 80)}
    assert _aws_services("") == ()
    args = build_parser().parse_args(["agent", "--device-id", "d", "--aws-endpoint", "https://relay.example.com",
                                      "--aws-services", "SSH=22"])
    assert (args.aws_endpoint, args.aws_services) == ("https://relay.example.com", "SSH=22")


@pytest.mark.parametrize("text", ["22", "SSH=x", "SSH=22,SSH=23"])
def test_bad_agent_service_lists_are_usage_errors(text):
    from relay.errors import ConfigError

    with pytest.raises(ConfigError, match="--aws-services"):
        _aws_services(text)


def test_relay_forward_takes_the_protocol_and_service():
    args = build_parser().parse_args(["forward", "dev", "--protocol", "aws", "--service", "VNC"])
    assert (args.protocol, args.service) == ("aws", "VNC")
    args = build_parser().parse_args(["forward", "dev"])
    assert (args.protocol, args.service) == ("huawei", "SSH")
