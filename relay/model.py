"""The tunnel record and how the API shows it."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from relay.clock import format_time


class Status(str, enum.Enum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"


class Side(str, enum.Enum):
    SOURCE = "source"  # the application side
    DEVICE = "device"


class CloseReason(str, enum.Enum):
    CLOSED = "closed"      # by the API
    EXPIRED = "expired"    # its lifetime ran out


class TunnelProtocol(str, enum.Enum):
    """Which data-plane protocol a tunnel speaks (docs/protocol.md, docs/aws.md)."""

    HUAWEI = "huawei"   # Huawei IoTDA v5: /v5/iot/tunnels/{id}/source-connect, device-connect
    AWS = "aws"         # AWS IoT Secure Tunneling: /tunnel?local-proxy-mode=source|destination


class Claim(str, enum.Enum):
    """What a store says when an AWS access token is used (docs/aws.md, client tokens)."""

    OK = "ok"              # the connection may go ahead
    USED = "used"          # the token was used before, without this client token
    ROTATED = "rotated"    # the token is not the side's token any more
    GONE = "gone"          # the tunnel is closed (or unknown)


class NotifyStatus(str, enum.Enum):
    """Where the MQTT tunnel notify to the device stands (None: no notify, e.g. no broker)."""

    PENDING = "PENDING"        # in the outbox, waiting for the broker's PUBACK
    DELIVERED = "DELIVERED"    # the broker acknowledged it (QoS 1)


@dataclasses.dataclass(slots=True)
class Tunnel:
    tunnel_id: str
    project_id: str
    device_id: str
    create_time: float
    expires_at: float
    source_token_hash: str
    device_token_hash: str
    status: Status = Status.OPEN
    closed_time: float | None = None
    close_reason: CloseReason | None = None
    description: str | None = None
    custom_info: str | None = None
    source_connected: bool = False
    source_state_time: float | None = None
    device_connected: bool = False
    device_state_time: float | None = None
    notify_status: NotifyStatus | None = None
    protocol: TunnelProtocol = TunnelProtocol.HUAWEI
    services: tuple[str, ...] = ()   # AWS service ids (aws tunnels); empty for huawei tunnels
    # AWS client tokens, per side: None while the side's access token is unused, "" once it was
    # used without a client token (it cannot be used again), else the SHA-256 of the client
    # token it is bound to. Reset when the side's token is rotated.
    source_client_hash: str | None = None
    device_client_hash: str | None = None
    record_session: bool = False   # record this tunnel's ssh sessions (docs/audit.md)
    # The NAME of the API token that issued the current source token (created the tunnel, or
    # last rotated its source token): the audit trail's actor for what the source end does.
    source_token_issuer: str | None = None
    seq: int = 0  # the store's insertion order, used for paging markers

    def token_hash(self, side: Side) -> str:
        return self.source_token_hash if side is Side.SOURCE else self.device_token_hash

    def remaining_lifetime(self, now: float) -> int:
        return max(0, int(self.expires_at - now))

    def info(self) -> dict[str, Any]:
        """TunnelInfo, as the REST API returns it (never the token hashes)."""
        return {
            "tunnel_id": self.tunnel_id,
            "device_id": self.device_id,
            "status": self.status.value,
            "create_time": format_time(self.create_time),
            "closed_time": format_time(self.closed_time),
            "expires_at": format_time(self.expires_at),
            "close_reason": self.close_reason.value if self.close_reason else None,
            "description": self.description,
            "custom_info": self.custom_info,
            "source_connect_state": _connect_state(self.source_connected, self.source_state_time),
            "device_connect_state": _connect_state(self.device_connected, self.device_state_time),
            "notify_status": self.notify_status.value if self.notify_status else None,
            "protocol": self.protocol.value,
            "services": list(self.services) if self.protocol is TunnelProtocol.AWS else None,
            "record_session": self.record_session,
        }


def _connect_state(connected: bool, when: float | None) -> dict[str, Any]:
    return {
        "status": "CONNECTED" if connected else "DISCONNECTED",
        "last_update_time": format_time(when),
    }


@dataclasses.dataclass(frozen=True, slots=True)
class PendingNotify:
    """An outbox entry: the device token of a tunnel that its device has not been sent yet."""

    tunnel_id: str
    device_token: str = dataclasses.field(repr=False)   # a secret: never logged, never shown


@dataclasses.dataclass(frozen=True, slots=True)
class ListQuery:
    device_id: str | None = None
    status: Status | None = None
    tunnel_id: str | None = None
    limit: int = 10
    marker: int | None = None   # return tunnels with seq greater than this
    offset: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    tunnels: list[Tunnel]
    count: int            # how many match the filters, across all pages
    marker: int | None    # seq of the last tunnel returned; pass it back for the next page
