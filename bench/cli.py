"""The benchmark's main(): checks, limits, the scenarios in order, the report, the exit status."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import processes
from bench.errors import BenchError, Fatal, TimeLimit
from bench.far import far_link
from bench.fleet_group import fleet
from bench.fixtures import postgres_bin
from bench.header import header
from bench.progress import progress
from bench.scenarios import Bench
from bench.settings import Settings, parse_args
from bench.shards_group import shards
from bench.workloads import workloads
from tests.support.processes import ProcessDied
from tests.support.programs import AGENT_NAME, SERVER_NAME
from tests.support.waiting import WaitTimeout

TOOLS = ("iperf3", "wrk", "ab", "nginx", "curl")
# What the newer groups need besides TOOLS: (group, tools, what to install).
GROUP_TOOLS = (
    ("wss", ("openssl",), "apt-get install openssl"),
    ("workloads", ("redis-server", "redis-benchmark", "pgbench", "initdb", "postgres", "pg_isready"),
     "apt-get install redis-server redis-tools postgresql"),
)


def missing_tools(settings: Settings) -> list[str]:
    """The tools the selected groups need that are not installed, each with how to install it."""
    def found(tool: str) -> bool:
        if tool in ("initdb", "postgres", "pg_isready"):
            return postgres_bin(tool) is not None
        return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()

    missing = [f"{t} (apt-get install iperf3 wrk apache2-utils nginx-light curl)" for t in TOOLS if not found(t)]
    for group, tools, install in GROUP_TOOLS:
        if group in settings.only:
            missing += [f"{t} ({install}; or leave group {group} out with --only)" for t in tools if not found(t)]
    if settings.profile and not found("py-spy"):
        missing.append("py-spy (pip install py-spy; or run without --profile)")
    return missing


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    missing = missing_tools(settings)
    if missing:
        print(f"bench/run.py: error: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    if settings.binaries:
        for name in (SERVER_NAME, AGENT_NAME):
            if not os.access(settings.binaries / name, os.X_OK):
                print(f"bench/run.py: error: {settings.binaries / name} is not an executable", file=sys.stderr)
                return 2
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"

    # 1,000 streams are ~4,000 sockets across our processes; 200 agents a few hundred more.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if settings.idle_streams * 2 + 200 > soft:
        new = max(0, (soft - 200) // 2)
        print(f"bench/run.py: only {soft} file descriptors allowed: {new} idle streams instead of "
              f"{settings.idle_streams}", file=sys.stderr)
        settings.idle_streams = new

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeLimit(f"the run took longer than --time-limit {args.time_limit} s")

    signal.signal(signal.SIGALRM, on_alarm)
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.time_limit)

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rw-bench-"))
    bench = Bench(settings, tmp)
    results = bench.results
    code = 0
    try:
        results.header = header(settings)
        progress(f"reverse_websockify benchmark: {results.header['program_version']}; tmp {tmp}")
        bench.throughput()
        shards(bench)
        far_link(bench)
        workloads(bench)
        bench.idle_streams()
        bench.many_agents()
        fleet(bench)
    except (Fatal, TimeLimit, WaitTimeout, ProcessDied) as exc:
        results.fail(f"aborted: {exc}")
    except BenchError as exc:
        results.fail(str(exc))
    except KeyboardInterrupt:
        results.fail("interrupted")
    finally:
        signal.alarm(0)
        processes.stop_all()
        bench.scan_logs()
    results.header["duration_s"] = round(time.monotonic() - started)
    results.header["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if settings.quick:
        results.notes.append(f"--quick: {settings.repeat} repetition(s), short durations, {settings.agents} agents "
                             "instead of 200")
    elif settings.agents != 200:
        results.notes.append(f"{settings.agents} agents instead of 200")

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md = results.markdown()
    (args.out / f"bench-{stamp}.md").write_text(md)
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(results.to_json(), indent=2) + "\n")
    print(md)
    progress(f"wrote {args.out / f'bench-{stamp}.md'} and .json in {results.header['duration_s']} s")
    if args.strict and (results.log_problems or results.interruptions):
        results.failures.append(f"--strict: {len(results.log_problems)} error line(s) in the logs, "
                                f"{len(results.interruptions)} tunnel interruption(s)")
    if results.failures:
        code = 1
        progress(f"{len(results.failures)} failure(s); details in the JSON. Logs kept in {tmp}")
        for f in results.failures:
            print(f"FAILED: {f}", file=sys.stderr)
    elif not args.keep_tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        progress(f"logs kept in {tmp}")
    return code
