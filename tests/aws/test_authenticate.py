"""The AWS endpoint's authentication rules (`TunnelService.authenticate_aws_socket`), without
sockets: the token names the tunnel, it must be the side's and of an open AWS tunnel, and it
opens one connection, or those that send the client token of its first (docs/aws.md)."""

from __future__ import annotations

import pytest

from relay import errors
from relay.clock import ManualClock
from relay.config import Settings
from relay.model import Side, TunnelProtocol
from relay.service import TunnelService
from relay.store.sqlite import SqliteStore

CLIENT_A = "a" * 32
CLIENT_B = "b" * 32


@pytest.fixture
async def service(tmp_path):
    store = SqliteStore(str(tmp_path / "relay.db"))
    yield TunnelService(store, Settings(db=str(tmp_path / "relay.db")), ManualClock())
    await store.aclose()


async def aws_tunnel(service: TunnelService, device_id: str = "dev-1"):
    return await service.create("p1", device_id, protocol=TunnelProtocol.AWS, services=("SSH",))


async def test_the_token_alone_finds_its_open_tunnel(service):
    created = await aws_tunnel(service)
    tunnel = await service.authenticate_aws_socket(created.source_token, Side.SOURCE, None)
    assert tunnel.tunnel_id == created.tunnel.tunnel_id
    device = await service.authenticate_aws_socket(created.device_token, Side.DEVICE, CLIENT_A)
    assert device.tunnel_id == created.tunnel.tunnel_id


async def test_an_unknown_token_is_refused(service):
    with pytest.raises(errors.Unauthenticated, match="unknown"):
        await service.authenticate_aws_socket("no-such-token", Side.SOURCE, None)


async def test_a_huawei_tunnel_token_is_sent_to_its_endpoints(service):
    created = await service.create("p1", "dev-1")
    with pytest.raises(errors.WrongProtocol, match="source-connect"):
        await service.authenticate_aws_socket(created.source_token, Side.SOURCE, None)


async def test_the_other_sides_token_names_the_mode_it_is_for(service):
    created = await aws_tunnel(service)
    with pytest.raises(errors.Unauthenticated, match="local-proxy-mode=destination"):
        await service.authenticate_aws_socket(created.device_token, Side.SOURCE, None)
    with pytest.raises(errors.Unauthenticated, match="local-proxy-mode=source"):
        await service.authenticate_aws_socket(created.source_token, Side.DEVICE, None)


async def test_a_closed_or_expired_tunnel_is_gone(service):
    closed, expired = await aws_tunnel(service, "dev-1"), await aws_tunnel(service, "dev-2")
    await service.close("p1", closed.tunnel.tunnel_id)
    with pytest.raises(errors.TunnelGone, match="closed"):
        await service.authenticate_aws_socket(closed.source_token, Side.SOURCE, None)
    service.clock.advance(expired.expires_in + 1)
    with pytest.raises(errors.TunnelGone, match="expired"):   # settled before the answer
        await service.authenticate_aws_socket(expired.source_token, Side.SOURCE, None)


async def test_a_token_without_a_client_token_opens_one_connection(service):
    created = await aws_tunnel(service)
    await service.authenticate_aws_socket(created.source_token, Side.SOURCE, None)
    with pytest.raises(errors.TokenUsed):
        await service.authenticate_aws_socket(created.source_token, Side.SOURCE, None)
    with pytest.raises(errors.TokenUsed):
        await service.authenticate_aws_socket(created.source_token, Side.SOURCE, CLIENT_A)


async def test_a_token_bound_to_a_client_token_opens_that_clients_connections_only(service):
    created = await aws_tunnel(service)
    await service.authenticate_aws_socket(created.device_token, Side.DEVICE, CLIENT_A)
    await service.authenticate_aws_socket(created.device_token, Side.DEVICE, CLIENT_A)   # a reconnection
    with pytest.raises(errors.TokenUsed):
        await service.authenticate_aws_socket(created.device_token, Side.DEVICE, CLIENT_B)
    with pytest.raises(errors.TokenUsed):
        await service.authenticate_aws_socket(created.device_token, Side.DEVICE, None)


async def test_a_rotated_token_is_refused_and_the_new_one_opens(service):
    created = await aws_tunnel(service)
    rotated = await service.rotate("p1", created.tunnel.tunnel_id, frozenset({Side.SOURCE}))
    with pytest.raises(errors.Unauthenticated):
        await service.authenticate_aws_socket(created.source_token, Side.SOURCE, None)
    assert rotated.source_token is not None
    await service.authenticate_aws_socket(rotated.source_token, Side.SOURCE, None)
