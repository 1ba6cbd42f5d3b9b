"""A user-space link emulator: a TCP forwarder on 127.0.0.1 that adds one-way delay and a rate limit.

This kernel has no netem, so the benchmark's "far link" is this forwarder, placed between the
agent and the server (or between iperf3's client and server, for the direct transfer it is
compared with). Each direction of each connection is modelled as

    sender ──► [bottleneck queue, at most QUEUE bytes] ──► serialised at RATE ──► DELAY ──► receiver

with a virtual clock instead of packets: a chunk read from the sender leaves the bottleneck when
the bytes before it have left, at RATE (``departure = max(now, last departure) + size / RATE``), and
is written to the receiver DELAY after that. Nothing is buffered without bound: the reader takes
no more from the sender while the queue holds QUEUE bytes (the sender's TCP then fills and
blocks: backpressure), nor while the bytes on the wire plus those the receiver has not accepted
exceed ``RATE x DELAY + QUEUE`` (a receiver that stops reading stops the sender too). The
sockets facing the sender keep a small kernel receive buffer (SO_RCVBUF), so that the kernel
does not hold a second, hidden queue.

What it does not model: loss, reordering, jitter. It is a split proxy, so the end-to-end TCP
windows of the programs on either side do not see the delay (as if their windows were at least a
bandwidth-delay product, which is what TCP's autotuning aims for); what does see the full round
trip is any flow control *inside* the carried bytes, e.g. the tunnel's WINDOW credit. The
benchmark validates it by a direct iperf3 transfer through it (close to RATE) and a ping-pong of
small messages (close to 2 x DELAY).

Per direction two threads (reader, writer) with blocking sockets, reads of up to 64 KiB and
writes of whatever is due at once: no per-byte Python work. Run as a program::

    python3 bench/linkemu.py --listen PORT --upstream PORT --rate-mbit 200 --rtt-ms 100 [--queue-bytes N]

It prints ``listening on PORT`` once ready and runs until SIGTERM/SIGINT. ``--rate-mbit 0``: no
rate limit (and ``--rtt-ms 0``: no delay), for measuring the emulator's own ceiling.
"""

from __future__ import annotations

import argparse
import collections
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

CHUNK = 64 * 1024  # largest read; at 200 Mbit/s one chunk is 2.6 ms on the wire
MIN_READ = 16 * 1024  # do not wake up for less room in the queue than this (unless the queue is small)
SENDER_RCVBUF = 128 * 1024  # the kernel doubles it: ~256 KiB in the socket facing a sender


@dataclass(frozen=True)
class Link:
    rate_bps: float  # bytes per second; 0: unlimited
    delay_s: float  # one-way
    queue_bytes: int  # bottleneck queue

    @classmethod
    def make(cls, rate_mbit: float, rtt_ms: float, queue_bytes: int | None = None) -> "Link":
        rate = rate_mbit * 1e6 / 8
        if queue_bytes is None:
            queue_bytes = default_queue_bytes(rate_mbit, rtt_ms)
        return cls(rate, rtt_ms / 2000.0, queue_bytes)

    @property
    def wire_bytes(self) -> int:
        """What the delay line holds at full rate (one-way bandwidth-delay product)."""
        return int(self.rate_bps * self.delay_s) if self.rate_bps else 0


def default_queue_bytes(rate_mbit: float, rtt_ms: float) -> int:
    """A bottleneck queue of one round-trip bandwidth-delay product (the classic router sizing), 256 KiB at least."""
    return max(256 * 1024, int(rate_mbit * 1e6 / 8 * rtt_ms / 1000))


class Direction:
    """One direction of one connection: reader (sender side) and writer (receiver side) threads."""

    def __init__(self, link: Link, src: socket.socket, dst: socket.socket, done: threading.Event,
                 name: str) -> None:
        self.link = link
        self.src, self.dst = src, dst
        self.done = done  # set by either direction on an error: the connection is torn down
        self.items: collections.deque[tuple[float, bytes]] = collections.deque()  # (due, data); b"" is EOF
        self.held = 0  # bytes read and not yet written to dst
        self.last_departure = 0.0  # virtual clock of the bottleneck
        self.cond = threading.Condition()
        self.finished = threading.Event()  # EOF written, or given up
        self.threads = [threading.Thread(target=self._read, name=f"{name} read", daemon=True),
                        threading.Thread(target=self._write, name=f"{name} write", daemon=True)]
        for t in self.threads:
            t.start()

    def _room(self, now: float) -> int:
        """How many bytes may be read now: the queue's free space, bounded by what is held overall."""
        link = self.link
        if not link.rate_bps:
            return max(0, link.queue_bytes - self.held)
        backlog = max(0.0, self.last_departure - now) * link.rate_bps  # bytes still waiting to be serialised
        return int(min(link.queue_bytes - backlog, link.queue_bytes + link.wire_bytes - self.held))

    def _read(self) -> None:
        link = self.link
        want = min(MIN_READ, link.queue_bytes)
        try:
            while not self.done.is_set():
                with self.cond:
                    while True:
                        now = time.monotonic()
                        room = self._room(now)
                        if room >= want or self.done.is_set():
                            break
                        # wait for the queue to drain by `want - room` bytes, or for the writer
                        wait = (want - room) / link.rate_bps if link.rate_bps else 0.05
                        self.cond.wait(min(max(wait, 0.0005), 0.05))
                data = self.src.recv(min(CHUNK, room))
                now = time.monotonic()
                if link.rate_bps:
                    self.last_departure = max(now, self.last_departure) + len(data) / link.rate_bps
                    due = self.last_departure + link.delay_s
                else:
                    due = now + link.delay_s
                with self.cond:
                    self.items.append((due, data))
                    self.held += len(data)
                    self.cond.notify_all()
                if not data:
                    return
        except OSError:
            self._give_up()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.items and not self.done.is_set():
                        self.cond.wait(0.5)
                    if self.done.is_set():
                        return
                    due = self.items[0][0]
                    now = time.monotonic()
                    if due > now:
                        self.cond.wait(due - now)  # woken early only by new items: re-check
                        continue
                    batch, eof = [], False
                    while self.items and self.items[0][0] <= now:
                        data = self.items.popleft()[1]
                        if not data:
                            eof = True
                            break
                        batch.append(data)
                if batch:
                    out = b"".join(batch) if len(batch) > 1 else batch[0]
                    self.dst.sendall(out)
                    with self.cond:
                        self.held -= len(out)
                        self.cond.notify_all()
                if eof:
                    self.dst.shutdown(socket.SHUT_WR)
                    self.finished.set()
                    return
        except OSError:
            self._give_up()

    def _give_up(self) -> None:
        self.done.set()
        self.finished.set()
        with self.cond:
            self.cond.notify_all()


class Emulator:
    """Listens on 127.0.0.1:``port`` (0: a free one) and forwards every connection to 127.0.0.1:``upstream``."""

    def __init__(self, link: Link, upstream: int, port: int = 0) -> None:
        self.link = link
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SENDER_RCVBUF)  # inherited by accepted sockets
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.connections = 0

    def serve_forever(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _connection(self, client: socket.socket) -> None:
        self.connections += 1
        try:
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SENDER_RCVBUF)  # before connect: sets the window
            server.connect(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = threading.Event()
        n = self.connections
        ways = [Direction(self.link, client, server, done, f"c{n} up"),
                Direction(self.link, server, client, done, f"c{n} down")]
        # until both directions carried their EOF, or one of them failed (then both are torn down)
        while not done.wait(0.2) and not all(way.finished.is_set() for way in ways):
            pass
        done.set()
        for way in ways:
            with way.cond:
                way.cond.notify_all()
        for s in (client, server):
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv() or sendall() on it
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/linkemu.py", description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=int, default=0, metavar="PORT", help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--upstream", type=int, required=True, metavar="PORT", help="forward to 127.0.0.1:PORT")
    p.add_argument("--rate-mbit", type=float, required=True, help="rate of each direction, Mbit/s (0: unlimited)")
    p.add_argument("--rtt-ms", type=float, required=True, help="round-trip time added, ms (half each way)")
    p.add_argument("--queue-bytes", type=int, help="bottleneck queue per direction (default: one round-trip BDP, "
                   "256 KiB at least)")
    a = p.parse_args(argv)
    link = Link.make(a.rate_mbit, a.rtt_ms, a.queue_bytes)
    emulator = Emulator(link, a.upstream, a.listen)

    def stop(signum: int, frame: object) -> None:
        emulator.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on {emulator.port}: {a.rate_mbit:g} Mbit/s, RTT {a.rtt_ms:g} ms, queue {link.queue_bytes} "
          f"bytes per direction", flush=True)
    emulator.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
