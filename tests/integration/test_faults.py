"""Agents and servers dying, services refusing, IDs unknown, agents replaced, links going silent.

SIGKILL and restart of either program and SIGTERM of either are tests/reliability/test_faults.py's
(with timing figures); this file keeps the scenarios that suite does not have.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.support.clients import read_until_closed, still_open, transfer
from tests.support.deployment import Deployment
from tests.support.ports import free_port
from tests.support.services import Service
from tests.support.waiting import wait_for


def test_local_service_refuses_user_closed_promptly_and_logged(deployment: Deployment) -> None:
    dead_port = free_port()  # nothing listens here
    deployment.options.append("--log-format=json")
    deployment.start_server()
    agent = deployment.start_agent("BUS1", dead_port)
    with socket.create_connection(("127.0.0.1", deployment.services["BUS1"])) as user:
        user.sendall(b"hello")
        assert read_until_closed(user, 5)[0] < 3
    assert deployment.server is not None
    server_line = deployment.server.wait_line("refused", failure="dial_failed", service="BUS1")
    agent_line = agent.wait_line("refused", service="BUS1")
    assert "dial 127.0.0.1:%d failed" % dead_port in agent_line["message"]
    assert "reset by peer: dial 127.0.0.1:%d failed" % dead_port in server_line["reason"]


def test_unknown_id_is_refused_before_upgrade(deployment: Deployment, echo: Service) -> None:
    server = deployment.start_server()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{deployment.http_port}/forward_to_me/NOPE", timeout=5)
    assert refused.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as other:
        urllib.request.urlopen(f"http://127.0.0.1:{deployment.http_port}/elsewhere", timeout=5)
    assert other.value.code == 404
    agent = deployment.start_agent("NOPE", echo.port, wait=False)
    agent.wait_log("HTTP 404")
    server.wait_log("unknown service ID 'NOPE'")
    assert agent.proc.poll() is None  # keeps retrying with backoff


def test_two_live_agents_do_not_fight_and_a_frozen_one_is_replaced(deployment: Deployment) -> None:
    """A second agent for one ID is refused (409) while the first answers pings; once the first
    freezes, the second takes over within seconds and the old session's users are closed."""
    first_service, second_service = Service(), Service()
    try:
        deployment.start_server()
        first = deployment.start_agent("BUS1", first_service.port)
        first_address = deployment.status()["BUS1"]["agent_address"]
        old_user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
        old_user.sendall(b"ping")
        assert old_user.recv(4) == b"ping"
        second = deployment.start_agent("BUS1", second_service.port, "--max-backoff=1", wait=False)
        refused = second.wait_log("HTTP 409", timeout=15)
        assert first_address in refused[refused.index("HTTP 409"):], "the refusal names the attached agent"
        deployment.server.wait_log("refused (409)")
        time.sleep(3)  # the scenario: both alive for a while; the first keeps its ID
        assert deployment.status()["BUS1"]["agent_address"] == first_address
        assert still_open(old_user, 0.2)
        first.signal(signal.SIGSTOP)  # frozen: it cannot answer the probe any more
        try:
            wait_for(lambda: deployment.status()["BUS1"]["agent_address"] not in (None, first_address), 15,
                     "the second agent to take over")
            assert read_until_closed(old_user, 5)[0] < 5  # the old session's streams are closed
        finally:
            first.signal(signal.SIGCONT)
        old_user.close()
        assert transfer(deployment.services["BUS1"], b"new") == b"new"
        assert second_service.accepted == 1 and first_service.accepted == 1
        first.wait_log("replaced by a newer agent")
        assert second.proc.poll() is None
    finally:
        first_service.close()
        second_service.close()


def test_user_waits_for_agent_then_is_closed(deployment: Deployment, echo: Service) -> None:
    deployment.extra_config = "agent_wait_seconds = 1.5"
    deployment.start_server()
    with socket.create_connection(("127.0.0.1", deployment.services["BUS1"])) as user:
        took = read_until_closed(user, 5)[0]
    assert 1.2 < took < 3.5


def test_agent_arriving_during_the_wait_gets_the_waiting_user(deployment: Deployment, echo: Service) -> None:
    deployment.extra_config = "agent_wait_seconds = 15"
    deployment.start_server()
    user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
    user.sendall(b"early bird")
    half_closer = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
    half_closer.sendall(b"request, then FIN")
    half_closer.shutdown(socket.SHUT_WR)  # while no agent is there: the FIN must wait behind the bytes
    wait_for(lambda: deployment.status()["BUS1"]["client_connection_count"] == 2, 5, "both users to be held")
    deployment.start_agent("BUS1", echo.port)
    user.settimeout(5)
    assert user.recv(100) == b"early bird"
    user.close()
    half_closer.settimeout(5)
    received = b""
    while chunk := half_closer.recv(100):
        received += chunk
    assert received == b"request, then FIN"
    half_closer.close()


def test_no_wait_closes_user_at_once(deployment: Deployment) -> None:
    deployment.extra_config = "agent_wait_seconds = 0"
    deployment.start_server()
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", deployment.services["BUS1"])) as user:
            read_until_closed(user, 3)[0]
    except ConnectionResetError:  # reset so fast that connect() itself saw it
        pass
    assert time.monotonic() - started < 1


def test_keepalive_detects_frozen_agent_and_frozen_server(deployment: Deployment, echo: Service) -> None:
    deployment.extra_config = "ping_interval_seconds = 1\nping_timeout_seconds = 1"
    deployment.options.append("--log-format=json")
    server = deployment.start_server()
    agent = deployment.start_agent("BUS1", echo.port, "--ping-interval=1", "--ping-timeout=1")
    user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
    user.sendall(b"x")
    assert user.recv(1) == b"x"
    agent.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        wait_for(lambda: not deployment.status()["BUS1"]["connected"], 10, "server to drop the frozen agent")
        # ping interval 1 s + ping timeout 1 s + closing handshake timeout 2 s, plus scheduling slack
        assert time.monotonic() - started < 7
        assert deployment.status()["BUS1"]["paused_streams"] == 1  # the session waits (resume_seconds)
        assert still_open(user, 1)
    finally:
        agent.signal(signal.SIGCONT)
    wait_for(lambda: deployment.status()["BUS1"]["connected"], 15, "agent to come back")
    user.sendall(b"y")  # the session resumed: the user's connection carries on
    user.settimeout(10)
    assert user.recv(1) == b"y"
    user.close()
    server.signal(signal.SIGSTOP)
    try:
        mark = agent.mark()
        started = time.monotonic()
        agent.wait_line("disconnected after", since=mark, timeout=10)
        assert time.monotonic() - started < 7
    finally:
        server.signal(signal.SIGCONT)


def test_users_resetting_mid_stream_never_break_the_tunnel(deployment: Deployment, echo: Service) -> None:
    """Users that abort (RST) while their stream is half-closed must cost only their own stream."""
    import struct

    server = deployment.start_server()
    agent = deployment.start_agent("BUS1", echo.port)
    for i in range(300):
        user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
        user.sendall(b"x" * 5000)
        user.shutdown(socket.SHUT_WR)  # FIN to the service, which echoes and FINs back
        if i % 3:
            time.sleep(0.001)  # the scenario: vary the timing of the RST against the service's FIN
        user.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        user.close()  # RST while the service's FIN may be in flight
    payload = b"still here" * 1000
    assert transfer(deployment.services["BUS1"], payload) == payload
    assert "tunnel failed" not in server.log() and "Traceback" not in server.log()
    assert "disconnected" not in agent.log()
    assert deployment.status()["BUS1"]["streams_opened_total"] == 301


def test_sigquit_stops_cleanly_like_sigterm(deployment: Deployment, echo: Service) -> None:
    """docker stop in the stock nginx image (the reference compose file) sends SIGQUIT."""
    deployment.options.append("--log-format=json")
    server = deployment.start_server()
    agent = deployment.start_agent("BUS1", echo.port)
    server.signal(signal.SIGQUIT)
    assert server.proc.wait(5) == 0
    agent.wait_line("disconnected after", close_code=1001)
    agent.signal(signal.SIGQUIT)
    assert agent.proc.wait(5) == 0
