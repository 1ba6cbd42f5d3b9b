"""The per-tunnel receive budget holds with 50 busy streams (flow.WindowTuner, issue 13).

Every stream starts with the protocol's 1 MiB window, so 50 streams opened at once may have 50 MiB
in flight at first; as their bytes are delivered the busy ones share the budget, and from then on
the windows of all streams together stay within it. Read from the status page
(``receive_window_bytes``: the server's receive windows, i.e. what the agent may send it).
"""

from __future__ import annotations

import os
import threading
import time

from tests.support import probes
from tests.support.clients import Exchange, sha256
from tests.support.deployment import Deployment
from tests.support.services import Service

MIB = 1 << 20
BUDGET_MIB = 4
STREAMS = 50


def test_fifty_busy_streams_share_the_budget(deployment: Deployment, echo: Service) -> None:
    deployment.extra_config += f"\nreceive_budget_mib = {BUDGET_MIB}\n"
    server = deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    payloads = [os.urandom(2 * MIB) for _ in range(STREAMS)]
    windows: list[tuple[float, int, int]] = []  # (seconds since start, open streams, window bytes)
    done = threading.Event()
    started = time.monotonic()

    def watch() -> None:
        while not done.is_set():
            status = deployment.status()["BUS1"]
            windows.append((time.monotonic() - started, status["client_connection_count"],
                            status["receive_window_bytes"]))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # Each user sends 64 KiB every 0.1 s: the 50 streams stay busy together for about 3 s.
    exchanges = [Exchange(deployment.services["BUS1"], p, chunk=64 * 1024, pace=0.1, timeout=60) for p in payloads]
    outcomes = [exchange.join() for exchange in exchanges]
    done.set()
    watcher.join(5)
    assert outcomes == ["complete"] * STREAMS
    for exchange in exchanges:
        assert sha256(bytes(exchange.received)) == sha256(exchange.payload)
    busy = [(t, n, w) for t, n, w in windows if n == STREAMS]  # every stream open
    assert len(busy) >= 5, f"too few samples while the streams were busy: {windows}"
    # The credit already granted cannot be taken back: the windows come down as bytes are delivered
    # (each stream keeps the credit of what it delivers until it is within its share).
    first, last = busy[0][2], busy[-1][2]
    assert last <= BUDGET_MIB * MIB, f"still above the budget at the end: {[w for _, _, w in busy]}"
    print(f"\n{STREAMS} busy streams, 2 MiB each way: receive windows {first / MIB:.1f} MiB at first (1 MiB "
          f"per new stream), {last / MIB:.2f} MiB after {busy[-1][0] - busy[0][0]:.1f} s (budget {BUDGET_MIB} "
          f"MiB); server RSS {probes.rss_kib(server.pid) / 1024:.0f} MiB")
