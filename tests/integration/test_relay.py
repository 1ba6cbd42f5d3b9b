"""Bytes through the real server and agent, hash-checked, and flow control under a slow reader."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tests.support.clients import sha256, transfer
from tests.support.deployment import Deployment
from tests.support.ports import free_port
from tests.support.services import Service
from tests.support.waiting import wait_for


def test_64_mib_each_way_through_one_stream(deployment: Deployment, echo: Service) -> None:
    deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    payload = os.urandom(64 * 1024 * 1024)
    back = transfer(deployment.services["BUS1"], payload)
    assert len(back) == len(payload)
    assert sha256(back) == sha256(payload)
    status = wait_for(lambda: (s := deployment.status()["BUS1"])["client_connection_count"] == 0 and s, 5,
                      "the stream to end")
    assert status["bytes_to_service"] == len(payload)
    assert status["bytes_from_service"] == len(payload)
    assert status["streams_opened_total"] == 1


def test_50_concurrent_streams_of_1_mib(deployment: Deployment, echo: Service) -> None:
    deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    payloads = [os.urandom(1024 * 1024) for _ in range(50)]
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda p: transfer(deployment.services["BUS1"], p, chunk=64 * 1024), payloads))
    for sent, got in zip(payloads, results):
        assert sha256(got) == sha256(sent)
    assert deployment.status()["BUS1"]["streams_opened_total"] == 50


def test_half_close_request_then_full_reply(deployment: Deployment, tmp_path) -> None:
    """A user sends a request, shuts down writing, and must still get the whole reply."""
    reply = os.urandom(3 * 1024 * 1024 + 17)
    listener = socket.create_server(("127.0.0.1", 0))
    got_request = bytearray()

    def service() -> None:
        conn, _ = listener.accept()
        with conn:
            while chunk := conn.recv(65536):  # read until the user's FIN arrives
                got_request.extend(chunk)
            conn.sendall(reply)  # answer only after the request is complete

    thread = threading.Thread(target=service, daemon=True)
    thread.start()
    deployment.start_server()
    deployment.start_agent("BUS1", listener.getsockname()[1])
    with socket.create_connection(("127.0.0.1", deployment.services["BUS1"]), timeout=20) as user:
        user.sendall(b"GET everything\n")
        user.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := user.recv(1 << 20):
            received.extend(chunk)
    thread.join(5)
    listener.close()
    assert bytes(got_request) == b"GET everything\n"
    assert sha256(bytes(received)) == sha256(reply)


def test_slow_reader_stalls_only_its_own_stream(deployment: Deployment, tmp_path) -> None:
    """One user never reads while the service floods it; another stream still moves 32 MiB."""
    flood_started = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener_port = listener.getsockname()[1]
    echo = Service()

    def flooding_service() -> None:
        conn, _ = listener.accept()
        conn.settimeout(60)
        flood_started.set()
        chunk = b"x" * 65536
        try:
            while True:
                conn.sendall(chunk)  # blocks once the tunnel stops taking bytes
        except OSError:
            pass

    threading.Thread(target=flooding_service, daemon=True).start()
    deployment.services["FAST"] = free_port()
    deployment.write_config()
    deployment.start_server()
    deployment.start_agent("BUS1", listener_port)
    deployment.start_agent("FAST", echo.port)
    slow_user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
    slow_user.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        flood_started.wait(10)
        time.sleep(1.0)  # let the slow stream fill every buffer and run out of credit
        server, agent_slow = deployment.server, deployment.agents[0]
        assert server is not None
        rss_before = (server.rss_kib(), agent_slow.rss_kib())
        payload = os.urandom(32 * 1024 * 1024)
        started = time.monotonic()
        back = transfer(deployment.services["FAST"], payload, timeout=60)
        assert sha256(back) == sha256(payload)
        assert time.monotonic() - started < 30
        time.sleep(0.5)  # part of the measurement: RSS once the transfer's buffers are released
        rss_after = (server.rss_kib(), agent_slow.rss_kib())
        # The flooded stream may hold at most its window (1 MiB) plus socket buffers per side.
        for before, after in zip(rss_before, rss_after):
            assert after - before < 24 * 1024, (rss_before, rss_after)
        for process in (server, agent_slow):
            assert process.rss_kib("VmHWM") < 120 * 1024
    finally:
        slow_user.close()
        listener.close()
        echo.close()


def test_user_speaks_first_before_agent_dial_completes(deployment: Deployment, echo: Service) -> None:
    """DATA sent right after connect (before OPEN_OK) is held by the agent and delivered."""
    deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    with socket.create_connection(("127.0.0.1", deployment.services["BUS1"]), timeout=10) as user:
        user.sendall(b"hello-before-open")
        user.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := user.recv(65536):
            data += chunk
    assert data == b"hello-before-open"


def test_status_page_fields(deployment: Deployment, echo: Service) -> None:
    deployment.start_server()
    before = deployment.status()["BUS1"]
    assert before["connected"] is False and before["service_connection_since"] is None
    deployment.start_agent("BUS1", echo.port)
    status = deployment.status()["BUS1"]
    for key in ("nickname", "forward_at", "service_connection_since", "service_connection_info",
                "client_connection_count"):
        assert key in status
    assert status["nickname"] == "nick-BUS1"
    assert status["forward_at"] == f"127.0.0.1:{deployment.services['BUS1']}"
    assert status["connected"] is True
    assert status["agent_version"] and status["agent_version"][0].isdigit()
    assert status["agent_address"].startswith("127.0.0.1:")
    with socket.create_connection(("127.0.0.1", deployment.services["BUS1"])) as user:
        user.sendall(b"ping")
        assert user.recv(4) == b"ping"
        assert deployment.status()["BUS1"]["client_connection_count"] == 1
    request = urllib.request.Request(f"http://127.0.0.1:{deployment.http_port}/", headers={"Accept": "text/html"})
    html = urllib.request.urlopen(request, timeout=5).read().decode()
    assert "<table" in html and "nick-BUS1" in html
