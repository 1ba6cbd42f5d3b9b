"""Loopback ports: free ones to listen on, and whether something listens on one."""

from __future__ import annotations

import socket
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (held open together, so they cannot repeat)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    """One free port on 127.0.0.1 (two calls may return the same port: use free_ports for several)."""
    return free_ports(1)[0]


def accepts_connections(port: int, timeout: float = 0.5) -> bool:
    """Does a TCP connect to 127.0.0.1:port succeed?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def listening(port: int) -> bool:
    """Is a socket listening on 127.0.0.1:port? Asked of /proc/net/tcp, without connecting.

    For servers that take exactly one client (``iperf3 -s -1``): a probe connection would be it.
    """
    hexport = f"{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1].endswith(":" + hexport) and parts[3] == "0A":  # 0A: TCP_LISTEN
            return True
    return False
