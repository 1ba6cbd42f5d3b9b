"""Loopback ports: free ones to listen on, and whether something listens on one."""

from __future__ import annotations

import collections
import socket
from pathlib import Path

_RECENT = 4096
_handed_out: collections.deque[int] = collections.deque(maxlen=_RECENT)
"""Ports returned lately: the kernel may offer a port again as soon as its probe socket is closed, and
a deployment whose services and HTTP endpoint got one port twice refuses its config (seen in CI)."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1, none of them returned by the last 4,096 calls' ports."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)  # held open until all are chosen, so they cannot repeat among themselves
            port = s.getsockname()[1]
            if port not in _handed_out:
                ports.append(port)
        _handed_out.extend(ports)
        return ports
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    """One free port on 127.0.0.1, not one handed out lately (see free_ports)."""
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
