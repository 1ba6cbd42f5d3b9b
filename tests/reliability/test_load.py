"""Load: many concurrent streams, many short connections, many idle agents, and the stream limit."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time

import pytest

from reverse_websockify.protocol import FrameType, decode
from tests.support.clients import read_until_closed, sha256
from tests.support.deployment import Deployment
from tests.support.ports import free_port, free_ports
from tests.support.probes import cpu_seconds, fd_count, rss_kib
from tests.support.services import Service
from tests.support.waiting import wait_for
from tests.support.websocket import fake_agent
from tests.reliability.conftest import Figure
from tests.support.loops import LoopThread


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
def test_1000_concurrent_streams_through_one_agent(deployment: Deployment, echo: Service, figure: Figure) -> None:
    streams, size = 1000, 32 * 1024
    server = deployment.start_server()
    agent = deployment.start_agent("BUS1", echo.port)
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
            lambda: echo.open_count() == streams, 60, f"{streams} service connections"))
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
    bad = [i for i, (sent, got) in enumerate(zip(payloads, results)) if sha256(got) != sha256(sent)]
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


def _settled(deployment: Deployment, echo: Service) -> None:
    wait_for(lambda: deployment.status()["BUS1"]["client_connection_count"] == 0 and echo.open_count() == 0,
             30, "every stream to end")
    time.sleep(0.5)  # part of the measurement: fds and RSS read once the closes are released


@pytest.mark.heavy
def test_20000_short_connections_leak_no_fds_or_memory(deployment: Deployment, echo: Service,
                                                       figure: Figure) -> None:
    total, warmup, workers = 20000, 2000, 4
    server = deployment.start_server()  # default log level: INFO, a few lines per connection
    agent = deployment.start_agent("BUS1", echo.port)
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
    _settled(deployment, echo)
    before = {"server_fd": fd_count(server.pid), "agent_fd": fd_count(agent.pid),
              "server_rss": rss_kib(server.pid), "agent_rss": rss_kib(agent.pid)}
    took = run(total)
    _settled(deployment, echo)
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


@pytest.mark.heavy
def test_500_idle_agents_memory_and_cpu(tmp_path, echo: Service, figure: Figure) -> None:
    """500 services, each with an attached agent: 10 real agent processes and 490 in-test fake agents.

    A real agent process takes about 25 MB, so 500 of them do not fit a 2-core test machine. The
    fake agents speak the real handshake (subprotocol reverse-websockify.v1, User-Agent, no
    compression) with the websockets library, answer and send pings like a real agent (8 s / 10 s),
    and otherwise idle, which is what the server sees of an idle agent.
    """
    total, real = 500, 10
    ports = free_ports(total + 1)
    services = {f"BUS{i:03d}": ports[i] for i in range(total)}
    deployment = Deployment(tmp=tmp_path, services=services, http_port=ports[total])
    loop = LoopThread("fake-agents")
    fakes: list = []
    try:
        server = deployment.start_server()
        time.sleep(1.0)  # part of the measurement: the base RSS of a server that finished starting
        base_rss, base_fds = rss_kib(server.pid), fd_count(server.pid)
        ids = list(services)
        started = time.monotonic()
        agents = [deployment.start_agent(sid, echo.port, wait=False) for sid in ids[:real]]

        async def attach_fakes() -> list:
            gate = asyncio.Semaphore(50)

            async def one(sid: str):
                async with gate:
                    return await fake_agent(deployment.url(sid), ping_interval=8, ping_timeout=10)

            return list(await asyncio.gather(*(one(sid) for sid in ids[real:])))

        fakes = loop.run(attach_fakes(), 120)
        wait_for(lambda: sum(s["connected"] for s in deployment.status().values()) == total, 60,
                 f"{total} agents attached")
        attach_time = time.monotonic() - started
        time.sleep(3.0)  # let start-up garbage settle
        gc.collect()
        rss, fds = rss_kib(server.pid), fd_count(server.pid)
        per_agent_kib = (rss - base_rss) / total
        cpu0, agent_cpu0, t0 = cpu_seconds(server.pid), cpu_seconds(agents[0].pid), time.monotonic()
        time.sleep(10.0)  # the measurement: CPU time over 10 s of idling
        cpu1, agent_cpu1, t1 = cpu_seconds(server.pid), cpu_seconds(agents[0].pid), time.monotonic()
        server_cpu = 100 * (cpu1 - cpu0) / (t1 - t0)
        agent_cpu = 100 * (agent_cpu1 - agent_cpu0) / (t1 - t0)
        agent_rss = rss_kib(agents[0].pid)

        status_started = time.monotonic()
        snapshot = deployment.status()
        status_time = time.monotonic() - status_started
        assert all(s["connected"] for s in snapshot.values())
        assert all(ws.state.name == "OPEN" for ws in fakes)  # nobody was dropped by keepalive
        # Real traffic through one of the real agents while the 500 are attached.
        payload = os.urandom(4 << 20)

        async def echo() -> bytes:
            return await _exchange(services[ids[0]], payload)

        assert sha256(asyncio.run(echo())) == sha256(payload)
        assert per_agent_kib < 200, per_agent_kib
        assert server_cpu < 10, server_cpu
        figure(f"{total} idle agents on one server ({real} real agent processes + {total - real} fake)",
               "memory per idle agent and CPU while idle, measured",
               f"server RSS {base_rss / 1024:.0f} → {rss / 1024:.0f} MiB: {per_agent_kib:.0f} KiB per idle agent "
               f"(fds {base_fds} → {fds}); server CPU while idle {server_cpu:.1f} % of one core (pings every 8 s); "
               f"all attached in {attach_time:.1f} s; status page for {total} services in {status_time * 1000:.0f} ms; "
               f"one agent process: RSS {agent_rss / 1024:.0f} MiB, idle CPU {agent_cpu:.2f} %",
               per_agent_kib=per_agent_kib, server_cpu_percent=server_cpu, base_rss_kib=base_rss, rss_kib=rss,
               fds=fds, attach_seconds=attach_time, status_seconds=status_time, agent_rss_kib=agent_rss,
               agent_cpu_percent=agent_cpu)
    finally:
        async def close_fakes() -> None:
            await asyncio.gather(*(ws.close() for ws in fakes), return_exceptions=True)

        try:
            loop.run(close_fakes(), 30)
        except Exception:  # noqa: BLE001 — teardown
            pass
        loop.stop()
        deployment.stop()


def test_max_streams_per_agent_and_pending_opens(deployment: Deployment, echo: Service, figure: Figure) -> None:
    limit = 5
    deployment.services["SILENT"] = free_port()
    deployment.extra_config = f"max_streams_per_agent = {limit}\nopen_timeout_seconds = 3"
    deployment.write_config()
    deployment.options.append("--log-format=json")
    server = deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    port = deployment.services["BUS1"]

    # Established streams.
    users = [socket.create_connection(("127.0.0.1", port)) for _ in range(limit)]
    for user in users:
        user.sendall(b"hi")
        user.settimeout(5)
        assert user.recv(2) == b"hi"
    extra = socket.create_connection(("127.0.0.1", port))
    early_reset = False
    try:
        extra.sendall(b"let me in")
    except OSError:
        early_reset = True  # refused so fast that the reset came first (recv then reports EOF)
    took, seen, data = read_until_closed(extra, 5)
    seen = "reset" if early_reset else seen
    extra.close()
    assert data == b"" and took < 1, (took, data)
    line = f"service BUS1: {limit} streams open, the limit; refusing user"
    server.wait_line(line, failure="too_many_streams")
    for user in users:  # the others are untouched
        user.sendall(b"still")
        assert user.recv(5) == b"still"
    users.pop().close()
    wait_for(lambda: deployment.status()["BUS1"]["client_connection_count"] == limit - 1, 5, "one stream to end")
    again = socket.create_connection(("127.0.0.1", port))
    again.sendall(b"now?")
    again.settimeout(5)
    assert again.recv(4) == b"now?"
    again.close()
    for user in users:
        user.close()

    # Pending opens (OPEN sent, no OPEN_OK yet) count against the same limit.
    async def pending() -> tuple[float, float]:
        ws = await fake_agent(deployment.url("SILENT"))
        loop = asyncio.get_running_loop()
        waiting = [socket.create_connection(("127.0.0.1", deployment.services["SILENT"])) for _ in range(limit)]
        for _ in range(limit):
            assert decode(await asyncio.wait_for(ws.recv(), 5)).type is FrameType.OPEN
        over = socket.create_connection(("127.0.0.1", deployment.services["SILENT"]))
        took, _, _ = await loop.run_in_executor(None, read_until_closed, over, 5)
        over.close()
        started = time.monotonic()
        for user in waiting:
            await loop.run_in_executor(None, read_until_closed, user, 10)
            user.close()
        expired = time.monotonic() - started
        await ws.close()
        return took, expired

    refused_pending, expired = asyncio.run(pending())
    assert refused_pending < 1
    assert 2 < expired < 3 + 1.5
    assert len(server.find_lines("streams open, the limit; refusing user", failure="too_many_streams")) == 2
    figure("max_streams_per_agent reached",
           "further users are closed at once, with a log line; pending opens count too",
           f"limit {limit}: user {limit + 1} closed ({seen}, no data) after {took * 1000:.0f} ms; server logs "
           f"'{line} 127.0.0.1:…'; the {limit} open streams carry on, a new user gets in once one ends; "
           f"with {limit} opens pending (agent silent) the next user is closed after {refused_pending * 1000:.0f} ms "
           f"and the pending ones after open_timeout_seconds (3 s here)",
           refused_after=took, refused_pending_after=refused_pending)


def test_users_waiting_for_an_agent_are_limited(deployment: Deployment, figure: Figure) -> None:
    """Pending opens while no agent is attached count against max_streams_per_agent too.

    Otherwise anyone who can reach a service port while its bus is offline holds a server socket
    per connection for agent_wait_seconds, without limit, and no log line says so.
    """
    limit = 5
    deployment.extra_config = f"max_streams_per_agent = {limit}\nagent_wait_seconds = 5"
    deployment.write_config()
    server = deployment.start_server()
    port = deployment.services["BUS1"]
    waiting = [socket.create_connection(("127.0.0.1", port)) for _ in range(limit)]
    wait_for(lambda: deployment.status()["BUS1"]["client_connection_count"] == limit, 5, f"{limit} users waiting")
    extra = socket.create_connection(("127.0.0.1", port))
    took, seen, _ = read_until_closed(extra, 10)
    extra.close()
    for user in waiting:
        user.close()
    figure("users waiting for an agent beyond max_streams_per_agent",
           "closed at once with a log line, like any stream over the limit",
           f"user {limit + 1} closed ({seen}) after {took:.2f} s (agent_wait_seconds = 5)", closed_after=took)
    assert took < 1, f"user {limit + 1} was held {took:.1f} s instead of being refused"
    assert "limit" in server.log()


def _fd_limit_lines(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "EMFILE" in line or "Too many open files" in line or "file descriptor" in line
            or "out of system resource" in line]


def _server_with_fd_limit(deployment: Deployment, nofile: int) -> None:
    """Start the server under RLIMIT_NOFILE = ``nofile`` (set in a tiny Python launcher, then exec)."""
    import sys

    from tests.support.processes import Process
    from tests.support.programs import SERVER_NAME, command

    deployment.write_config()
    target = command(SERVER_NAME) + [str(deployment.config_path)]
    if target[0] == sys.executable:
        target[0] = os.path.realpath(sys.executable)
    launcher = (f"import os, resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
                f"os.execv({target[0]!r}, {target!r})")
    deployment.server = Process([sys.executable, "-c", launcher], deployment.tmp / "server-fdlimit.log")
    wait_for(deployment._http_up, 15, "the server to start")


@pytest.mark.heavy
def test_connection_flood_beyond_the_fd_limit(deployment: Deployment, echo: Service, figure: Figure) -> None:
    """300 users hold connections to a service whose agent is offline, on a server limited to 128 fds.

    The server must stay up, keep relaying the streams it has, and recover by itself once the
    flood stops. (The packaged systemd unit sets LimitNOFILE=65536; 128 makes the limit reachable.)
    """
    deployment.services["OFFLINE"] = free_port()
    deployment.extra_config = "agent_wait_seconds = 5"
    _server_with_fd_limit(deployment, 128)
    server = deployment.server
    assert server is not None
    deployment.start_agent("BUS1", echo.port)
    user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
    user.settimeout(5)
    user.sendall(b"before")
    assert user.recv(6) == b"before"

    flood = [socket.create_connection(("127.0.0.1", deployment.services["OFFLINE"]), timeout=5) for _ in range(300)]
    time.sleep(1.0)  # the scenario: the flood is held a while before the established stream is used
    during = []
    for _ in range(3):  # the established stream keeps working while the server is out of fds
        user.sendall(b"during")
        during.append(user.recv(6) == b"during")
        time.sleep(0.3)  # the scenario: use the established stream three times over the flood
    flood_started = time.monotonic()
    for s in flood:
        s.close()
    released = time.monotonic()

    def serving() -> bool:
        try:
            return bool(deployment.status()["BUS1"]["connected"])
        except OSError:
            return False

    wait_for(serving, 30, "the status page to answer again")
    recovered = time.monotonic() - released
    late = deployment.start_agent("OFFLINE", echo.port)
    payload = os.urandom(1 << 20)
    exchange_ok = sha256(asyncio.run(_exchange(deployment.services["OFFLINE"], payload))) == sha256(payload)
    user.sendall(b"after")
    assert user.recv(5) == b"after"
    user.close()
    assert server.proc.poll() is None, "the server died"
    assert all(during), "the established stream stalled during the flood"
    assert exchange_ok and late.proc.poll() is None
    errors = len(_fd_limit_lines(server.log()))
    figure("300-connection flood on a server limited to 128 fds",
           "server stays up, keeps its streams, recovers by itself",
           f"established stream kept working; status page back {recovered:.1f} s after the flood ended; a new "
           f"agent then attached and moved 1 MiB byte-exact; {errors} log lines about the fd limit (EMFILE) "
           "(hung-up waiting users are only noticed when agent_wait_seconds ends: reading is paused)",
           recovered=recovered, accept_errors=errors, flood_seconds=released - flood_started)


def test_running_out_of_fds_is_logged_once_in_a_while(deployment: Deployment, figure: Figure) -> None:
    deployment.services["OFFLINE"] = free_port()
    deployment.extra_config = "agent_wait_seconds = 3"
    _server_with_fd_limit(deployment, 64)
    server = deployment.server
    assert server is not None
    started = time.monotonic()
    flood = [socket.create_connection(("127.0.0.1", deployment.services["OFFLINE"]), timeout=5) for _ in range(100)]
    time.sleep(3.0)  # the scenario: out of fds for 3 s, to count how often that is logged
    for s in flood:
        s.close()
    seconds = time.monotonic() - started
    lines = _fd_limit_lines(server.log())
    figure("server out of file descriptors (limit 64, 100 connections held for 3 s)",
           "a clear log line, repeated at most about once a second",
           f"{len(lines)} log lines about it in {seconds:.1f} s", lines=len(lines))
    assert server.proc.poll() is None
    assert 1 <= len(lines) <= 3 * seconds, f"{len(lines)} log lines about the fd limit in {seconds:.1f} s"
