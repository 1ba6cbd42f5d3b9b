"""Protocol v2 sessions (docs/protocol.md section 9) with real processes: the documented outcomes.

The agent reaches the server through tests/reliability/faultproxy.py so that its link can be frozen
or cut. Keepalive runs at 1 s/1 s on both sides, so a dead link is noticed within
1 + 1 + 2 (closing handshake timeout) = 4 s.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.request
from typing import Callable

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from reverse_websockify.protocol import (RESUME_HEADER, SUBPROTOCOL, SUBPROTOCOL_V2, FrameType, Hello, decode,
                                         encode_resume, parse_hello)
from tests.reliability.faultproxy import FaultProxy
from tests.support.clients import Exchange, read_until_closed, sha256, still_open, transfer
from tests.support.deployment import Deployment
from tests.support.services import Service
from tests.support.waiting import wait_for

FAST_KEEPALIVE_CONFIG = "ping_interval_seconds = 1\nping_timeout_seconds = 1"
FAST_KEEPALIVE_FLAGS = ("--ping-interval=1", "--ping-timeout=1")
KEEPALIVE_BOUND = 1 + 1 + 2  # interval + timeout + closing handshake timeout, seconds
SLACK = 2.0  # scheduling on a shared machine


def _via(proxy: FaultProxy, sid: str = "BUS1") -> str:
    return f"{proxy.url_base}/forward_to_me/{sid}"


def _setup(deployment: Deployment, config: str = "") -> None:
    deployment.extra_config = "\n".join(filter(None, [FAST_KEEPALIVE_CONFIG, config]))
    deployment.write_config()
    deployment.options.append("--log-format=json")


def _echoes(user: socket.socket, payload: bytes, timeout: float = 10) -> None:
    """``payload`` goes through the tunnel to the echo and comes back byte-exact."""
    user.sendall(payload)
    user.settimeout(timeout)
    received = bytearray()
    while len(received) < len(payload):
        chunk = user.recv(1 << 20)
        assert chunk, f"the connection ended after {len(received)} of {len(payload)} bytes"
        received.extend(chunk)
    assert sha256(bytes(received)) == sha256(payload)


def _user(deployment: Deployment, sid: str = "BUS1") -> socket.socket:
    user = socket.create_connection(("127.0.0.1", deployment.services[sid]), timeout=10)
    _echoes(user, b"hello through the tunnel")
    return user


def _new_users_work(deployment: Deployment) -> None:
    payload = os.urandom(1 << 20)
    assert sha256(transfer(deployment.services["BUS1"], payload, timeout=20)) == sha256(payload)


def _metrics(deployment: Deployment) -> str:
    with urllib.request.urlopen(f"{deployment.base_url}/metrics", timeout=10) as response:
        return response.read().decode()


def _detached(deployment: Deployment, streams: int = 1) -> bool:
    entry = deployment.status()["BUS1"]
    return not entry["connected"] and entry["paused_streams"] == streams


# -- the session ends ---------------------------------------------------------------------------------


def test_session_expires_user_reset_and_agent_comes_back(deployment: Deployment, echo: Service,
                                                        make_proxy: Callable[[int], FaultProxy]) -> None:
    resume_seconds = 2
    _setup(deployment, f"resume_seconds = {resume_seconds}")
    server = deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, *FAST_KEEPALIVE_FLAGS, url=_via(proxy))
    user = _user(deployment)
    server_mark, agent_mark = server.mark(), agent.mark()

    proxy.freeze()
    frozen_at = time.monotonic()
    took, how, data = read_until_closed(user, KEEPALIVE_BOUND + resume_seconds + SLACK + 5)
    user.close()
    assert how == "reset" and data == b"", (how, data)
    assert resume_seconds <= took < KEEPALIVE_BOUND + resume_seconds + SLACK, took
    expired = server.wait_line("expired", since=server_mark, reason="session expired", timeout=5)
    assert f"within {resume_seconds} s" in expired["message"] and "1 streams reset" in expired["message"]
    wait_for(lambda: echo.open_count() == 0, 10, "the agent to give its session up and close the service side")
    agent.wait_line("session given up", since=agent_mark, timeout=5)

    proxy.forward()
    wait_for(lambda: deployment.status()["BUS1"]["connected"], 15, "the agent to come back")
    _new_users_work(deployment)
    # Exactly one expiry line. (The agent's late attempt still carried the old credentials: the server then
    # also logs, at INFO, that it does not know that session "(it expired or the server restarted)".)
    assert len(server.find_lines("expired", since=server_mark, reason="session expired")) == 1
    assert len(server.find_lines("expired", since=server_mark, level="WARNING")) == 1
    assert deployment.status()["BUS1"]["sessions_resumed"] == 0
    assert 'reverse_websockify_sessions_expired_total{service="BUS1"} 1.0' in _metrics(deployment)
    assert time.monotonic() - frozen_at < 30


def test_server_restarted_agent_cannot_resume(deployment: Deployment, echo: Service,
                                              make_proxy: Callable[[int], FaultProxy]) -> None:
    _setup(deployment)
    server = deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, *FAST_KEEPALIVE_FLAGS, "--max-backoff=1", url=_via(proxy))
    user = _user(deployment)
    agent_mark = agent.mark()

    server.kill()
    killed_at = time.monotonic()
    _, how, _ = read_until_closed(user, 5)  # the server's sockets died with it
    user.close()
    assert how in ("eof", "reset")
    agent.wait_line("keeping 1 streams", since=agent_mark, timeout=KEEPALIVE_BOUND + SLACK)
    assert echo.open_count() == 1  # the agent keeps the service side of its detached session
    deployment.start_server()  # same config, same ports
    line = agent.wait_line("could not resume", since=agent_mark, reason="session not resumed", timeout=15)
    assert "streams were reset" in line["message"]
    wait_for(lambda: echo.open_count() == 0, 5, "the agent to reset the old session's service connection")
    wait_for(lambda: deployment.status()["BUS1"]["connected"], 10, "the agent to attach to the new server")
    assert deployment.server is not None
    deployment.server.wait_line("does not know", reason="unknown session", timeout=5)
    _new_users_work(deployment)
    assert time.monotonic() - killed_at < 30


def test_agent_restarted_old_session_dropped_promptly(deployment: Deployment, echo: Service) -> None:
    _setup(deployment)
    server = deployment.start_server()
    agent = deployment.start_agent("BUS1", echo.port, *FAST_KEEPALIVE_FLAGS)
    users = [_user(deployment) for _ in range(2)]
    server_mark = server.mark()

    agent.kill()
    wait_for(lambda: _detached(deployment, 2), KEEPALIVE_BOUND + SLACK, "the server to keep the session, detached")
    assert all(still_open(user, 0.2) for user in users)  # paused, within resume_seconds (60 s)
    deployment.start_agent("BUS1", echo.port, *FAST_KEEPALIVE_FLAGS)
    attached_at = time.monotonic()
    for user in users:
        took, how, _ = read_until_closed(user, 10)
        user.close()
        assert how == "reset"
        assert time.monotonic() - attached_at < 5, took
    line = server.wait_line("dropped", since=server_mark, reason="replaced", timeout=5)
    assert "its 2 streams are dropped" in line["message"]
    assert deployment.status()["BUS1"]["sessions_resumed"] == 0
    _new_users_work(deployment)


# -- the resume header ----------------------------------------------------------------------------------


async def _raw_agent(url: str, protocols: list[str], headers: dict[str, str] | None = None) -> str | None:
    """Attach with a bare websockets client; return the subprotocol the server chose."""
    async with connect(url, subprotocols=protocols, additional_headers=headers or {},  # type: ignore[arg-type]
                       user_agent_header="reverse_websockify_agent/raw", open_timeout=10, compression=None) as ws:
        return ws.subprotocol


# not hex; ids and secrets too short; no secret at all; a secret one byte short of 32
MALFORMED = ["not-hex.at-all", "00ff.00ff", "", "0011" * 8, ("ab" * 16) + "." + ("cd" * 31)]


def test_malformed_resume_header_is_refused_and_the_real_agent_resumes(
        deployment: Deployment, echo: Service, make_proxy: Callable[[int], FaultProxy]) -> None:
    _setup(deployment)
    server = deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, *FAST_KEEPALIVE_FLAGS, url=_via(proxy))
    user = _user(deployment)
    agent_mark = agent.mark()

    proxy.freeze()
    wait_for(lambda: _detached(deployment), KEEPALIVE_BOUND + SLACK, "the server to detach the session")
    before = deployment.status()["BUS1"]
    metrics_before = _metrics(deployment)
    for header in MALFORMED:
        with pytest.raises(InvalidStatus) as refused:
            asyncio.run(_raw_agent(deployment.url("BUS1"), [SUBPROTOCOL_V2], {RESUME_HEADER: header}))
        assert refused.value.response.status_code == 400, header
        assert b"malformed" in refused.value.response.body
    after = deployment.status()["BUS1"]
    for key in ("connected", "paused_streams", "sessions_resumed", "agent_address", "reconnecting_since",
                "streams_opened_total", "client_connection_count"):
        assert after[key] == before[key], key
    for name in ("agent_connects_total", "sessions_expired_total", "sessions_resumed_total"):
        wanted = f'reverse_websockify_{name}{{service="BUS1"}}'
        assert [l for l in metrics_before.splitlines() if l.startswith(wanted)] == \
               [l for l in _metrics(deployment).splitlines() if l.startswith(wanted)], name
    assert still_open(user, 0.2)
    assert echo.open_count() == 1

    proxy.forward()
    wait_for(lambda: deployment.status()["BUS1"]["sessions_resumed"] == 1, 15, "the real agent to resume")
    agent.wait_line("session resumed", since=agent_mark, timeout=5)
    _echoes(user, os.urandom(256 * 1024))  # the same user connection carries on, byte-exact
    user.close()
    assert not server.find_lines("dropped") and not server.find_lines("expired", reason="session expired")
    assert echo.accepted == 1


async def _raw_session(url: str, resume: Hello | None = None) -> Hello:
    """Attach as a bare v2 agent, read the server's HELLO, then lose the link (abort: no closing handshake)."""
    headers = {RESUME_HEADER: f"{resume.session_id.hex()}.{resume.secret.hex()}"} if resume else {}
    ws = await connect(url, subprotocols=[SUBPROTOCOL_V2], additional_headers=headers,  # type: ignore[list-item]
                       user_agent_header="reverse_websockify_agent/raw", open_timeout=10, compression=None)
    try:
        frame = decode(await asyncio.wait_for(ws.recv(), 5), version=2)
        assert frame.type == FrameType.HELLO and frame.stream_id == 0, frame
        hello = parse_hello(frame.body)
        if hello.resumed:  # the agent's half of the handshake: it has no streams (docs/protocol.md section 9)
            await ws.send(encode_resume(0, [])[0])
            report = decode(await asyncio.wait_for(ws.recv(), 5), version=2)
            assert report.type == FrameType.RESUME, report
        return hello
    finally:
        ws.transport.abort()


def _refused(url: str, hello: Hello) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(_raw_session(url, hello))
    return refused.value


def test_wrong_or_stale_secret_refused_403_and_the_session_stays(deployment: Deployment) -> None:
    """The secret rotates at every resume: an old one is stale, and neither it nor a wrong one disturbs the session."""
    _setup(deployment)
    server = deployment.start_server()
    url = deployment.url("BUS1")
    first = asyncio.run(_raw_session(url))
    assert not first.resumed
    wait_for(lambda: _detached(deployment, 0), 10, "the server to keep the session, detached")
    mark = server.mark()

    wrong = Hello(False, 0, first.session_id, bytes(b ^ 0xFF for b in first.secret))
    refusal = _refused(url, wrong)
    assert refusal.response.status_code == 403
    assert b"wrong or stale session secret for service BUS1" in refusal.response.body
    server.wait_line("wrong or stale session secret", since=mark, reason="wrong session secret", timeout=5)

    second = asyncio.run(_raw_session(url, first))  # the right secret resumes, with a new secret
    assert second.resumed and second.session_id == first.session_id and second.secret != first.secret
    wait_for(lambda: deployment.status()["BUS1"]["sessions_resumed"] == 1, 10, "the resume to be counted")
    wait_for(lambda: _detached(deployment, 0), 10, "the session to be detached again")

    refusal = _refused(url, first)  # the secret before the resume is stale now
    assert refusal.response.status_code == 403
    wait_for(lambda: len(server.find_lines("wrong or stale session secret", since=mark)) == 2, 5,
             "the second refusal's log line")
    third = asyncio.run(_raw_session(url, second))
    assert third.resumed and third.session_id == first.session_id
    wait_for(lambda: deployment.status()["BUS1"]["sessions_resumed"] == 2, 10, "the second resume to be counted")
    log = server.log()
    for hello in (first, second, third, wrong):
        assert hello.secret.hex() not in log, "a session secret was logged"


# -- v1 and v2 -------------------------------------------------------------------------------------------


def test_server_at_v1_with_the_current_agent(deployment: Deployment, echo: Service,
                                             make_proxy: Callable[[int], FaultProxy]) -> None:
    """``resume_seconds = 0``: the server speaks v1 only; the agent relays without sessions."""
    _setup(deployment, "resume_seconds = 0")
    deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, *FAST_KEEPALIVE_FLAGS, url=_via(proxy))
    status = deployment.status()["BUS1"]
    assert status["connected"] and status["agent_address"] and status["agent_version"]
    _new_users_work(deployment)
    user = _user(deployment)

    assert proxy.cut(rst=True) == 1  # v1: the link's streams end with it
    _, how, _ = read_until_closed(user, 5)
    user.close()
    assert how in ("eof", "reset")
    agent.wait_line("disconnected after", timeout=5)
    wait_for(lambda: deployment.status()["BUS1"]["connected"], 10, "the agent to reattach")
    _new_users_work(deployment)
    assert "keeping" not in agent.log()
    assert deployment.status()["BUS1"]["paused_streams"] == 0


def test_v1_agent_gets_v1_from_a_default_server(deployment: Deployment) -> None:
    _setup(deployment)
    deployment.start_server()

    async def attach(protocols: list[str]) -> tuple[str | None, bool]:
        async with connect(deployment.url("BUS1"), subprotocols=protocols,  # type: ignore[arg-type]
                           user_agent_header="reverse_websockify_agent/raw", open_timeout=10, compression=None) as ws:
            try:
                await asyncio.wait_for(ws.recv(), 1)
                sent_first = True
            except asyncio.TimeoutError:
                sent_first = False
            return ws.subprotocol, sent_first

    protocol, sent_first = asyncio.run(attach([SUBPROTOCOL]))
    assert protocol == SUBPROTOCOL == "reverse-websockify.v1"
    assert not sent_first, "a v1 agent gets no HELLO (frame type 7 is unknown in v1)"
    wait_for(lambda: not deployment.status()["BUS1"]["connected"], 5, "the raw agent's session to end")
    assert deployment.status()["BUS1"]["paused_streams"] == 0
    protocol, sent_first = asyncio.run(attach([SUBPROTOCOL_V2, SUBPROTOCOL]))
    assert protocol == SUBPROTOCOL_V2 and sent_first, "a v2 agent gets v2 and the server's HELLO first"


# -- the session resumes ----------------------------------------------------------------------------------


def test_link_cut_three_times_during_a_transfer_nothing_visible(deployment: Deployment, echo: Service,
                                                                make_proxy: Callable[[int], FaultProxy]) -> None:
    _setup(deployment)
    server = deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, *FAST_KEEPALIVE_FLAGS, url=_via(proxy))
    user = _user(deployment)
    payload = os.urandom(4 << 20)
    # Paced (64 KiB every 50 ms, >= 3.2 s), so that all three cuts land while bytes are in flight.
    exchange = Exchange(deployment.services["BUS1"], payload, chunk=64 * 1024, pace=0.05, timeout=60)
    started = time.monotonic()
    for cut in range(1, 4):
        time.sleep(0.3)
        assert echo.bytes_received < len(payload), "the transfer ended before the cuts"
        wait_for(lambda: proxy.connection_count() == 1, 10, "the agent's link through the proxy")
        assert proxy.cut(rst=True) == 1
        wait_for(lambda: deployment.status()["BUS1"]["sessions_resumed"] == cut, 15, f"resume #{cut}")
    assert exchange.join() == "complete", exchange.outcome
    assert sha256(bytes(exchange.received)) == sha256(payload)
    _echoes(user, b"the idle user is still there")
    user.close()
    took = time.monotonic() - started
    status = deployment.status()["BUS1"]
    assert status["sessions_resumed"] >= 1 and status["connected"]
    assert 'reverse_websockify_sessions_resumed_total{service="BUS1"} 3.0' in _metrics(deployment)
    assert len(agent.find_lines("session resumed")) == 3
    assert not agent.find_lines("given up") and not server.find_lines("dropped")
    assert echo.accepted == 2  # no stream was opened twice
    assert took < 30, took
