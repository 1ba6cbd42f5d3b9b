"""The header of a report: the machine, the programs, the tools and the commit it measured."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.settings import Settings
from bench.tools import TOOL_VERSIONS, parse_program_version, parse_tool_version, run_tool
from tests.support.programs import REPO, SERVER_NAME


def header(settings: Settings) -> dict[str, Any]:
    h: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "mode": "binaries" if settings.binaries else "package",
        "binaries": str(settings.binaries) if settings.binaries else None,
        "event_loop": settings.event_loop,
        "server_config": settings.server_config,
        "bench_python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                h["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = run_tool(settings.programs.executable(SERVER_NAME) + ["--version"], 60, "server --version").strip()
    h["program_version"] = version.splitlines()[0] if version else "?"
    h.update(parse_program_version(h["program_version"]))
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "reverse_websockify"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        h["git"] = commit + (" + uncommitted changes in reverse_websockify/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        h["git"] = "?"
    tools = []
    for args, pattern in TOOL_VERSIONS:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=10)
            tools.append(f"{args[0]} {parse_tool_version(done.stdout + done.stderr, pattern)}")
        except (OSError, subprocess.SubprocessError):
            tools.append(f"{args[0]} ?")
    h["tools"] = ", ".join(tools)
    return h
