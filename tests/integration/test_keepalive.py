"""The server's keepalive for a fleet (liveness.py): it pings only agents it has not heard from.

Raw WebSockets, so that the test sees every frame the server sends and decides what to answer.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from tests.support.deployment import Deployment
from tests.support.websocket import raw_handshake

PING, PONG, CLOSE = 0x9, 0xA, 0x8


def _frames(sock: socket.socket, buffered: bytes, seconds: float) -> list[tuple[int, bytes, float]]:
    """(opcode, payload, time) of every frame the server sends within ``seconds`` or until it closes."""
    frames, data, deadline = [], bytearray(buffered), time.monotonic() + seconds
    while time.monotonic() < deadline:
        while len(data) >= 2 and len(data) >= 2 + (data[1] & 0x7F):  # control frames: length < 126, unmasked
            length = data[1] & 0x7F
            frames.append((data[0] & 0x0F, bytes(data[2:2 + length]), time.monotonic()))
            del data[:2 + length]
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except (socket.timeout, ConnectionResetError):
            continue
        if not chunk:
            break
        data.extend(chunk)
    return frames


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + \
        bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_silent_agent_is_pinged_and_dropped_when_it_does_not_answer(deployment: Deployment) -> None:
    deployment.extra_config = "ping_interval_seconds = 1\nping_timeout_seconds = 1\nresume_seconds = 0"
    deployment.start_server()
    sock, rest = raw_handshake(deployment.http_port, "/forward_to_me/BUS1")
    attached = time.monotonic()
    frames = _frames(sock, rest, 8)  # never answers
    sock.close()
    kinds = [kind for kind, _, _ in frames]
    assert kinds[:1] == [PING] and CLOSE in kinds, frames
    pinged = frames[0][2] - attached
    close = next(f for f in frames if f[0] == CLOSE)
    assert 0.9 < pinged < 2.5 and struct.unpack("!H", close[1][:2])[0] == 1011, (pinged, close)
    assert b"keepalive ping timeout" in close[1]
    assert close[2] - attached < 1 + 1 + 1 + 1.5  # interval + timeout + one tick, and some slack
    assert "keepalive ping timeout" in deployment.status()["BUS1"]["last_disconnect_reason"]


def test_an_agent_that_pings_is_not_pinged(deployment: Deployment) -> None:
    deployment.extra_config = "ping_interval_seconds = 1\nping_timeout_seconds = 1"
    deployment.start_server()
    sock, rest = raw_handshake(deployment.http_port, "/forward_to_me/BUS1")
    frames: list[tuple[int, bytes, float]] = []
    for i in range(12):  # 3 s, a ping every 0.25 s: the server hears from it all the time
        sock.sendall(_masked(PING, b"%d" % i))
        frames += _frames(sock, rest if i == 0 else b"", 0.25)
    assert deployment.status()["BUS1"]["connected"]
    sock.close()
    kinds = [kind for kind, _, _ in frames]
    assert PING not in kinds and CLOSE not in kinds and kinds.count(PONG) >= 10, kinds
    pongs = [payload for kind, payload, _ in frames if kind == PONG]
    assert pongs == [b"%d" % i for i in range(len(pongs))], "every pong carries its ping's payload, in order"


def test_the_real_agent_answers_the_servers_pings(deployment: Deployment) -> None:
    """An agent that pings rarely is pinged by the server every second; its (masked) pongs keep it attached."""
    deployment.extra_config = "ping_interval_seconds = 1\nping_timeout_seconds = 1\nresume_seconds = 0"
    server = deployment.start_server()
    agent = deployment.start_agent("BUS1", 9, "--ping-interval=60", "--ping-timeout=60")
    time.sleep(4.5)  # four of the server's pings, each answered within its 1 s timeout or the link is dropped
    status = deployment.status()["BUS1"]
    assert status["connected"] and status["last_disconnect_reason"] is None, status
    assert "keepalive" not in server.log() and "disconnected" not in agent.log()


def test_an_unmasked_ping_is_a_protocol_error_not_answered(deployment: Deployment) -> None:
    """RFC 6455 5.1: a client's frames are masked; the server closes (1002) and answers nothing."""
    deployment.start_server()
    sock, rest = raw_handshake(deployment.http_port, "/forward_to_me/BUS1")
    sock.sendall(struct.pack("!BB", 0x80 | PING, 4) + b"ping")
    frames = _frames(sock, rest, 3)
    sock.close()
    kinds = [kind for kind, _, _ in frames]
    assert PONG not in kinds and kinds[-1:] == [CLOSE], frames
    assert struct.unpack("!H", frames[-1][1][:2])[0] == 1002, frames
