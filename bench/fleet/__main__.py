"""The fleet's command line: N simulated agents against a running server, until SIGTERM/SIGINT or --duration.

    python3 -m bench.fleet --agents 8000 --server 127.0.0.1:39000 --id-prefix fleet

The server needs one ``[remote_service.<ID>]`` per agent (``python3 -m bench.fleet.config`` writes
such a config.toml, with the same ID prefix). Progress goes to stderr every --interval seconds;
``--status-file`` is rewritten as often with the full snapshot (JSON: attached now, time to attach
all, outages and their re-attach times, failures and disconnections by reason); the last snapshot
is printed on stdout at exit. Exit status 0, or 1 when not every agent was attached at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.fleet.fleet import Fleet, FleetOptions
from reverse_websockify.cli.common import add_event_loop_flag, run_event_loop


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, required=True, metavar="N")
    p.add_argument("--server", default="127.0.0.1:39000", metavar="HOST:PORT",
                   help="the server's http_server_endpoint (agents dial ws://HOST:PORT/forward_to_me/<ID>)")
    p.add_argument("--id-prefix", default="fleet", help="service IDs PREFIX00000, PREFIX00001, ... (default fleet)")
    p.add_argument("--token", help="Authorization: Bearer TOKEN (services with a token)")
    p.add_argument("--ping-interval", type=float, default=FleetOptions.ping_interval)
    p.add_argument("--ping-timeout", type=float, default=FleetOptions.ping_timeout)
    p.add_argument("--open-timeout", type=float, default=FleetOptions.open_timeout,
                   help="the whole WebSocket handshake must complete within this (the real agent's, 15 s)")
    p.add_argument("--max-backoff", type=float, default=FleetOptions.backoff_max)
    p.add_argument("--max-handshakes", type=int, default=256,
                   help="first attach: at most this many handshakes in flight (0: all at once); "
                        "reconnections are never held back")
    p.add_argument("--duration", type=float, default=0, help="stop after S seconds (default: run until SIGTERM)")
    p.add_argument("--exit-when-attached", action="store_true", help="stop as soon as all N are attached")
    p.add_argument("--interval", type=float, default=1.0, help="progress and status-file period (s)")
    p.add_argument("--status-file", type=Path, help="rewrite this JSON file with the snapshot every --interval")
    add_event_loop_flag(p)
    a = p.parse_args(argv)
    if a.agents < 1:
        p.error("--agents must be at least 1")
    return a


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


async def run(a: argparse.Namespace, result: dict[str, Any]) -> None:
    options = FleetOptions(agents=a.agents, server=a.server, id_prefix=a.id_prefix, token=a.token,
                           ping_interval=a.ping_interval, ping_timeout=a.ping_timeout, open_timeout=a.open_timeout,
                           backoff_max=a.max_backoff, max_handshakes=a.max_handshakes)
    fleet = Fleet(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        fleet.start()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        result["error"] = str(exc)
        return
    print(f"[fleet] {a.agents} agents → ws://{a.server}/forward_to_me/{fleet.agents[0].service_id}…; "
          f"fd limit {fleet.fd_limit}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + a.duration if a.duration > 0 else None
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), a.interval)
        except asyncio.TimeoutError:
            pass
        snap = fleet.snapshot()
        if a.status_file:
            write_atomically(a.status_file, snap)
        print(f"[fleet] t={snap['t']:.1f}s attached {snap['attached']}/{snap['agents']} connecting "
              f"{snap['connecting']} waiting {snap['waiting']}; all attached after "
              f"{snap['all_attached_seconds']} s; failures {snap['failures']}", file=sys.stderr, flush=True)
        if deadline is not None and time.monotonic() >= deadline:
            break
        if a.exit_when_attached and snap["attached"] == snap["agents"]:
            break
    result.update(fleet.snapshot(stuck_examples=20))
    await fleet.stop()
    if a.status_file:
        write_atomically(a.status_file, result)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    result: dict[str, Any] = {}
    run_event_loop(lambda: run(a, result), a.event_loop)
    print(json.dumps(result, indent=1))
    return 0 if result.get("agents") and result.get("attached") == result.get("agents") else 1


if __name__ == "__main__":
    sys.exit(main())
