"""A server config.toml with N services for a fleet: IDs ``<prefix>00000``…, listen ports from a free range.

The ports are taken **outside the kernel's ephemeral range** (ip_local_port_range) by default: the
fleet's own WebSockets take ephemeral ports as their source ports, and a server restarted while
they retry must be able to bind every listener again (a listener port held as some connection's
source port makes the server refuse to start: "port already in use", exit 2).

    python3 -m bench.fleet.config --services 8000 --http 127.0.0.1:39000 --out config.toml
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

DEFAULT_LOW = 10000  # below the usual ephemeral range (32768-60999)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux; IANA's range elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def free_ports_in_range(count: int, low: int = DEFAULT_LOW, high: int | None = None, host: str = "127.0.0.1",
                        avoid_ephemeral: bool = True) -> list[int]:
    """``count`` ports in [low, high] that can be bound on ``host`` now, skipping the ephemeral range.

    Each is checked by binding it (and letting go at once): a port that another program holds is
    skipped. Raises ValueError when the range holds fewer free ports.
    """
    eph = ephemeral_range() if avoid_ephemeral else (0, -1)
    high = 65535 if high is None else high
    found: list[int] = []
    for port in range(low, high + 1):
        if len(found) == count:
            break
        if eph[0] <= port <= eph[1]:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        found.append(port)
    if len(found) < count:
        raise ValueError(f"only {len(found)} free ports in {low}..{high} outside the ephemeral range "
                         f"{eph[0]}-{eph[1]}; {count} needed (lower --port-low, or narrow ip_local_port_range)")
    return found


def service_ids(count: int, prefix: str = "fleet") -> list[str]:
    """``prefix00000``, ``prefix00001``, … (IDs the server accepts: A-Z a-z 0-9 . _ ~ -)."""
    width = max(5, len(str(count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def render_config(http: str, services: dict[str, int], listen_host: str = "127.0.0.1", extra: str = "") -> str:
    """The TOML text: ``http_server_endpoint``, ``extra`` top-level lines, one table per service."""
    lines = [f'http_server_endpoint = "{http}"']
    if extra.strip():
        lines.append(extra.strip())
    for sid, port in services.items():
        lines += ["", f"[remote_service.{sid}]", f'nickname = "{sid}"',
                  f'local_listen_endpoint = "{listen_host}:{port}"']
    return "\n".join(lines) + "\n"


def write_config(path: Path, http: str, services: dict[str, int], listen_host: str = "127.0.0.1",
                 extra: str = "") -> Path:
    """Write the config and check it with the server's own parser (reverse_websockify.config.load)."""
    from reverse_websockify.config import load

    path.write_text(render_config(http, services, listen_host, extra))
    load(path)  # a ConfigError names the key: better here than as the server's exit status 2
    return path


def fleet_services(count: int, prefix: str = "fleet", low: int = DEFAULT_LOW, high: int | None = None,
                   host: str = "127.0.0.1") -> dict[str, int]:
    """Service ID → a free listen port, for ``count`` services."""
    return dict(zip(service_ids(count, prefix), free_ports_in_range(count, low, high, host)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.fleet.config", description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, required=True, metavar="N")
    p.add_argument("--http", default="127.0.0.1:39000", metavar="HOST:PORT", help="http_server_endpoint")
    p.add_argument("--id-prefix", default="fleet")
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--port-low", type=int, default=DEFAULT_LOW, help=f"first listen port tried (default {DEFAULT_LOW})")
    p.add_argument("--port-high", type=int, default=None, help="last listen port tried (default 65535)")
    p.add_argument("--extra", default="", help="top-level TOML lines to add (\\n between lines)")
    p.add_argument("--out", type=Path, required=True, help="where to write config.toml")
    a = p.parse_args(argv)
    try:
        services = fleet_services(a.services, a.id_prefix, a.port_low, a.port_high, a.listen_host)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_config(a.out, a.http, services, a.listen_host, a.extra.replace("\\n", "\n"))
    first, last = min(services.values()), max(services.values())
    print(f"wrote {a.out}: {len(services)} services, ports {first}..{last}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
