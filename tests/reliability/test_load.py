"""Load: many concurrent streams, many short connections, many idle agents, and the stream limit."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time

import pytest

from reverse_websockify.protocol import FrameType, decode
from tests.harness import Deployment, free_port, wait_for
from tests.reliability.conftest import Figure
from tests.reliability.faultproxy import LoopThread
from tests.reliability.helpers import (
    Service,
    cpu_seconds,
    fake_agent,
    fd_count,
    read_until_closed,
    rss_kib,
    sha,
    still_open,
)


async def _exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await reader.read()
    finally:
        writer.close()


@pytest.mark.heavy
def test_1000_concurrent_streams_through_one_agent(deployment: Deployment, service: Service, figure: Figure) -> None:
    streams, size = 1000, 32 * 1024
    server = deployment.start_server()
    agent = deployment.start_agent("BUS1", service.port)
    port = deployment.services["BUS1"]
    payloads = [os.urandom(size) for _ in range(streams)]

    async def scenario() -> tuple[list[bytes], float, float, int, int, int]:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(200)

        async def open_one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            async with gate:
                return await asyncio.open_connection("127.0.0.1", port)

        started = time.monotonic()
        connections = await asyncio.gather(*(open_one() for _ in range(streams)))
        # All 1,000 are open at once, through the one agent, before any byte flows.
        await loop.run_in_executor(None, lambda: wait_for(
            lambda: service.open_count() == streams, 60, f"{streams} service connections"))
        opened = time.monotonic() - started
        count = deployment.status()["BUS1"]["client_connection_count"]
        server_rss, agent_rss = rss_kib(server.pid), rss_kib(agent.pid)

        async def run(index: int) -> bytes:
            reader, writer = connections[index]
            writer.write(payloads[index])
            await writer.drain()
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 60)
            writer.close()
            return data

        results = await asyncio.gather(*(run(i) for i in range(streams)))
        return results, opened, time.monotonic() - started, count, server_rss, agent_rss

    results, opened, took, count, server_rss, agent_rss = asyncio.run(scenario())
    assert count == streams
    bad = [i for i, (sent, got) in enumerate(zip(payloads, results)) if sha(got) != sha(sent)]
    assert not bad, f"{len(bad)} streams came back different, e.g. #{bad[0]}: {len(results[bad[0]])} bytes"
    wait_for(lambda: deployment.status()["BUS1"]["client_connection_count"] == 0, 30, "every stream to end")
    assert deployment.status()["BUS1"]["streams_opened_total"] == streams
    assert "Traceback" not in server.log() and "Traceback" not in agent.log()
    figure("1,000 concurrent streams through one agent",
           "every stream byte-exact (SHA-256), all open at once",
           f"{streams} streams open together after {opened:.1f} s, {streams} x {size // 1024} KiB echoed and "
           f"hash-checked in {took:.1f} s in total; RSS with all open: server {server_rss // 1024} MiB, "
           f"agent {agent_rss // 1024} MiB",
           streams=streams, size=size, opened=opened, total=took, server_rss_kib=server_rss, agent_rss_kib=agent_rss)


def _short_connection(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := s.recv(65536):
            got.extend(chunk)
    if bytes(got) != payload:
        raise AssertionError(f"short connection got {len(got)} bytes back, not {len(payload)}")


def _settled(deployment: Deployment, service: Service) -> None:
    wait_for(lambda: deployment.status()["BUS1"]["client_connection_count"] == 0 and service.open_count() == 0,
             30, "every stream to end")
    time.sleep(0.5)


@pytest.mark.heavy
def test_20000_short_connections_leak_no_fds_or_memory(deployment: Deployment, service: Service,
                                                       figure: Figure) -> None:
    total, warmup, workers = 20000, 2000, 4
    server = deployment.start_server()  # default log level: INFO, a few lines per connection
    agent = deployment.start_agent("BUS1", service.port)
    port = deployment.services["BUS1"]
    payload = b"0123456789abcdef" * 16  # 256 bytes

    def run(count: int) -> float:
        from concurrent.futures import ThreadPoolExecutor

        started = time.monotonic()
        per_worker = count // workers

        def worker(_: int) -> None:
            for _ in range(per_worker):
                _short_connection(port, payload)

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(worker, range(workers)))
        return time.monotonic() - started

    run(warmup)
    _settled(deployment, service)
    before = {"server_fd": fd_count(server.pid), "agent_fd": fd_count(agent.pid),
              "server_rss": rss_kib(server.pid), "agent_rss": rss_kib(agent.pid)}
    took = run(total)
    _settled(deployment, service)
    after = {"server_fd": fd_count(server.pid), "agent_fd": fd_count(agent.pid),
             "server_rss": rss_kib(server.pid), "agent_rss": rss_kib(agent.pid)}
    status = deployment.status()["BUS1"]
    assert status["streams_opened_total"] == total + warmup
    assert status["connected"]
    assert after["server_fd"] <= before["server_fd"] + 2, (before, after)
    assert after["agent_fd"] <= before["agent_fd"] + 2, (before, after)
    grown = {k: after[k] - before[k] for k in ("server_rss", "agent_rss")}
    assert grown["server_rss"] < 4096 and grown["agent_rss"] < 4096, (before, after)  # KiB
    figure(f"{total:,} short connections in a row ({workers} at a time)",
           "no leaked file descriptors or memory in server and agent",
           f"{total / took:.0f} connections/s ({took:.1f} s); fds server {before['server_fd']} → {after['server_fd']}, "
           f"agent {before['agent_fd']} → {after['agent_fd']}; RSS server {before['server_rss'] / 1024:.1f} → "
           f"{after['server_rss'] / 1024:.1f} MiB, agent {before['agent_rss'] / 1024:.1f} → "
           f"{after['agent_rss'] / 1024:.1f} MiB (after a {warmup:,}-connection warm-up)",
           rate=total / took, seconds=took, before=before, after=after)
