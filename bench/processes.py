"""Every helper process the benchmark starts is registered here, so that all of them stop at the end.

A run ends on a failure, a time limit or Ctrl-C as well as normally; stop_all() then stops (and
SIGCONTs, for the stalled curl) whatever is still running, the last started first.
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError
from tests.support.processes import Process

STARTED: list[Process] = []


def register(process: Process) -> Process:
    STARTED.append(process)
    return process


def start_process(name: str, args: list[str], log_path: Path) -> Process:
    """A tool or service the benchmark runs (not one of the programs under test)."""
    return register(Process(args, log_path, name=name, launcher=False))


def exited_early(proc: Process) -> bool:
    """For wait_for conditions: a helper process that ended while we waited for it is a BenchError."""
    if not proc.alive():
        raise BenchError(f"{proc.name} exited early: {proc.log()[-1000:]}")
    return False


def stop_all() -> None:
    for process in reversed(STARTED):
        try:
            process.stop(5)
        except Exception:  # noqa: BLE001 — best effort at exit
            pass
