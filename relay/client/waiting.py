"""What a command that waits for a device tells its user (sans-I/O): what it waits for, and why
it may not come, read from the tunnel as the REST API shows it (docs/cli.md, "Waiting").

A device hears of a tunnel over MQTT: the relay hands the notify to its broker, the broker to the
device's agent, which then connects the device's end. `notify_status` says how far the first
step got (docs/api.md); the rest only the device's end connecting can show."""

from __future__ import annotations

from typing import Any

PROGRESS_EVERY = 10.0   # seconds between "still waiting" lines


def why_waiting(device_id: str, tunnel: dict[str, Any] | None) -> str:
    """The likeliest reason the device's end has not connected, and what to check."""
    agent = f"is `relay agent --device-id {device_id}` (or `relay demo-device {device_id}`) running"
    if tunnel is None:
        return f"{agent}, and connected to the relay's MQTT broker?"
    if tunnel.get("status") not in (None, "OPEN"):
        return f"the tunnel is {str(tunnel.get('status')).lower()}"
    notify = tunnel.get("notify_status")
    if notify == "PENDING":
        return ("the relay has not yet handed the tunnel's notify to its MQTT broker: is the broker up? "
                "(the relay's log says)")
    if notify == "DELIVERED":
        return (f"the relay handed the notify to its MQTT broker, but {device_id} has not connected its end: "
                f"{agent} and connected to that broker? (it gets the notify again when it comes online)")
    return (f"the relay has no MQTT broker to tell {device_id} of the tunnel: give the device its token and "
            f"address yourself (relay tunnel show {tunnel.get('tunnel_id', 'ID')}), or run the relay with a broker")


def still_waiting(device_id: str, waited: float, limit: float, tunnel: dict[str, Any] | None) -> str:
    return f"still waiting for {device_id} ({waited:.0f} s of {limit:g} s): {why_waiting(device_id, tunnel)}"


def gave_up(device_id: str, limit: float, tunnel: dict[str, Any] | None) -> str:
    return f"the device did not connect within {limit:g} s: {why_waiting(device_id, tunnel)}"
