"""Device presence: which devices are online, as their agents announce it over MQTT.

Sans-I/O: the notifier feeds it the (retained) messages of the presence topics, the service
asks it before creating a tunnel. Huawei's platform terminates the devices' MQTT connections
itself and so always knows who is online; this relay talks to devices through an ordinary
broker, so devices tell: the agent publishes a retained `online` on
`$oc/devices/{device_id}/sys/presence` when it connects, and its last will publishes a
retained `offline` there when its connection is lost (docs/device.md).

Modes (`--presence-check`):
- `strict`: a tunnel only for a device whose last word was `online` (Huawei's rule; for
  fleets where every device runs an agent that announces itself);
- `known` (the default): refuse only a device whose last word was `offline`; a device never
  heard of is allowed, because devices that do not announce presence (Huawei's C SDK does
  not) must still be reachable;
- `off`: no check. Always the case when the relay has no broker.

Device ids of the topics are not scoped by project (Huawei's topics are not either): one
broker serves one fleet.
"""

from __future__ import annotations

import dataclasses
import enum

from relay import errors
from relay.clock import format_time
from relay.notify import OFFLINE, ONLINE, presence_topic


class State(str, enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class Seen:
    state: State
    since: float


class Presence:
    def __init__(self, mode: str = "known") -> None:
        if mode not in ("strict", "known"):
            raise ValueError(f"presence mode {mode!r}: expected strict or known (off means no Presence at all)")
        self.mode = mode
        self._seen: dict[str, Seen] = {}
        self._heard: set[str] | None = None   # devices heard since begin_refresh

    def update(self, device_id: str, payload: bytes, now: float) -> State:
        """Record a presence message; an empty payload (a cleared retained message) forgets."""
        if self._heard is not None:
            self._heard.add(device_id)
        word = payload.strip().lower()
        if not word:
            self._seen.pop(device_id, None)
            return State.UNKNOWN
        state = State.ONLINE if word == ONLINE else State.OFFLINE if word == OFFLINE else None
        if state is None:
            return self.state(device_id)   # not ours to understand: keep what we knew
        self._seen[device_id] = Seen(state, now)
        return state

    def begin_refresh(self) -> None:
        """A new subscription: the broker is about to send every retained presence again.
        What is known stays in force until `end_refresh`."""
        self._heard = set()

    def end_refresh(self) -> None:
        """Forget the devices the broker did not mention (it may have restarted without them)."""
        if self._heard is not None:
            for device_id in [d for d in self._seen if d not in self._heard]:
                del self._seen[device_id]
            self._heard = None

    def state(self, device_id: str) -> State:
        seen = self._seen.get(device_id)
        return seen.state if seen else State.UNKNOWN

    def require_online(self, device_id: str) -> None:
        """Raise DeviceOffline when the mode does not let a tunnel be created for the device."""
        seen = self._seen.get(device_id)
        if seen is not None and seen.state is State.ONLINE:
            return
        if seen is not None:
            raise errors.DeviceOffline(
                f"device {device_id!r} is offline (since {format_time(seen.since)}): tunnels are created only "
                f"for online devices; start its agent (`relay agent`) and try again"
            )
        if self.mode == "strict":
            raise errors.DeviceOffline(
                f"device {device_id!r} is offline: it has not announced itself on {presence_topic(device_id)!r}; "
                f"start its agent (`relay agent`), or run the relay with --presence-check known"
            )

    def __len__(self) -> int:
        return len(self._seen)
