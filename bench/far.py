"""Group far: one iperf3 stream over a slow, far link, through the tunnel and directly.

The link is bench/linkemu.py (rate FAR_RATE_MBIT each way, a round trip of 100 or 300 ms). Per
round trip there are three emulators of the same link: one between the agent and the server (the
tunnel's link), one between iperf3's client and server (the direct transfer the tunnel is compared
with) and one in front of an echo service (the ping-pong that validates the delay). Each service
of the far deployment is one round trip; its agent dials the server through that link.
"""

from __future__ import annotations

import socket
import statistics
import time
from typing import TYPE_CHECKING

from bench.fixtures import LinkEmulator, Rendezvous
from bench.progress import progress
from bench.settings import FAR_RATE_MBIT
from bench.tools import iperf3
from tests.support.ports import free_ports
from tests.support.services import Service

if TYPE_CHECKING:
    from bench.scenarios import Bench

PINGS = 10


def ping_pong_ms(port: int, count: int = PINGS) -> float:
    """Median round trip of a 64-byte message to an echo service at 127.0.0.1:port, in ms."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            started = time.monotonic()
            s.sendall(b"p" * 64)
            got = 0
            while got < 64:
                chunk = s.recv(64 - got)
                if not chunk:
                    raise OSError("the echo service closed the connection")
                got += len(chunk)
            times.append(time.monotonic() - started)
    return statistics.median(times) * 1000


def far_link(bench: Bench) -> None:
    s, r = bench.s, bench.results
    if "far" not in s.only:
        return
    progress(f"far link: {FAR_RATE_MBIT} Mbit/s, RTT {', '.join(map(str, s.far_rtts))} ms (bench/linkemu.py)")
    (iperf_port,) = free_ports(1)
    echo = Service()
    sids = {rtt: f"iperf3-{rtt}ms" for rtt in s.far_rtts}
    rv = Rendezvous(s, bench.tmp, "far", {sid: iperf_port for sid in sids.values()})
    bench.logs.append(rv.server_process)
    links: dict[int, LinkEmulator] = {}  # agent → server
    directs: dict[int, LinkEmulator] = {}  # iperf3 client → iperf3 server
    try:
        for rtt, sid in sids.items():
            links[rtt] = LinkEmulator(bench.tmp, rv.http_port, FAR_RATE_MBIT, rtt)
            directs[rtt] = LinkEmulator(bench.tmp, iperf_port, FAR_RATE_MBIT, rtt)
            bench.logs.append(rv.start_agent_for(sid, url=f"ws://127.0.0.1:{links[rtt].port}/forward_to_me/{sid}"))
        rv.wait_attached(list(rv.targets), 30)

        validation: dict[int, dict[str, float]] = {}
        for rtt in s.far_rtts:
            pinged = LinkEmulator(bench.tmp, echo.port, FAR_RATE_MBIT, rtt)
            try:
                validation[rtt] = {"rate_mbit": FAR_RATE_MBIT, "pings": PINGS, "rtt_ms": ping_pong_ms(pinged.port)}
            finally:
                pinged.stop()
            progress(f"  link emulator, RTT {rtt} ms: ping-pong {validation[rtt]['rtt_ms']:.1f} ms")
        r.link["rtts"] = validation
        cpu = {rtt: [0.0, 0.0] for rtt in s.far_rtts}  # emulator CPU seconds, wall seconds: direct transfers

        for rep in range(1, s.repeat + 1):
            progress(f"far link, repetition {rep}/{s.repeat}")
            for rtt, sid in sids.items():
                for reverse in (False, True):
                    way = "service → user (-R)" if reverse else "user → service"
                    row = r.row(f"far_{rtt}ms_{'down' if reverse else 'up'}",
                                f"far link {FAR_RATE_MBIT} Mbit/s, RTT {rtt} ms: iperf3 1 stream, {way}", "Mbit/s", digits=1)
                    for target, port in (("direct", directs[rtt].port), ("tunnel", rv.services[sid])):
                        before = directs[rtt].cpu_seconds(), time.monotonic()
                        v = bench.measure(f"{row.label} {target}", lambda port=port, reverse=reverse: iperf3(
                            iperf_port, port, s.far_seconds, reverse, 1, bench.tmp), rv)
                        if target == "direct":
                            cpu[rtt][0] += directs[rtt].cpu_seconds() - before[0]
                            cpu[rtt][1] += time.monotonic() - before[1]
                        v = None if v is None else v * 1000
                        getattr(row, target).append(v)
                        progress(f"  {row.label} {target}: {v if v is None else round(v, 1)} Mbit/s")
                        rv.check_alive()
                    bench.tunnel_zero(row.label, row.tunnel[-1])
        for rtt in s.far_rtts:
            measured = [v for way in ("up", "down") for v in r.rows[f"far_{rtt}ms_{way}"].direct if v is not None]
            validation[rtt]["direct_mbit"] = statistics.median(measured) if measured else float("nan")
            validation[rtt]["emulator_cores"] = cpu[rtt][0] / cpu[rtt][1] if cpu[rtt][1] else float("nan")

        # the emulator's own ceiling: no delay, no rate limit
        bare = LinkEmulator(bench.tmp, iperf_port, 0, 0)
        try:
            before = bare.cpu_seconds(), time.monotonic()
            gbit = bench.measure("link emulator ceiling", lambda: iperf3(
                iperf_port, bare.port, min(s.far_seconds, 4), False, 1, bench.tmp))
            if gbit is not None:
                r.link["ceiling"] = {"gbit": gbit, "emulator_cores": (bare.cpu_seconds() - before[0]) /
                                     (time.monotonic() - before[1])}
                progress(f"  link emulator ceiling: {gbit:.2f} Gbit/s")
        finally:
            bare.stop()
    finally:
        rv.stop()
        for emulator in [*links.values(), *directs.values()]:
            emulator.stop()
        echo.close()
