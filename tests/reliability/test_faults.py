"""Faults on the link, in the processes and at the local service, each with a measured figure.

The link faults put tests/reliability/faultproxy.py between the agent and the server's HTTP port.
Keepalive runs with ping interval 1 s and ping timeout 1 s on both sides (the defaults are 8 s and
10 s), so a dead link must be noticed within 1 + 1 + 2 (closing handshake timeout) = 4 s here, and
within 8 + 10 + 2 = 20 s with the defaults.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from typing import Callable

import pytest

from reverse_websockify.protocol import FrameType, decode
from tests.support.clients import Exchange, read_until_closed, sha256, still_open
from tests.support.deployment import Deployment
from tests.support.ports import free_port
from tests.support.services import Blackhole, Service
from tests.support.waiting import wait_for
from tests.support.websocket import fake_agent
from tests.reliability.conftest import Figure
from tests.reliability.faultproxy import FaultProxy

FAST_KEEPALIVE_CONFIG = "ping_interval_seconds = 1\nping_timeout_seconds = 1"
FAST_KEEPALIVE_FLAGS = ("--ping-interval=1", "--ping-timeout=1")
KEEPALIVE_BOUND = 1 + 1 + 2  # interval + timeout + closing handshake timeout, seconds
SLACK = 1.5  # scheduling on a shared 2-core machine


def _via(proxy: FaultProxy, sid: str) -> str:
    return f"{proxy.url_base}/forward_to_me/{sid}"


def _connected(deployment: Deployment, sid: str = "BUS1") -> bool:
    return bool(deployment.status()[sid]["connected"])


def _echo_ok(port: int, payload: bytes, timeout: float = 20) -> None:
    exchange = Exchange(port, payload, timeout=timeout)
    assert exchange.join() == "complete", exchange.outcome
    assert sha256(bytes(exchange.received)) == sha256(payload)


def _start_exchanges(deployment: Deployment, echo: Service, count: int, size: int) -> list[Exchange]:
    """``count`` paced uploads of ``size`` random bytes each, known to be mid-transfer on return."""
    port = deployment.services["BUS1"]
    before = echo.bytes_received
    exchanges = [Exchange(port, os.urandom(size), pace=0.02, timeout=20) for _ in range(count)]
    wait_for(lambda: echo.bytes_received - before >= count * 128 * 1024, 10, "the transfers to be under way")
    return exchanges


RESUME_OFF = "\nresume_seconds = 0\n"

def _check_interrupted(exchanges: list[Exchange], seconds: float) -> tuple[float, dict[str, int]]:
    """Every user connection ends (none hangs) and holds only correct bytes; return the slowest end."""
    started = time.monotonic()
    outcomes: dict[str, int] = {}
    latest = 0.0
    for exchange in exchanges:
        outcome = exchange.join(max(0.1, seconds - (time.monotonic() - started)))
        assert outcome != "hung", "a user connection is still open after the fault"
        assert exchange.intact(), "a user received bytes that differ from what was sent"
        if outcome == "complete":
            assert sha256(bytes(exchange.received)) == sha256(exchange.payload)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert exchange.closed_at is not None
        latest = max(latest, exchange.closed_at)
    return latest, outcomes


def _since(moment: float, earlier: float) -> float:
    """Seconds from ``earlier`` to ``moment``; 0 when the reader thread saw the end first."""
    return max(0.0, moment - earlier)


# -- the link ------------------------------------------------------------------------------------


def test_frozen_link_is_noticed_users_closed_and_agent_back_as_soon_as_link_is(
        deployment: Deployment, echo: Service, make_proxy: Callable[[int], FaultProxy], figure: Figure) -> None:
    deployment.extra_config += RESUME_OFF  # protocol v1: a lost link ends the streams (see test_sessions.py)
    deployment.extra_config += FAST_KEEPALIVE_CONFIG
    deployment.write_config()
    deployment.options.append("--log-format=json")
    deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, *FAST_KEEPALIVE_FLAGS, url=_via(proxy, "BUS1"))
    port = deployment.services["BUS1"]
    users = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    for user in users:
        user.sendall(b"hello")
        user.settimeout(5)
        assert user.recv(5) == b"hello"
    wait_for(lambda: echo.open_count() == 3, 5, "3 service connections")
    mark = agent.mark()

    proxy.freeze()
    frozen_at = time.monotonic()
    wait_for(lambda: not _connected(deployment), KEEPALIVE_BOUND + 5, "the server to drop the frozen agent")
    server_noticed = time.monotonic() - frozen_at
    for user in users:
        read_until_closed(user, KEEPALIVE_BOUND + 5)
    users_closed = time.monotonic() - frozen_at
    for user in users:
        user.close()
    agent.wait_line("disconnected after", since=mark, timeout=KEEPALIVE_BOUND + 5)
    agent_noticed = time.monotonic() - frozen_at
    wait_for(lambda: echo.open_count() == 0, 5, "the agent to close its service connections")
    service_closed = time.monotonic() - frozen_at
    assert server_noticed < KEEPALIVE_BOUND + SLACK, server_noticed
    assert agent_noticed < KEEPALIVE_BOUND + SLACK, agent_noticed

    # The scenario: the link stays dead a little longer; the agent's next attempt hangs in the frozen link.
    time.sleep(1.5)
    proxy.forward()
    back_at = time.monotonic()
    wait_for(lambda: _connected(deployment), 10, "the agent to reattach once the link is back")
    reattached = time.monotonic() - back_at
    assert reattached < 1.5, reattached
    payload = os.urandom(1 << 20)
    _echo_ok(port, payload)
    figure("v1 (resume_seconds = 0): link frozen (no FIN, no RST)",
           f"both sides notice within ping interval + timeout + 2 s = {KEEPALIVE_BOUND} s at 1 s/1 s "
           "(defaults 8 + 10 + 2 = 20 s); users closed; agent back as soon as the link is",
           f"server {server_noticed:.1f} s, agent {agent_noticed:.1f} s, all 3 users closed by "
           f"{users_closed:.1f} s, service side by {service_closed:.1f} s; reattached {reattached:.2f} s "
           "after the link came back",
           server_noticed=server_noticed, agent_noticed=agent_noticed, users_closed=users_closed,
           reattached=reattached)


@pytest.mark.heavy
def test_frozen_link_with_default_keepalive(
        deployment: Deployment, echo: Service, make_proxy: Callable[[int], FaultProxy], figure: Figure) -> None:
    """The figure the README promises for the shipped defaults (8 s + 10 s + 2 s)."""
    deployment.extra_config += RESUME_OFF  # protocol v1: a lost link ends the streams (see test_sessions.py)
    deployment.options.append("--log-format=json")
    deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, url=_via(proxy, "BUS1"))
    user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
    user.sendall(b"x")
    user.settimeout(5)
    assert user.recv(1) == b"x"
    mark = agent.mark()
    proxy.freeze()
    frozen_at = time.monotonic()
    took, _, _ = read_until_closed(user, 8 + 10 + 2 + 5)
    user.close()
    server_noticed = time.monotonic() - frozen_at
    agent.wait_line("disconnected after", since=mark, timeout=10)
    agent_noticed = time.monotonic() - frozen_at
    assert took < 20 + SLACK and agent_noticed < 20 + SLACK, (took, agent_noticed)
    proxy.forward()
    back_at = time.monotonic()
    wait_for(lambda: _connected(deployment), 20, "the agent to reattach")
    reattached = time.monotonic() - back_at
    figure("v1 (resume_seconds = 0): link frozen, default keepalive",
           "noticed within 8 + 10 + 2 = 20 s",
           f"user closed after {took:.1f} s, agent noticed after {agent_noticed:.1f} s; "
           f"reattached {reattached:.2f} s after the link came back",
           user_closed=took, agent_noticed=agent_noticed, reattached=reattached, server_noticed=server_noticed)


@pytest.mark.parametrize("rst", [True, False], ids=["RST", "FIN"])
def test_link_cut_mid_transfer(deployment: Deployment, echo: Service, make_proxy: Callable[[int], FaultProxy],
                               figure: Figure, rst: bool) -> None:
    deployment.extra_config += RESUME_OFF  # protocol v1: a lost link ends the streams (see test_sessions.py)
    deployment.options.append("--log-format=json")
    deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, url=_via(proxy, "BUS1"))
    port = deployment.services["BUS1"]
    before = os.urandom(3 << 20)
    _echo_ok(port, before)  # a transfer completed before the cut
    exchanges = _start_exchanges(deployment, echo, 4, 4 << 20)

    assert proxy.cut(rst=rst) == 1
    cut_at = time.monotonic()
    latest, outcomes = _check_interrupted(exchanges, 10)
    users_closed = _since(latest, cut_at)
    assert outcomes.get("complete", 0) < len(exchanges), "the cut came too late to interrupt anything"
    wait_for(lambda: echo.open_count() == 0, 5, "the agent to close its service connections")
    service_closed = time.monotonic() - cut_at
    wait_for(lambda: _connected(deployment) and len(agent.find_lines("connected to ws://")) >= 2, 10,
             "the agent to reattach through the proxy")
    recovered = time.monotonic() - cut_at
    assert users_closed < 2, users_closed
    assert recovered < 2.5, recovered  # first retry after 0.5..1 s
    after = os.urandom(3 << 20)
    _echo_ok(port, after)
    figure(f"v1 (resume_seconds = 0): link cut mid-transfer ({'RST' if rst else 'FIN'})",
           "no user hangs; delivered bytes are exact; agent reconnects within its first backoff (≤ 1 s)",
           f"4 users mid-transfer closed {users_closed:.2f} s after the cut ({outcomes}), all received bytes "
           f"an exact prefix; service side closed by {service_closed:.2f} s; agent back after {recovered:.2f} s; "
           "transfers before and after byte-exact",
           users_closed=users_closed, service_closed=service_closed, recovered=recovered)


def test_link_down_for_a_while_then_back(deployment: Deployment, echo: Service,
                                         make_proxy: Callable[[int], FaultProxy], figure: Figure) -> None:
    """Connection refused for 6 s (a link with no route): recovery is bounded by --max-backoff."""
    deployment.options.append("--log-format=json")
    deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, "--max-backoff=2", url=_via(proxy, "BUS1"))
    proxy.refuse()
    proxy.cut()
    wait_for(lambda: not _connected(deployment), 5, "the server to see the agent go")
    time.sleep(6)  # the scenario: 6 s of refused connections, several backoff rounds
    assert len(agent.find_lines("reconnecting in")) >= 3
    proxy.forward()
    back_at = time.monotonic()
    wait_for(lambda: _connected(deployment), 10, "the agent to reattach")
    recovered = time.monotonic() - back_at
    assert recovered < 2 + SLACK, recovered
    _echo_ok(deployment.services["BUS1"], os.urandom(1 << 20))
    figure("link refusing connections for 6 s",
           "agent back within --max-backoff (2 s here; default 30 s) after the link is",
           f"reattached {recovered:.2f} s after the link came back", recovered=recovered)


# -- the processes -------------------------------------------------------------------------------


def test_server_sigkill_and_restart(deployment: Deployment, echo: Service, figure: Figure) -> None:
    deployment.extra_config += RESUME_OFF  # protocol v1: a lost link ends the streams (see test_sessions.py)
    deployment.options.append("--log-format=json")
    server = deployment.start_server()
    agent = deployment.start_agent("BUS1", echo.port)
    port = deployment.services["BUS1"]
    _echo_ok(port, os.urandom(2 << 20))
    exchanges = _start_exchanges(deployment, echo, 4, 4 << 20)

    mark = agent.mark()
    server.kill()
    killed_at = time.monotonic()
    latest, outcomes = _check_interrupted(exchanges, 10)
    users_closed = _since(latest, killed_at)
    wait_for(lambda: echo.open_count() == 0, 5, "the agent to close its service connections")
    service_closed = time.monotonic() - killed_at
    time.sleep(1.0)  # the server stays down a moment
    restarting_at = time.monotonic()
    deployment.start_server()
    up_at = time.monotonic()
    wait_for(lambda: _connected(deployment), 15, f"the agent to reattach: {agent.log()[-1500:]}")
    reattached = time.monotonic()
    after_up = reattached - up_at
    assert users_closed < 2, users_closed
    # The agent was waiting out one of its backoff delays when the server came back: it must not
    # take longer than that delay (plus the handshake).
    delays = [float(d) for line in agent.find_lines("reconnecting in", since=mark)
              for d in re.findall(r"reconnecting in ([0-9.]+) s", line["message"])]
    assert delays, agent.lines()[mark:]
    assert after_up < max(delays) + 0.5, (after_up, delays)
    _echo_ok(port, os.urandom(4 << 20))
    figure("v1 (resume_seconds = 0): server SIGKILL, restarted after 1 s",
           "no user hangs; agent reattaches by itself within its backoff; later transfers byte-exact",
           f"users closed {users_closed:.2f} s after the kill ({outcomes}), service side {service_closed:.2f} s; "
           f"server up again after {up_at - restarting_at:.1f} s, agent attached {after_up:.2f} s later "
           f"({reattached - killed_at:.1f} s after the kill; its backoff delays were {delays} s)",
           users_closed=users_closed, service_closed=service_closed, server_start=up_at - restarting_at,
           reattached_after_up=after_up, total=reattached - killed_at)


def test_agent_sigkill_and_restart(deployment: Deployment, echo: Service, figure: Figure) -> None:
    deployment.extra_config += RESUME_OFF  # protocol v1: a lost link ends the streams (see test_sessions.py)
    deployment.start_server()
    agent = deployment.start_agent("BUS1", echo.port)
    port = deployment.services["BUS1"]
    _echo_ok(port, os.urandom(2 << 20))
    exchanges = _start_exchanges(deployment, echo, 4, 4 << 20)

    agent.kill()
    killed_at = time.monotonic()
    latest, outcomes = _check_interrupted(exchanges, 10)
    users_closed = _since(latest, killed_at)
    wait_for(lambda: not _connected(deployment), 5, "the server to notice")
    server_noticed = time.monotonic() - killed_at
    # A user arriving while no agent is attached waits (agent_wait_seconds, 5 s) for the restarted agent.
    waiting = Exchange(port, os.urandom(64 * 1024), timeout=20)
    restart_at = time.monotonic()
    deployment.start_agent("BUS1", echo.port)
    attached = time.monotonic() - restart_at
    assert waiting.join() == "complete", waiting.outcome
    assert sha256(bytes(waiting.received)) == sha256(waiting.payload)
    assert users_closed < 2, users_closed
    _echo_ok(port, os.urandom(4 << 20))
    figure("v1 (resume_seconds = 0): agent SIGKILL, restarted",
           "no user hangs; a user arriving meanwhile waits for the new agent (agent_wait_seconds 5 s)",
           f"users closed {users_closed:.2f} s after the kill ({outcomes}), server noticed after "
           f"{server_noticed:.2f} s; restarted agent attached {attached:.2f} s after its start "
           "(process start-up included); the waiting user was served, byte-exact",
           users_closed=users_closed, server_noticed=server_noticed, restart_to_attached=attached)


def test_server_sigterm_closes_listeners_agents_get_1001(deployment: Deployment, echo: Service,
                                                         figure: Figure) -> None:
    deployment.services["FAKE"] = free_port()
    deployment.write_config()
    deployment.options.append("--log-format=json")
    server = deployment.start_server()
    agent = deployment.start_agent("BUS1", echo.port)
    port = deployment.services["BUS1"]
    exchanges = _start_exchanges(deployment, echo, 2, 4 << 20)

    async def scenario() -> tuple[int | None, str, float, float]:
        ws = await fake_agent(deployment.url("FAKE"))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: wait_for(lambda: _connected(deployment, "FAKE"), 5,
                                                          "the fake agent to be attached"))
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        await ws.wait_closed()
        closed = time.monotonic() - started
        code = await loop.run_in_executor(None, server.proc.wait, 10)
        return ws.close_code, ws.close_reason or "", closed, time.monotonic() - started if code == 0 else -1.0

    code, reason, fake_closed, exited = asyncio.run(scenario())
    assert server.proc.returncode == 0
    assert code == 1001 and reason == "server shutting down", (code, reason)
    assert 0 <= exited < 3, exited
    latest, outcomes = _check_interrupted(exchanges, 5)
    for listening in (port, deployment.services["FAKE"], deployment.http_port):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", listening)) != 0, f"port {listening} still accepts"
    gone = agent.wait_line("disconnected after", close_code=1001)
    assert "server shutting down" in gone["reason"], gone
    assert agent.proc.poll() is None  # it keeps trying to reconnect
    figure("server SIGTERM",
           "listeners close, agents get 1001, exit 0 within a few seconds",
           f"agents got 1001 'server shutting down' after {fake_closed:.2f} s, exit code 0 after {exited:.2f} s; "
           f"users closed ({outcomes}); service and HTTP ports refuse connections",
           agent_closed=fake_closed, exited=exited)


def test_agent_sigterm_exits_0_and_server_sees_1001(deployment: Deployment, echo: Service,
                                                    make_proxy: Callable[[int], FaultProxy], figure: Figure) -> None:
    deployment.start_server()
    agent = deployment.start_agent("BUS1", echo.port)
    exchanges = _start_exchanges(deployment, echo, 2, 4 << 20)
    started = time.monotonic()
    agent.signal(signal.SIGTERM)
    agent.proc.wait(10)
    exited = time.monotonic() - started
    assert agent.proc.returncode == 0
    assert exited < 3, exited
    _check_interrupted(exchanges, 5)
    wait_for(lambda: not _connected(deployment), 5, "the server to see the agent go")
    reason = deployment.status()["BUS1"]["last_disconnect_reason"]
    assert reason == "closed with code 1001 agent shutting down", reason
    wait_for(lambda: echo.open_count() == 0, 5, "the service connections to close")

    # Also when the agent is between attempts (server gone) or stuck in a handshake (frozen link).
    proxy = make_proxy(free_port())  # forwards to a port where nothing listens
    idle = deployment.start_agent("BUS1", echo.port, wait=False, url=_via(proxy, "BUS1"))
    idle.wait_log("reconnecting in")
    started = time.monotonic()
    idle.signal(signal.SIGTERM)
    idle.proc.wait(10)
    backing_off_exit = time.monotonic() - started
    assert idle.proc.returncode == 0 and backing_off_exit < 3
    proxy.freeze()
    stuck = deployment.start_agent("BUS1", echo.port, wait=False, url=_via(proxy, "BUS1"))
    wait_for(lambda: proxy.accepted >= 2 and "starting" in stuck.log(), 10, "the handshake to hang")
    time.sleep(0.5)  # the scenario: the agent has been stuck in its handshake for a while (nothing to observe)
    started = time.monotonic()
    stuck.signal(signal.SIGTERM)
    stuck.proc.wait(10)
    stuck_exit = time.monotonic() - started
    assert stuck.proc.returncode == 0 and stuck_exit < 3
    figure("agent SIGTERM",
           "server gets 1001, agent exits 0 within a few seconds, also between attempts or mid-handshake",
           f"exit 0 after {exited:.2f} s (attached), {backing_off_exit:.2f} s (backing off), {stuck_exit:.2f} s "
           "(handshake hanging); server recorded 'closed with code 1001 agent shutting down'",
           attached=exited, backing_off=backing_off_exit, mid_handshake=stuck_exit)


# -- the local service -----------------------------------------------------------------------------


def test_local_service_resets_mid_stream(deployment: Deployment, figure: Figure) -> None:
    resetting = Service("reset_after", reset_after=200_000)
    greeting = os.urandom(1 << 20)
    downloading = Service("greet_then_reset", greeting=greeting, reset_delay=0.5)
    try:
        deployment.services["DOWN"] = free_port()
        deployment.write_config()
        server = deployment.start_server()
        agent = deployment.start_agent("BUS1", resetting.port)
        deployment.start_agent("DOWN", downloading.port)
        port = deployment.services["BUS1"]

        # An uploading user: the service resets after 200 kB.
        exchange = Exchange(port, os.urandom(2 << 20), timeout=10)
        wait_for(lambda: resetting.resets == 1, 10, "the service to reset the connection")
        reset_at = time.monotonic()
        outcome = exchange.join()
        assert outcome in ("eof", "reset"), outcome
        assert exchange.intact()
        assert exchange.closed_at is not None
        user_closed = _since(exchange.closed_at, reset_at)
        assert user_closed < 1, user_closed
        agent.wait_log("reset, local side: ConnectionResetError")
        server.wait_log("reset by peer: ConnectionResetError")

        # A downloading user: 1 MiB arrives, then the service resets.
        with socket.create_connection(("127.0.0.1", deployment.services["DOWN"])) as user:
            took, seen, data = read_until_closed(user, 10)
        assert data == greeting, "the bytes sent before the reset must all arrive, exactly"
        assert 0.3 < took < 0.5 + SLACK, took

        # The agent and its other streams carry on.
        _echo_ok(port, os.urandom(50_000))
        assert deployment.status()["BUS1"]["connected"]
        figure("local service resets a connection mid-stream",
               "the user's connection is closed; the tunnel and other streams carry on",
               f"uploading user closed ({outcome}) {user_closed:.3f} s after the reset, received bytes exact; "
               f"downloading user got its 1 MiB exactly, then saw {'a clean EOF (not a reset)' if seen == 'eof' else 'a reset'}; "
               "server logs 'reset by peer: ConnectionResetError'",
               user_closed=user_closed, uploader_saw=outcome, downloader_saw=seen)
    finally:
        resetting.close()
        downloading.close()


def test_local_service_never_answers(deployment: Deployment, figure: Figure) -> None:
    silent = Service("silent")
    try:
        deployment.extra_config = "open_timeout_seconds = 1"  # must not fire: the dial succeeded
        deployment.write_config()
        server = deployment.start_server()
        deployment.start_agent("BUS1", silent.port)
        user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
        user.sendall(os.urandom(100_000))
        assert still_open(user, 3.0), "the user was closed although the service is merely silent"
        assert silent.open_count() == 1 and silent.bytes_received == 100_000
        assert deployment.status()["BUS1"]["client_connection_count"] == 1
        user.sendall(b"more")
        wait_for(lambda: silent.bytes_received == 100_004, 5, "the service to get more bytes")
        user.close()
        closed_at = time.monotonic()
        wait_for(lambda: silent.open_count() == 0, 5, "the service side to be closed")
        service_closed = time.monotonic() - closed_at
        wait_for(lambda: deployment.status()["BUS1"]["client_connection_count"] == 0, 5, "the stream to end")
        assert "did not connect" not in server.log()
        figure("local service accepts but never answers",
               "the user stays connected; closing the user closes the service side",
               f"user still open after 3 s (open timeout 1 s did not fire); service side closed "
               f"{service_closed:.3f} s after the user closed",
               service_closed=service_closed)
    finally:
        silent.close()


@pytest.mark.parametrize("dial_timeout", [1.5, pytest.param(None, marks=pytest.mark.heavy, id="default")])
def test_dial_to_blackholed_address_times_out(deployment: Deployment, figure: Figure,
                                              dial_timeout: float | None) -> None:
    blackhole = Blackhole()
    try:
        assert blackhole.dial_hangs()
        deployment.options.append("--log-format=json")
        server = deployment.start_server()
        flags = [f"--dial-timeout={dial_timeout:g}"] if dial_timeout else []
        expected = dial_timeout or 10.0
        agent = deployment.start_agent("BUS1", blackhole.port, *flags)
        user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
        user.sendall(b"hello?")
        took, how, data = read_until_closed(user, expected + 10)
        user.close()
        assert data == b""
        assert expected - 0.1 < took < expected + SLACK, took
        line = f"dial 127.0.0.1:{blackhole.port} timed out after {expected:g} s"
        agent.wait_line(line, service="BUS1")
        assert f"reset by peer: {line}" in server.wait_line(line, failure="dial_failed")["reason"]
        assert deployment.status()["BUS1"]["connected"]
        figure(f"dial to a blackholed address (SYNs dropped), --dial-timeout {'default' if not dial_timeout else dial_timeout}",
               "--dial-timeout (default 10 s) closes the user's connection, with a log line naming the timeout",
               f"--dial-timeout={expected:g}: user closed ({how}) after {took:.2f} s; agent and server log '{line}'",
               user_closed=took, dial_timeout=expected)
    finally:
        blackhole.close()


@pytest.mark.parametrize("open_timeout", [1.0, pytest.param(None, marks=pytest.mark.heavy, id="default")])
def test_agent_that_never_answers_open(deployment: Deployment, figure: Figure, open_timeout: float | None) -> None:
    expected = open_timeout or 15.0
    if open_timeout:
        deployment.extra_config = f"open_timeout_seconds = {open_timeout:g}"
    deployment.write_config()
    deployment.options.append("--log-format=json")
    server = deployment.start_server()
    why = f"the agent did not connect to its service within {expected:g} s"

    async def scenario() -> tuple[float, str, str, bool]:
        ws = await fake_agent(deployment.url("BUS1"))
        loop = asyncio.get_running_loop()
        user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
        user.sendall(b"anyone?")
        opened = decode(await asyncio.wait_for(ws.recv(), 5))
        assert opened.type is FrameType.OPEN and opened.stream_id == 1
        took, how, data = await loop.run_in_executor(None, read_until_closed, user, expected + 10)
        user.close()
        assert data == b""
        frames = []
        while True:  # DATA "anyone?" may come first; then the RST
            frame = decode(await asyncio.wait_for(ws.recv(), 5))
            frames.append(frame)
            if frame.type is FrameType.RST:
                break
        alive = ws.state.name == "OPEN"
        await ws.close()
        return took, how, frames[-1].text, alive

    took, how, reason, alive = asyncio.run(scenario())
    assert expected - 0.1 < took < expected + SLACK, took
    assert reason == why, reason
    assert alive  # not a protocol error: only that stream ends
    assert server.wait_line(why, failure="open_timeout")["reason"] == why
    figure(f"agent never answers OPEN, open_timeout_seconds {'default' if not open_timeout else open_timeout}",
           "the user is closed after open_timeout_seconds (default 15 s), the agent gets RST",
           f"open_timeout_seconds = {expected:g}: user closed ({how}) after {took:.2f} s; agent got RST "
           f"'{reason}'; its WebSocket stays open",
           user_closed=took, open_timeout=expected)


def test_abort_mid_download_reaches_the_user_as_a_reset(deployment: Deployment, figure: Figure) -> None:
    """A user who only reads cannot tell a cut-short download from a complete one unless it sees a reset.

    Directly connected to a service that resets, or across a link that dies, a TCP client gets
    ECONNRESET. Through the tunnel it must get the same, not a FIN (clean end of stream).
    """
    deployment.extra_config += RESUME_OFF  # protocol v1: a lost link ends the streams (see test_sessions.py)
    greeting = os.urandom(4 << 20)
    downloading = Service("greet_then_reset", greeting=greeting, reset_delay=0.5)
    try:
        deployment.start_server()
        agent = deployment.start_agent("BUS1", downloading.port)
        # 1. the service resets while the user is slow to read
        user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
        user.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        wait_for(lambda: downloading.resets == 1, 10, "the service to reset")
        time.sleep(0.5)  # the scenario: the user is slow to read, the reset arrives behind unread bytes
        _, service_reset_seen, data = read_until_closed(user, 10)
        user.close()
        assert greeting.startswith(data)
        # 2. the agent dies while the user is slow to read
        downloading.reset_delay = 60
        user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
        user.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        wait_for(lambda: downloading.accepted == 2, 10, "the second download to start")
        time.sleep(0.5)  # the scenario: the user is slow to read, its buffers fill up
        agent.kill()
        wait_for(lambda: not _connected(deployment), 5, "the server to notice the agent is gone")
        _, agent_killed_seen, data2 = read_until_closed(user, 10)
        user.close()
        assert greeting.startswith(data2)
        figure("v1 (resume_seconds = 0): download cut short (service reset / agent killed)",
               "the user sees a reset, never a clean EOF, when the stream did not end normally",
               f"service reset: user saw {service_reset_seen} after {len(data)} of {len(greeting)} bytes; "
               f"agent killed: user saw {agent_killed_seen} after {len(data2)} bytes")
        assert service_reset_seen == "reset", f"service reset reached the user as {service_reset_seen}"
        assert agent_killed_seen == "reset", f"agent death reached the user as {agent_killed_seen}"
    finally:
        downloading.close()
