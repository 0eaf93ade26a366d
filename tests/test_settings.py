"""Each setting is declared once (relay/config.py SERVE_OPTIONS, relay/agent/settings.py
AGENT_OPTIONS): the parsers, the environment variables and the docs' tables are made from
the declarations. No sockets: the parsers run in this process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from relay import cli, config
from relay.agent.settings import AGENT_OPTIONS, AgentSettings
from relay.agent.settings import PREFIX as AGENT_PREFIX
from relay.config import SERVE_OPTIONS, Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
TOKENS = "p1:tester:" + "t" * 32

# Settings fields no option fills, and why.
SERVE_BY_THE_COMMAND = {"api_keys", "bridge_secret", "mqtt_url", "managed_broker"}   # combined from several sources
SERVE_NOT_OPTIONS = {"max_body_bytes", "lease_ttl", "mqtt_reconnect_delay"}          # fixed, tests set them
AGENT_BY_THE_COMMAND = {"aws_services"}
AGENT_NOT_OPTIONS = {"ssh_timeout", "forward_port_map", "reconnect_initial", "reconnect_max", "mqtt_reconnect_delay"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in [name for name in __import__("os").environ if name.startswith("RELAY_")]:
        monkeypatch.delenv(name)


def serve_settings(tmp_path, *argv: str) -> Settings:
    args = cli.build_parser().parse_args(["serve", "--db", str(tmp_path / "relay.db"), "--mqtt-url", "none", *argv])
    return cli.settings_from_args(args)[0]


def fields(settings_type: type) -> set[str]:
    return {field.name for field in dataclasses.fields(settings_type)}


@pytest.mark.parametrize("options, settings_type, by_command, not_options", [
    (SERVE_OPTIONS, Settings, SERVE_BY_THE_COMMAND, SERVE_NOT_OPTIONS),
    (AGENT_OPTIONS, AgentSettings, AGENT_BY_THE_COMMAND, AGENT_NOT_OPTIONS),
])
def test_every_setting_has_one_option(options, settings_type, by_command, not_options):
    targets = [option.target for option in options if option.target is not None]
    assert len(targets) == len(set(targets)), "two options fill one setting"
    assert len({option.flag for option in options}) == len(options)
    assert set(targets) | by_command | not_options == fields(settings_type)
    assert not set(targets) & (by_command | not_options)


def test_serve_without_options_gives_the_settings_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("RELAY_API_TOKENS", TOKENS)
    settings = serve_settings(tmp_path)
    defaults = Settings()
    for name in fields(Settings) - {"db", "api_keys"}:
        assert getattr(settings, name) == getattr(defaults, name), name


@pytest.mark.parametrize("variable, value, field, expected", [
    ("RELAY_PORT", "9000", "port", 9000),
    ("RELAY_AUDIT_RATE", "2.5", "audit_rate", 2.5),
    ("RELAY_HIDE_DEVICE_TOKEN", "yes", "expose_device_token", False),
    ("RELAY_RECORD_PROJECTS", "p1, p2,p1", "record_projects", ("p1", "p2")),
    ("RELAY_ALLOWED_ORIGINS", "https://Console.example:443", "allowed_origins", ("https://console.example",)),
    ("RELAY_MQTT_PASSWORD", "secret", "mqtt_password", "secret"),
    ("RELAY_SOCKET_BUFFER", "-5", "socket_buffer", 0),
    ("RELAY_PORT", "", "port", 8080),    # an empty number is no number: the default
])
def test_a_variable_gives_its_option(monkeypatch, tmp_path, variable, value, field, expected):
    monkeypatch.setenv("RELAY_API_TOKENS", TOKENS)
    monkeypatch.setenv(variable, value)
    assert getattr(serve_settings(tmp_path), field) == expected


def test_the_command_line_wins_over_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("RELAY_API_TOKENS", TOKENS)
    monkeypatch.setenv("RELAY_MAX_MESSAGE_SIZE", "5000")
    assert serve_settings(tmp_path, "--max-message-size", "6000").max_message_size == 6000


@pytest.mark.parametrize("command, variable, value, message", [
    (["serve"], "RELAY_PORT", "70000", "argument --port: port 70000 is outside 0-65535 (from RELAY_PORT)"),
    (["serve"], "RELAY_SWEEP_INTERVAL", "soon", "argument --sweep-interval: 'soon' is not a number (from RELAY_SWEEP_INTERVAL)"),
    (["agent"], "RELAY_AGENT_HEARTBEAT", "0", "argument --heartbeat: '0' must be above zero (from RELAY_AGENT_HEARTBEAT)"),
    # float() reads these, and `nan <= 0` is false: a timer of NaN or infinity seconds is refused too
    (["serve"], "RELAY_RECONCILE_INTERVAL", "nan", "argument --reconcile-interval: 'nan' is not a finite number"),
    (["agent"], "RELAY_AGENT_HEARTBEAT", "inf", "argument --heartbeat: 'inf' is not a finite number"),
])
def test_a_bad_variable_is_checked_as_its_option_and_named(monkeypatch, capsys, command, variable, value, message):
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("RELAY_AGENT_DEVICE_ID", "dev-1")
    with pytest.raises(SystemExit) as stop:
        cli.build_parser().parse_args(command)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_option_is_not_blamed_on_a_variable(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--port", "70000"])
    err = capsys.readouterr().err
    assert "argument --port: port 70000 is outside 0-65535" in err and "(from" not in err


def test_a_secret_variable_is_not_shown_by_help(monkeypatch, capsys):
    monkeypatch.setenv("RELAY_MQTT_PASSWORD", "do-not-show-me")
    monkeypatch.setenv("RELAY_AGENT_MQTT_PASSWORD", "do-not-show-me")
    for command in ("serve", "agent"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([command, "--help"])
        assert "do-not-show-me" not in capsys.readouterr().out


def test_agent_variables_fill_its_settings(monkeypatch):
    monkeypatch.setenv("RELAY_AGENT_DEVICE_ID", "dev-2")
    monkeypatch.setenv("RELAY_AGENT_SSH_PORT", "2222")
    monkeypatch.setenv("RELAY_AGENT_FORWARD_PORTS", "22,80,22")
    monkeypatch.setenv("RELAY_AGENT_TLS_INSECURE", "1")
    monkeypatch.setenv("RELAY_AGENT_MQTT_PASSWORD", "pw")
    settings = cli.agent_settings(cli.build_parser().parse_args(["agent"]))
    assert (settings.device_id, settings.ssh_port, settings.forward_ports, settings.tls_insecure) == \
        ("dev-2", 2222, (22, 80), True)
    assert (settings.mqtt_username, settings.mqtt_password) == ("dev-2", "pw")   # with a password: the device id


@pytest.mark.parametrize("doc, options, defaults, prefix", [
    ("operations.md", SERVE_OPTIONS, Settings(), "RELAY_"),
    ("device.md", AGENT_OPTIONS, AgentSettings(device_id=""), AGENT_PREFIX),
])
def test_the_docs_list_every_setting(doc, options, defaults, prefix):
    table = config.options_table(options, defaults, prefix)
    text = (DOCS / doc).read_text(encoding="utf-8")
    assert table in text, f"docs/{doc} should hold this table, made from the declarations:\n{table}"


def test_the_client_connection_options_come_from_their_declaration(monkeypatch):
    """`relay tunnel`, `ssh`, `exec`, `forward`: --url, --project, --instance-id, --ca-file are
    declared once (config.CONNECTION_OPTIONS); each help names the variable it is read from."""
    parser = cli.build_parser()
    defaults = parser.parse_args(["tunnel", "list"])
    assert (defaults.url, defaults.project, defaults.instance_id, defaults.ca_file) == (
        "http://127.0.0.1:8080", "default", None, None)
    for option in config.CONNECTION_OPTIONS:
        assert f"({option.variable('RELAY_')}" in (option.help or ""), option.flag
    monkeypatch.setenv("RELAY_URL", "https://relay.example:8443")
    monkeypatch.setenv("RELAY_PROJECT", "p9")
    monkeypatch.setenv("RELAY_INSTANCE_ID", "i-1")
    monkeypatch.setenv("RELAY_CA_FILE", "/etc/ca.pem")
    from_env = cli.build_parser().parse_args(["exec", "dev-1", "uname", "--user", "u"])
    assert (from_env.url, from_env.project, from_env.instance_id, from_env.ca_file) == (
        "https://relay.example:8443", "p9", "i-1", "/etc/ca.pem")
    given = cli.build_parser().parse_args(["tunnel", "list", "--url", "http://127.0.0.1:9", "--project", "p2"])
    assert (given.url, given.project, given.instance_id) == ("http://127.0.0.1:9", "p2", "i-1")
