"""The load tools: running iperf3, wrk and ab, and reading their output.

The parsers are pure functions of a tool's output (unit-tested on captured real outputs in
tests/unit/test_bench_parsers.py); the runners add the process, the timeout and the error text.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.processes import exited_early, start_process
from tests.support.ports import listening
from tests.support.waiting import wait_for

# -- parsers (pure) --------------------------------------------------------------------------------


class UnparsableOutput(ValueError):
    """A tool's output does not hold what it should; the message says what is missing."""


def parse_iperf3_json(out: str) -> float:
    """``iperf3 -J`` output (possibly followed by other text) → Gbit/s at the receiver.

    Raises UnparsableOutput with iperf3's own words when it reports an error.
    """
    try:
        data = json.loads(out[: out.rfind("}") + 1])
    except ValueError:
        raise UnparsableOutput("no JSON document in the output") from None
    if data.get("error"):
        raise UnparsableOutput(str(data["error"]))
    try:
        return data["end"]["sum_received"]["bits_per_second"] / 1e9
    except (KeyError, TypeError):
        raise UnparsableOutput("no end.sum_received.bits_per_second") from None


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out: str) -> dict[str, float]:
    """``wrk --latency`` output → rps, requests, p50_ms, p99_ms, errors (socket errors + non-2xx/3xx).

    A latency percentile wrk did not print is NaN.
    """
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if not m or not n:
        raise UnparsableOutput("no 'Requests/sec' or 'requests in' line")
    latency = {int(p): float(v) * _UNITS_MS[u]
               for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)}
    errors = 0
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if e:
        errors += sum(int(x) for x in e.groups())
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        errors += int(bad.group(1))
    return {"rps": float(m.group(1)), "requests": int(n.group(1)), "p50_ms": latency.get(50, float("nan")),
            "p99_ms": latency.get(99, float("nan")), "errors": errors}


def parse_ab(out: str) -> dict[str, float]:
    """``ab`` output → cps (requests, i.e. connections, per second), complete, failed (+ non-2xx)."""
    m = re.search(r"Requests per second:\s+([\d.]+)", out)
    c = re.search(r"Complete requests:\s+(\d+)", out)
    f = re.search(r"Failed requests:\s+(\d+)", out)
    if not m or not c or not f:
        raise UnparsableOutput("no 'Requests per second', 'Complete requests' or 'Failed requests' line")
    failed = int(f.group(1))
    bad = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if bad:
        failed += int(bad.group(1))
    return {"cps": float(m.group(1)), "complete": int(c.group(1)), "failed": failed}


def parse_redis_benchmark_csv(out: str) -> dict[str, dict[str, float]]:
    """``redis-benchmark --csv`` output → {test: {rps, avg_ms, p50_ms, p99_ms}} (e.g. "SET", "GET")."""
    rows = list(csv.reader(line for line in out.splitlines() if line.startswith('"')))
    if not rows or rows[0][:2] != ["test", "rps"]:
        raise UnparsableOutput('no CSV header "test","rps",...')
    columns = {name: i for i, name in enumerate(rows[0])}
    want = {"rps": "rps", "avg_ms": "avg_latency_ms", "p50_ms": "p50_latency_ms", "p99_ms": "p99_latency_ms"}
    if set(want.values()) - set(columns):
        raise UnparsableOutput(f"CSV header without {', '.join(sorted(set(want.values()) - set(columns)))}")
    try:
        found = {row[0]: {k: float(row[columns[c]]) for k, c in want.items()} for row in rows[1:]}
    except (IndexError, ValueError):
        raise UnparsableOutput("a CSV row without numbers in every column") from None
    if not found:
        raise UnparsableOutput("no test row after the CSV header")
    return found


def parse_pgbench(out: str) -> dict[str, float]:
    """``pgbench`` (15) output → tps, transactions, failed, latency_ms (average)."""
    tps = re.search(r"^tps = ([\d.]+)", out, re.M)
    done = re.search(r"^number of transactions actually processed: (\d+)", out, re.M)
    latency = re.search(r"^latency average = ([\d.]+) ms", out, re.M)
    if not tps or not done or not latency:
        raise UnparsableOutput("no 'tps =', 'number of transactions actually processed' or 'latency average' line")
    failed = re.search(r"^number of failed transactions: (\d+)", out, re.M)  # pgbench 15 and later
    return {"tps": float(tps.group(1)), "transactions": int(done.group(1)),
            "failed": int(failed.group(1)) if failed else 0, "latency_ms": float(latency.group(1))}


# What a frame of a sampled stack belongs to (py-spy's "function (file:line)"; with --native also C
# frames: "function (libssl.so.3)", "uv__read (stream.c:1154)"), matched in this order. The sample
# counts for the innermost frame that matches any: a memcpy or a Py_DECREF counts for its caller.
PROFILE_IDLE = "waiting (epoll)"
PROFILE_PARTS: tuple[tuple[str, str], ...] = (
    (PROFILE_IDLE, r"^epoll_p?wait \("),
    ("system calls (socket read/write)", r"^(__)?(read|write|readv|writev|send|recv|sendmsg|recvmsg|sendto|recvfrom) \(libc"),
    ("TLS (ssl, OpenSSL)", r"\((libssl|libcrypto)[.\w]*|_ssl\.c:|ssl\.py:"),
    ("websockets (framing, masking)", r"\(websockets/"),
    ("reverse_websockify (our code)", r"\(reverse_websockify/"),
    ("event loop (asyncio, uvloop)", r"\((asyncio/|uvloop/|loop\.c:|core\.c:|linux\.c:|stream\.c:|libuv|_asynciomodule\.c:)"),
)
PROFILE_OTHER = "other (interpreter, libc)"


def parse_pyspy_raw(out: str) -> tuple[int, dict[str, float]]:
    """``py-spy record --format raw`` (collapsed stacks: ``frame;frame;... COUNT``) → (busy samples, share per part).

    Each sample counts for the part of its innermost frame that matches one of PROFILE_PARTS (else
    PROFILE_OTHER); the samples waiting in epoll are not CPU and are left out of the shares, which
    add up to 1 (every part is there, 0.0 when it got no sample).
    """
    counts = {name: 0 for name, _ in PROFILE_PARTS if name != PROFILE_IDLE} | {PROFILE_OTHER: 0}
    for line in out.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        part = PROFILE_OTHER
        for frame in reversed(stack.split(";")):
            found = next((name for name, pattern in PROFILE_PARTS if re.search(pattern, frame)), None)
            if found:
                part = found
                break
        if part != PROFILE_IDLE:
            counts[part] += int(n)
    total = sum(counts.values())
    if not total:
        raise UnparsableOutput("no sampled stack outside epoll")
    return total, {name: c / total for name, c in counts.items()}


# The version line of each tool (args to print it, pattern of the version in its output).
TOOL_VERSIONS: tuple[tuple[list[str], str], ...] = (
    (["iperf3", "--version"], r"iperf (\S+)"), (["wrk", "-v"], r"wrk (\S+)"), (["ab", "-V"], r"Version (\S+)"),
    (["nginx", "-v"], r"nginx/(\S+)"), (["curl", "--version"], r"curl (\S+)"),
    (["redis-benchmark", "--version"], r"redis-benchmark (\S+)"), (["pgbench", "--version"], r"pgbench \(PostgreSQL\) (\S+)"),
)


def parse_tool_version(out: str, pattern: str) -> str:
    """The version a tool printed, or '?'."""
    m = re.search(pattern, out)
    return m.group(1) if m else "?"


def parse_program_version(line: str) -> dict[str, str]:
    """``reverse_websockify_server --version`` → version, python, websockets (what it names)."""
    m = re.search(r" (\S+?)(?: \(single-file build\))?; Python (\S+), websockets (\S+)", line)
    if not m:
        return {}
    return {"version": m.group(1), "python": m.group(2), "websockets": m.group(3)}


# -- runners -----------------------------------------------------------------------------------------


def run_tool(args: list[str], timeout: float, what: str) -> str:
    """Run a load tool to completion; its failure or a hang is a BenchError with its output."""
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out: Any = exc.stdout or b""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        raise BenchError(f"{what}: did not finish within {timeout:g} s: {' '.join(args)}\n{out[-1500:]}") from None
    if done.returncode != 0:
        raise BenchError(f"{what}: {args[0]} exited with {done.returncode}: {' '.join(args)}\n"
                         f"{(done.stdout + done.stderr)[-1500:]}")
    return done.stdout + ("\n" + done.stderr if done.stderr else "")


def iperf3(port_direct: int, port: int, seconds: int, reverse: bool, parallel: int, tmp: Path) -> float:
    """One iperf3 test against a fresh one-off iperf3 server; Gbit/s at the receiver."""
    server = start_process("iperf3 -s", ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port_direct)],
                           tmp / "iperf3-server.log")
    try:
        # not by connecting: iperf3 -1 takes one client only
        wait_for(lambda: listening(port_direct) or exited_early(server), 10, "iperf3 server to listen")
        args = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J", "--connect-timeout", "5000"]
        if reverse:
            args.append("-R")
        if parallel > 1:
            args += ["-P", str(parallel)]
        try:
            out = run_tool(args, seconds + 30, "iperf3")
        except BenchError as exc:
            raise BenchError(f"{exc}\niperf3 server said: {server.log()[-1000:]}") from None
        try:
            return parse_iperf3_json(out)
        except UnparsableOutput as exc:
            raise BenchError(f"iperf3: {exc}: {' '.join(args)}") from None
    finally:
        try:
            server.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        server.stop(5)


def wrk(port: int, connections: int, seconds: int) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
            f"http://127.0.0.1:{port}/small.bin"]
    out = run_tool(args, seconds + 30, "wrk")
    try:
        return parse_wrk(out)
    except UnparsableOutput:
        raise BenchError(f"wrk: cannot parse its output: {' '.join(args)}\n{out[-1500:]}") from None


def ab(port: int, concurrency: int, requests: int) -> dict[str, float]:
    args = ["ab", "-q", "-r", "-s", "10", "-c", str(concurrency), "-n", str(requests),
            f"http://127.0.0.1:{port}/small.bin"]
    out = run_tool(args, 180, "ab")
    try:
        return parse_ab(out)
    except UnparsableOutput:
        raise BenchError(f"ab: cannot parse its output: {' '.join(args)}\n{out[-1500:]}") from None


def redis_benchmark(port: int, requests: int) -> dict[str, dict[str, float]]:
    """``redis-benchmark -c16 -P16 -t set,get``: {"SET": {...}, "GET": {...}} (see parse_redis_benchmark_csv)."""
    args = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "16", "-P", "16", "-n", str(requests),
            "-t", "set,get", "--csv"]
    out = run_tool(args, 60 + requests / 5000, "redis-benchmark")  # it retries a refused port forever
    try:
        found = parse_redis_benchmark_csv(out)
    except UnparsableOutput as exc:
        raise BenchError(f"redis-benchmark: {exc}: {' '.join(args)}\n{out[-1500:]}") from None
    if {"SET", "GET"} - set(found) or re.search(r"\berror\b", out, re.I):
        raise BenchError(f"redis-benchmark: no SET and GET rows, or an error: {' '.join(args)}\n{out[-1500:]}")
    return found


def pgbench(port: int, seconds: int) -> dict[str, float]:
    """``pgbench -c16 -j2 -S`` (select only) for ``seconds`` against the bench's cluster (see bench/README.md)."""
    args = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "16", "-j", "2", "-S", "-n",
            "-T", str(seconds), "postgres"]
    out = run_tool(args, seconds + 60, "pgbench")
    try:
        return parse_pgbench(out)
    except UnparsableOutput as exc:
        raise BenchError(f"pgbench: {exc}: {' '.join(args)}\n{out[-1500:]}") from None
