"""The websockets internals that wsconnection.py relies on: present, and working on a real loopback socket.

When a websockets release moves one of them, this fails first and says which,
instead of the relay failing in strange ways.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.protocol import Protocol, State
from websockets.uri import parse_uri

from reverse_websockify.protocol import CLOSE_GOING_AWAY
from reverse_websockify.wsconnection import (
    BODY_APART,
    SUPPORTED_WEBSOCKETS,
    DirectClientConnection,
    DirectServerConnection,
    Message,
    connection_options,
    describe_close,
    response_with_body,
    write_frames,
)

REPO = Path(__file__).resolve().parents[2]


def test_installed_websockets_is_in_the_supported_range() -> None:
    major = int(websockets.__version__.split(".")[0])
    low, high = SUPPORTED_WEBSOCKETS
    assert low <= major < high, f"websockets {websockets.__version__} is outside {low} <= major < {high}"


def test_pyproject_pins_the_supported_range() -> None:
    low, high = SUPPORTED_WEBSOCKETS
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'"websockets>={low},<{high}"', pyproject), "pyproject.toml and SUPPORTED_WEBSOCKETS disagree"


@pytest.mark.parametrize(
    "owner, attribute",
    [
        (ServerConnection, "process_event"),
        (ClientConnection, "process_event"),
        (ServerConnection, "drain"),
        (ServerConnection, "send_data"),
        (Protocol, "send_binary"),
        (Protocol, "data_to_send"),
        (State, "OPEN"),
    ],
)
def test_internals_exist(owner: type, attribute: str) -> None:
    assert hasattr(owner, attribute), (
        f"websockets {websockets.__version__}: {owner.__qualname__}.{attribute} is gone; update wsconnection.py")


def test_protocol_objects_record_the_close_frame_they_sent() -> None:
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    assert protocol.close_sent is None, "websockets' Protocol.close_sent is gone; update describe_close()"
    assert protocol.writes == [], "websockets' Protocol.writes is gone; update DirectServerConnection.send_data()"


def test_a_large_response_is_the_same_bytes_written_as_head_then_body() -> None:
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(BODY_APART + 1))])
    body = b"x" * (BODY_APART + 1)
    large = response_with_body(200, "OK", headers, body)
    head, rest = large.serialize()
    assert rest is body  # not copied
    assert head + rest == Response(200, "OK", headers, body).serialize()
    small = response_with_body(200, "OK", headers, body[:BODY_APART])
    assert type(small) is Response and small.serialize().endswith(body[:BODY_APART])


def test_direct_delivery_and_batched_writes_on_a_real_socket() -> None:
    """Binary, fragmented and text messages reach the sink in order; a batch of frames arrives as messages."""

    async def scenario() -> None:
        received: list[Message] = []
        got_all = asyncio.Event()

        async def handler(connection: ServerConnection) -> None:
            assert isinstance(connection, DirectServerConnection)

            def sink(message: Message) -> None:
                received.append(message)
                if len(received) == 4:
                    got_all.set()

            connection.deliver_to(sink)
            await got_all.wait()
            await write_frames(connection, [b"one", b"two", b"three"])
            await connection.wait_closed()

        options = connection_options(ping_interval=5, ping_timeout=5, open_timeout=5)
        async with serve(handler, "127.0.0.1", 0, create_connection=DirectServerConnection, **options) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", create_connection=DirectClientConnection,
                               **options) as client:
                assert client.subprotocol == options["subprotocols"][0]
                replies: list[Message] = []
                three = asyncio.Event()

                def client_sink(message: Message) -> None:
                    replies.append(message)
                    if len(replies) == 3:
                        three.set()

                client.deliver_to(client_sink)
                await client.send(b"first")
                await client.send([b"frag", b"mented"])  # one message in two frames
                await client.send("text")
                await client.send(b"last")
                await asyncio.wait_for(three.wait(), 5)
                assert replies == [b"one", b"two", b"three"]
                await client.close(CLOSE_GOING_AWAY, "bye")
                assert describe_close(client) == (CLOSE_GOING_AWAY, f"closed with code {CLOSE_GOING_AWAY} bye")
        assert [bytes(m) if not isinstance(m, str) else m for m in received] == [b"first", b"fragmented", "", b"last"]

    asyncio.run(scenario())
