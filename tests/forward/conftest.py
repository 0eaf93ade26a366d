"""Fixtures of tests/client (relay in process, mosquitto, sshd, the agent) for forwarding."""

from __future__ import annotations

from tests.client.conftest import fleet  # noqa: F401 (fixtures)
from tests.device.conftest import agent_factory, mosquitto, sshd  # noqa: F401 (fixtures)
