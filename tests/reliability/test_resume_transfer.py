"""64 MiB each way through the tunnel while the agent's link is cut five times: protocol v2 sessions resume it.

One user connection to the echo service sends 64 MiB of random bytes (one thread) while it reads
the echo back (another thread). The agent reaches the server through
tests/reliability/faultproxy.py, and the link is broken five times during the transfer, each time
after another sixth of the bytes came back: cut with RST, cut with FIN, or frozen (no byte passes,
nothing is closed) until keepalive has given the link up on both sides, then let through again.
Keepalive runs at 1 s/1 s on both sides, as in tests/integration/test_sessions.py.

The user must see nothing but a pause: every byte back, byte-exact (sha256), then the echo's EOF;
the service gets one connection; the server counts five resumed sessions. Measured, for each break:
the time from the link being back (the agent's new connection through the proxy, or the end of
the freeze) to the first bytes reaching the user again.
"""

from __future__ import annotations

import hashlib
import os
import socket
import statistics
import threading
import time
from typing import Callable

import pytest

from tests.reliability.conftest import Figure
from tests.reliability.faultproxy import FaultProxy
from tests.support.deployment import Deployment
from tests.support.services import Service
from tests.support.waiting import wait_for

FAST_KEEPALIVE_CONFIG = "ping_interval_seconds = 1\nping_timeout_seconds = 1"
FAST_KEEPALIVE_FLAGS = ("--ping-interval=1", "--ping-timeout=1")
# Windows held at 1 MiB (no growth on this fast link): a break must land while bytes still flow, and
# with grown windows the last sixth can be in flight already when the threshold is seen.
SMALL_WINDOWS_CONFIG = "receive_budget_mib = 1"
SMALL_WINDOWS_FLAGS = ("--receive-budget-mib=1",)
KEEPALIVE_BOUND = 1 + 1 + 2  # interval + timeout + closing handshake timeout, seconds
SLACK = 2.0  # scheduling on a shared machine
TOTAL = 64 << 20  # bytes each way
CHUNK = 1 << 20  # the sender's sendall() size
CUTS = 5
TRANSFER_TIMEOUT = 120.0  # seconds for the whole transfer; it takes far less
RESUME_TIMEOUT = 15.0  # seconds from the link being back to the session resumed and bytes flowing
POLL = 0.002  # seconds between polls while timing a resume


class _Transfer:
    """A user connection sending ``payload`` to the echo (one thread) while reading it back (another).

    ``outcome`` is "running" until the reader stops: "complete" (EOF after every byte), "eof" (EOF
    too early), "reset" (an error on the socket) or "hung" (nothing for ``timeout`` seconds).
    """

    def __init__(self, port: int, payload: bytes, timeout: float) -> None:
        self.payload = payload
        self.received = bytearray()
        self.count = 0  # len(received), readable from the test's thread without a lock
        self.outcome = "running"
        self.error: BaseException | None = None
        self.send_error: BaseException | None = None
        self.sent_all_at: float | None = None
        self.ended_at: float | None = None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.settimeout(timeout)
        self.started = time.monotonic()
        self._reader = threading.Thread(target=self._read, name="transfer-reader", daemon=True)
        self._writer = threading.Thread(target=self._write, name="transfer-writer", daemon=True)
        self._reader.start()
        self._writer.start()

    def _write(self) -> None:
        view = memoryview(self.payload)
        try:
            for i in range(0, len(view), CHUNK):
                self.sock.sendall(view[i : i + CHUNK])
            self.sent_all_at = time.monotonic()
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.send_error = exc

    def _read(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    self.outcome = "complete" if self.count == len(self.payload) else "eof"
                    break
                self.received += chunk
                self.count += len(chunk)
        except socket.timeout as exc:
            self.outcome, self.error = "hung", exc
        except OSError as exc:
            self.outcome, self.error = "reset", exc
        self.ended_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.outcome == "running"

    def join(self, timeout: float) -> None:
        self._reader.join(timeout)
        self._writer.join(5)
        self.sock.close()
        if self._reader.is_alive():
            self.outcome = "hung"

    def first_difference(self) -> int | None:
        """The offset of the first byte that came back wrong (or missing), None if all is right."""
        got, sent = bytes(self.received), self.payload
        for i in range(0, min(len(got), len(sent)), CHUNK):
            if got[i : i + CHUNK] != sent[i : i + CHUNK]:
                return i + next(j for j, (a, b) in enumerate(zip(got[i : i + CHUNK], sent[i : i + CHUNK])) if a != b)
        return None if len(got) == len(sent) else min(len(got), len(sent))


def _poll(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Wait for ``condition`` polling every POLL seconds; return the monotonic time it was first seen true."""
    return wait_for(lambda: condition() and time.monotonic(), timeout, what, POLL)


@pytest.mark.parametrize("mode", ["rst", "fin", "freeze"])
def test_64_mib_each_way_through_five_link_breaks(mode: str, deployment: Deployment, echo: Service,
                                                  make_proxy: Callable[[int], FaultProxy], figure: Figure) -> None:
    deployment.extra_config = FAST_KEEPALIVE_CONFIG + "\n" + SMALL_WINDOWS_CONFIG
    deployment.write_config()
    deployment.options.append("--log-format=json")
    server = deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, *FAST_KEEPALIVE_FLAGS, *SMALL_WINDOWS_FLAGS,
                                   url=f"{proxy.url_base}/forward_to_me/BUS1")
    payload = os.urandom(TOTAL)
    sent_digest = hashlib.sha256(payload).hexdigest()

    transfer = _Transfer(deployment.services["BUS1"], payload, TRANSFER_TIMEOUT)
    back_to_flowing: list[float] = []
    paused_for: list[float] = []  # from the break to bytes flowing, for the record
    for cut in range(1, CUTS + 1):
        threshold = cut * TOTAL // (CUTS + 1)
        _poll(lambda: transfer.count >= threshold or not transfer.running, TRANSFER_TIMEOUT,
              f"{threshold} bytes back before break #{cut}")
        assert transfer.running and transfer.count < TOTAL, \
            f"the transfer ended ({transfer.outcome}, {transfer.count} bytes) before break #{cut}"
        wait_for(lambda: proxy.connection_count() == 1, RESUME_TIMEOUT, f"the agent's one link before break #{cut}")
        agent_mark = agent.mark()
        broken_at = time.monotonic()
        if mode == "freeze":
            proxy.freeze()
            # keepalive gives the link up on both sides: the server detaches the session, the agent keeps it
            wait_for(lambda: not deployment.status()["BUS1"]["connected"], KEEPALIVE_BOUND + SLACK,
                     f"the server to notice the frozen link (break #{cut})", POLL * 10)
            agent.wait_line("keeping 1 streams", since=agent_mark, timeout=KEEPALIVE_BOUND + SLACK)
            assert transfer.running, f"the user saw {transfer.outcome} during freeze #{cut}: {transfer.error!r}"
            back_at = time.monotonic()
            proxy.forward()
        else:
            assert proxy.cut(rst=mode == "rst") == 1, f"break #{cut} found no link to cut"
            back_at = _poll(lambda: proxy.connection_count() >= 1, RESUME_TIMEOUT,
                            f"the agent's new connection through the proxy (break #{cut})")
        count_at_back = transfer.count
        flowing_at = _poll(lambda: transfer.count > count_at_back or not transfer.running, RESUME_TIMEOUT,
                           f"bytes flowing again after break #{cut}")
        assert transfer.running or transfer.outcome == "complete", \
            f"the user saw {transfer.outcome} after break #{cut}: {transfer.error!r}"
        back_to_flowing.append(flowing_at - back_at)
        paused_for.append(flowing_at - broken_at)
        wait_for(lambda: deployment.status()["BUS1"]["sessions_resumed"] == cut, RESUME_TIMEOUT, f"resume #{cut}")
        print(f"break #{cut} at {count_at_back} bytes: back {back_at - broken_at:.3f} s after the break, "
              f"flowing {flowing_at - back_at:.3f} s later")

    transfer.join(TRANSFER_TIMEOUT)
    took = (transfer.ended_at or time.monotonic()) - transfer.started
    assert transfer.send_error is None, f"sending failed: {transfer.send_error!r}"
    assert transfer.outcome == "complete", \
        f"{transfer.outcome} after {transfer.count} of {TOTAL} bytes: {transfer.error!r}"
    assert hashlib.sha256(transfer.received).hexdigest() == sent_digest, \
        f"the echo differs from what was sent from byte {transfer.first_difference()} on"
    assert echo.bytes_received == TOTAL
    assert echo.accepted == 1, "the user connection reached the service more than once"
    status = deployment.status()["BUS1"]
    assert status["sessions_resumed"] == CUTS and status["connected"], status
    assert len(agent.find_lines("session resumed")) == CUTS
    assert not agent.find_lines("given up") and not server.find_lines("dropped")
    assert not server.find_lines("expired", reason="session expired")

    how = {"rst": "cut with RST", "fin": "cut with FIN",
           "freeze": "frozen until keepalive gave it up on both sides, then let through"}[mode]
    median, worst = statistics.median(back_to_flowing), max(back_to_flowing)
    figure(f"v2: 64 MiB each way (one user connection, echo) while the agent's link is {how} "
           f"{CUTS} times, after each sixth of the bytes",
           "no user-visible error: every byte back (sha256), the service sees one connection, "
           "the session resumes each time",
           f"{took:.1f} s in all, sha256 equal, {status['sessions_resumed']} sessions resumed; link back to "
           f"bytes flowing to the user: median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms "
           f"(break to flowing: median {statistics.median(paused_for):.2f} s, max {max(paused_for):.2f} s)",
           mode=mode, took=took, back_to_flowing=back_to_flowing, break_to_flowing=paused_for,
           sessions_resumed=status["sessions_resumed"])
