"""A hostile or broken "agent" speaking WebSocket must only hurt its own connection.

Oversized messages (1009) and fuzzed sessions are tests/reliability/test_hostile.py's.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from reverse_websockify.protocol import SUBPROTOCOL, encode_data, encode_open, encode_open_ok, encode_window
from tests.support.clients import sha256, transfer
from tests.support.deployment import Deployment
from tests.support.ports import free_port
from tests.support.services import Service


async def _close_code_after(url: str, *messages: bytes | str, read_first: bool = False) -> tuple[int, str]:
    async with connect(url, subprotocols=[SUBPROTOCOL], compression=None, open_timeout=5) as ws:
        for message in messages:
            await ws.send(message)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed:
            pass
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


BAD_MESSAGES = {
    "text message": "hello",
    "short header": b"\x03\x00",
    "unknown type": b"\x09\x00\x00\x00\x01",
    "stream id 0": b"\x03\x00\x00\x00\x00abc",
    "OPEN from the agent": encode_open(1),
    "DATA for a stream never opened": encode_data(7, b"x"),
    "WINDOW of 0": b"\x04\x00\x00\x00\x01" + struct.pack(">I", 0),
}


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_malformed_frame_closes_only_that_agent_with_1002(deployment: Deployment, echo: Service, name: str) -> None:
    deployment.services["GOOD"] = free_port()
    deployment.write_config()
    deployment.options.append("--log-format=json")
    server = deployment.start_server()
    deployment.start_agent("GOOD", echo.port)
    good_user = socket.create_connection(("127.0.0.1", deployment.services["GOOD"]))
    good_user.sendall(b"before")
    assert good_user.recv(6) == b"before"

    code, reason = asyncio.run(_close_code_after(deployment.url("BUS1"), BAD_MESSAGES[name]))
    assert code == 1002, (code, reason)
    assert reason  # says what was wrong
    server.wait_line("closing the WebSocket", close_code=1002, service="BUS1")

    good_user.sendall(b"after")  # the other agent's stream is untouched
    assert good_user.recv(5) == b"after"
    good_user.close()
    payload = os.urandom(1 << 20)
    assert sha256(transfer(deployment.services["GOOD"], payload)) == sha256(payload)
    assert server.proc.poll() is None


def test_data_beyond_credit_closes_with_1002(deployment: Deployment) -> None:
    """A fake agent ignores WINDOW and floods a user who never reads: it must be cut off at its credit."""
    deployment.start_server()

    async def scenario() -> tuple[int, str, int]:
        async with connect(deployment.url("BUS1"), subprotocols=[SUBPROTOCOL], compression=None) as ws:
            user = socket.socket()
            user.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            user.connect(("127.0.0.1", deployment.services["BUS1"]))
            opened = await asyncio.wait_for(ws.recv(), 5)
            stream_id = struct.unpack(">BI", opened[:5])[1]
            await ws.send(encode_open_ok(stream_id))
            chunk = b"z" * (256 * 1024)
            sent = 0
            try:
                for _ in range(256):  # 64 MiB, far beyond window + socket buffers; the user never reads
                    await ws.send(encode_data(stream_id, chunk))
                    sent += len(chunk)
                    # Let the client's loop read: a server that drains fast never blocks send(), and the
                    # close frame would wait unread until the whole flood is out.
                    await asyncio.sleep(0)
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed:
                pass
            user.close()
            return ws.close_code or 0, ws.close_reason or "", sent

    code, reason, sent = asyncio.run(scenario())
    assert code == 1002, (code, reason)
    assert "credit" in reason
    assert sent < 32 * 1024 * 1024


def test_window_overflow_and_open_ok_twice(deployment: Deployment) -> None:
    deployment.start_server()

    async def scenario(second: bytes) -> int:
        async with connect(deployment.url("BUS1"), subprotocols=[SUBPROTOCOL], compression=None) as ws:
            user = await asyncio.open_connection("127.0.0.1", deployment.services["BUS1"])
            opened = await asyncio.wait_for(ws.recv(), 5)
            stream_id = struct.unpack(">BI", opened[:5])[1]
            await ws.send(encode_open_ok(stream_id))
            await ws.send(second.replace(b"\x00\x00\x00\x01", struct.pack(">I", stream_id), 1))
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed:
                pass
            user[1].close()
            return ws.close_code or 0

    assert asyncio.run(scenario(encode_window(1, 1 << 30))) == 1002
    assert asyncio.run(scenario(encode_open_ok(1))) == 1002


def test_agent_without_subprotocol_gets_clear_http_error(deployment: Deployment) -> None:
    deployment.start_server()

    async def scenario() -> InvalidStatus:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(deployment.url("BUS1"), open_timeout=5):
                pass
        return refused.value

    error = asyncio.run(scenario())
    assert error.response.status_code == 400
    assert SUBPROTOCOL.encode() in error.response.body
