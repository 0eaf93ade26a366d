"""relay.agent.aws.run_destination (`relay localproxy -d`) as a task among others."""
from __future__ import annotations

import asyncio

import pytest

from relay.agent.aws import run_destination
from relay.agent.settings import AgentSettings


async def test_cancelling_the_destination_cancels_it_and_its_session():
    # A relay that accepts TCP and never answers the handshake: the session stays running.
    connected = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        connected.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        task = asyncio.create_task(run_destination(
            AgentSettings(device_id="d1"), "token", f"ws://127.0.0.1:{port}", stop=asyncio.Event()))
        await asyncio.wait_for(connected.wait(), timeout=30)
        task.cancel()
        # A cancel must reach the caller (asyncio.timeout, TaskGroup and shutdown rely on it),
        # not turn into a normal "tunnel over" exit status.
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)
        assert task.cancelled()
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
