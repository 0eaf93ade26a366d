"""The device agent (`relay agent`): runs on a device, serves the relay's tunnels with the
device's own SSH server. See docs/device.md.

- `session.py`: what to answer to which message, and when to reconnect (sans-I/O);
- `mqtt.py`: presence and tunnel notifies over MQTT (gmqtt);
- `tunnel.py`: the WebSocket client to the relay (aiohttp), reconnection;
- `ssh.py`: the login and the PTY shell (asyncssh);
- `runner.py`: ties them together: one tunnel at a time, as Huawei's device SDK.
"""

from relay.agent.settings import AgentSettings

__all__ = ["AgentSettings"]
