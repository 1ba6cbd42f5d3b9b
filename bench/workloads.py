"""Group workloads: real clients against real servers, through the tunnel and directly.

``redis-benchmark -c16 -P16`` (SET and GET, -n each) against a redis-server, and ``pgbench -c16 -j2
-S`` (select only) against a PostgreSQL cluster made by the bench; one agent each, one deployment.
Each run also reports the CPU per request of the processes involved (``bench/cpu.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from bench.cpu import CpuMeter
from bench.fixtures import Postgres, RedisServer, Rendezvous
from bench.progress import progress
from bench.tools import pgbench, redis_benchmark

if TYPE_CHECKING:
    from bench.results import Results, Row
    from bench.scenarios import Bench


def workloads(bench: Bench) -> None:
    s, r = bench.s, bench.results
    if "workloads" not in s.only:
        return
    progress("workloads: redis-benchmark and pgbench")
    redis = RedisServer(bench.tmp)
    postgres = None
    rv = None
    try:
        postgres = Postgres(bench.tmp)
        rv = Rendezvous(s, bench.tmp, "workloads", {"redis": redis.port, "postgres": postgres.port})
        bench.logs.append(rv.server_process)
        for sid in rv.targets:
            bench.logs.append(rv.start_agent_for(sid))
        rv.wait_attached(list(rv.targets), 30)
        for rep in range(1, s.repeat + 1):
            progress(f"workloads, repetition {rep}/{s.repeat}")
            label = f"redis-benchmark -c16 -P16, {s.redis_requests:,} requests"
            rows = {f"{test} {figure}": r.row(f"redis_{test.lower()}_{figure}", f"{label}: {test} {what}", unit, digits)
                    for test in ("SET", "GET")
                    for figure, what, unit, digits in (("rps", "requests", "req/s", 0), ("p50_ms", "p50 latency", "ms", 2))}
            rows.update(_cpu_rows(r, "redis", label))
            _pair(bench, rv, label, "redis", redis, lambda port: redis_benchmark(port, s.redis_requests), rows,
                  lambda v: {f"{test} {figure}": v[test][figure] for test in ("SET", "GET") for figure in ("rps", "p50_ms")},
                  ["SET rps", "GET rps"], lambda v: 2 * s.redis_requests)
            label = f"pgbench -c16 -j2 -S (select only), {s.pgbench_seconds} s"
            rows = {"tps": r.row("pgbench_tps", f"{label}: transactions", "tps", digits=0),
                    "latency_ms": r.row("pgbench_latency", f"{label}: average latency", "ms", digits=2),
                    "failed": r.row("pgbench_failed", f"{label}: failed transactions", "count", digits=0)}
            rows["failed"].ratio = False
            figures = list(rows)
            rows.update(_cpu_rows(r, "pgbench", label))
            _pair(bench, rv, label, "postgres", postgres, lambda port: pgbench(port, s.pgbench_seconds), rows,
                  lambda v: {name: v[name] for name in figures}, ["tps"], lambda v: v["transactions"])
    finally:
        if rv is not None:
            rv.stop()
        if postgres is not None:
            postgres.stop()
        redis.stop()


def _cpu_rows(r: Results, key: str, label: str) -> dict[str, Row]:
    rows = {"cpu": r.row(f"{key}_cpu_per_request", f"{label}: CPU per request, all processes", "µs", digits=1),
            "relay cpu": r.row(f"{key}_relay_cpu_per_request", f"{label}: CPU per request, server + agent", "µs",
                               digits=1)}
    rows["relay cpu"].ratio = False
    return rows


def _pair(bench: Bench, rv: Rendezvous, label: str, sid: str, service: RedisServer | Postgres, run: Callable[[int], Any],
          rows: dict[str, Row], figures: Callable[[Any], dict[str, float]], rates: list[str],
          requests: Callable[[Any], int]) -> None:
    """One tool run directly, then through the tunnel: ``figures`` of its result go into ``rows`` (same names);
    the ``rates`` must not be zero through the tunnel. ``requests`` of a result is how many it made: the rows
    "cpu" (tool, service and, through the tunnel, server and agent) and "relay cpu" get their CPU per request."""
    parties = {"service": [service.process.pid], "relay": [p.pid for p in rv.logs()]}
    for target, port in (("direct", service.port), ("tunnel", rv.services[sid])):
        meter = CpuMeter(parties, load_tool=True)
        v = bench.measure(f"{label} {target}", lambda port=port: run(port), rv)
        spent = meter.spent()
        got = figures(v) if v is not None else {}
        made = requests(v) if v is not None else 0
        if made > 0:
            per_request = {name: seconds / made * 1e6 for name, seconds in spent.items()}
            got["cpu"] = per_request["client"] + per_request["service"]
            if target == "tunnel":
                got["cpu"] += per_request["relay"]
                got["relay cpu"] = per_request["relay"]
        for name, row in rows.items():
            getattr(row, target).append(got.get(name))
        progress(f"  {label} {target}: " + ", ".join(f"{name} {value:,.2f}" for name, value in got.items()))
        rv.check_alive()
    for name in rates:
        bench.tunnel_zero(rows[name].label, rows[name].tunnel[-1])
