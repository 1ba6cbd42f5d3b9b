"""The benchmark's command line and the settings it makes (the defaults of --quick and of a full run)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tests.support.programs import AGENT_NAME, REPO, SERVER_NAME, Programs


@dataclass
class Settings:
    quick: bool
    repeat: int
    bulk_seconds: int
    wrk_seconds: int
    ab_requests: int
    idle_streams: int
    agents: int
    binaries: Path | None
    log_level: str | None
    only: set[str]
    event_loop: str | None = None
    server_config: str = ""  # TOML lines added to every server's config (e.g. resume_seconds = 0)
    profile: bool = False  # py-spy on the wss agent (group wss)
    far_seconds: int = 10  # iperf3 -t through the link emulator (group far)
    far_rtts: tuple[int, ...] = (100, 300)  # ms, at FAR_RATE_MBIT
    redis_requests: int = 1_000_000  # redis-benchmark -n per test (SET, GET)
    pgbench_seconds: int = 8  # pgbench -T
    fleet_agents: int = 8000  # simulated agents (group fleet), fewer when the descriptor limit is lower
    fleet_seconds: int = 10  # wrk -d through the real agent (group fleet)
    fleet_idle_seconds: int = 10  # the window of the idle-CPU figure (group fleet)
    fleet_reattach_wait: int = 180  # how long a restart waits for the fleet to be back (group fleet)
    shard_tunnels: int = 4  # busy tunnels loaded at once, on 1 server process and on 2 shards (group shards)

    @property
    def programs(self) -> Programs:
        """The server and agent command lines these settings ask for."""
        return Programs(self.binaries, self.event_loop)

    @property
    def mode(self) -> str:
        return f"binaries ({self.binaries})" if self.binaries else "package (python3 -m reverse_websockify.cli.*)"


GROUPS = ("bulk", "requests", "connections", "stall", "idle-streams", "agents", "wss", "far", "workloads", "fleet",
          "shards")
NOT_IN_QUICK = {"shards"}  # run with --quick only when asked by --only (it takes ~1 min even then)
FAR_RATE_MBIT = 200  # the emulated far link's rate, each direction (issue 13)


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark reverse_websockify against direct connections with iperf3, wrk, ab "
        "(loopback only; stops by itself). See bench/README.md.",
    )
    p.add_argument("--quick", action="store_true",
                   help="1 repetition, short durations, 50 agents: the CI smoke run (< 3 min)")
    p.add_argument("--binaries", metavar="DIR", type=Path,
                   help=f"run DIR/{SERVER_NAME} and DIR/{AGENT_NAME} instead of the package")
    p.add_argument("--repeat", type=int, metavar="N", help="repetitions (default 3; 1 with --quick)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", metavar="DIR",
                   help="where the .md and .json go (default bench/results)")
    p.add_argument("--bulk-seconds", type=int, metavar="S", help="iperf3 -t (default 8; 2 with --quick)")
    p.add_argument("--wrk-seconds", type=int, metavar="S", help="wrk -d (default 8; 2 with --quick)")
    p.add_argument("--ab-requests", type=int, metavar="N", help="ab -n (default 20000; 3000 with --quick)")
    p.add_argument("--idle-streams", type=int, metavar="N", help="idle streams through one agent (default 1000)")
    p.add_argument("--agents", type=int, metavar="N", help="idle agents attached at once (default 200; 50 with --quick)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="passed to server and agents (default: theirs, INFO)")
    p.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"],
                   help="passed to server and agents (default: theirs, auto = uvloop when installed)")
    p.add_argument("--server-config", metavar="TOML", default="",
                   help="lines added to the server's config, e.g. 'resume_seconds = 0' (use \\n between lines)")
    p.add_argument("--far-seconds", type=int, metavar="S",
                   help="iperf3 -t through the emulated far link (default 10; 3 with --quick)")
    p.add_argument("--redis-requests", type=int, metavar="N",
                   help="redis-benchmark -n for SET and for GET (default 1000000; 100000 with --quick)")
    p.add_argument("--pgbench-seconds", type=int, metavar="S", help="pgbench -T (default 8; 2 with --quick)")
    p.add_argument("--fleet-agents", type=int, metavar="N",
                   help="group fleet: simulated agents (default 8000, fewer if the descriptor limit is lower; 50 with --quick)")
    p.add_argument("--fleet-seconds", type=int, metavar="S",
                   help="group fleet: wrk -d through the real agent (default 10; 3 with --quick)")
    p.add_argument("--shard-tunnels", type=int, metavar="N",
                   help="group shards: busy tunnels loaded at once, split over 2 shards (default 4)")
    p.add_argument("--profile", action="store_true",
                   help="group wss: where the agent's CPU goes on the wss path (needs py-spy: pip install py-spy)")
    p.add_argument("--only", metavar="GROUPS", help=f"comma-separated subset of: {', '.join(GROUPS)}")
    p.add_argument("--strict", action="store_true",
                   help="also exit 1 when the server/agent logs hold an ERROR or traceback, or a tunnel broke")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs, configs)")
    p.add_argument("--time-limit", type=int, metavar="S",
                   help="abort the whole run after S seconds (default 300 with --quick, 2700 otherwise)")
    a = p.parse_args(argv)
    q = a.quick
    only = set(GROUPS) - (NOT_IN_QUICK if q else set())
    if a.only:
        only = {g.strip() for g in a.only.split(",") if g.strip()}
        unknown = only - set(GROUPS)
        if unknown:
            p.error(f"--only: unknown group(s) {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    s = Settings(
        quick=q,
        repeat=a.repeat if a.repeat is not None else (1 if q else 3),
        bulk_seconds=a.bulk_seconds or (2 if q else 8),
        wrk_seconds=a.wrk_seconds or (2 if q else 8),
        ab_requests=a.ab_requests or (3000 if q else 20000),
        idle_streams=a.idle_streams if a.idle_streams is not None else 1000,
        agents=a.agents if a.agents is not None else (50 if q else 200),
        binaries=a.binaries.resolve() if a.binaries else None,
        log_level=a.log_level,
        only=only,
        event_loop=a.event_loop,
        server_config=a.server_config.replace("\\n", "\n"),
        profile=a.profile,
        far_seconds=a.far_seconds or (3 if q else 10),
        far_rtts=(100,) if q else (100, 300),
        redis_requests=a.redis_requests or (100_000 if q else 1_000_000),
        pgbench_seconds=a.pgbench_seconds or (2 if q else 8),
        fleet_agents=a.fleet_agents if a.fleet_agents is not None else (50 if q else 8000),
        fleet_seconds=a.fleet_seconds or (3 if q else 10),
        fleet_idle_seconds=2 if q else 10,
        fleet_reattach_wait=30 if q else 180,
        shard_tunnels=a.shard_tunnels if a.shard_tunnels is not None else 4,
    )
    if s.repeat < 1:
        p.error("--repeat must be at least 1")
    if s.shard_tunnels < 2:
        p.error("--shard-tunnels must be at least 2 (one per shard)")
    if a.time_limit is None:
        a.time_limit = 300 if q else 2700
    return s, a
