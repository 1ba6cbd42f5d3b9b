"""Readings from Linux /proc: memory, CPU time and file descriptors of a process or of its tree.

The tree matters for the single-file executables: a small bootloader process plus the Python
process it starts, both counted when the question is "what does this program cost".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, name: str = "VmRSS") -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM...) of a running process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} for pid {pid}")


def rss_kib(pid: int) -> int:
    return status_kib(pid, "VmRSS")


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split between the processes that share them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Pss for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """utime + stime of a process, in seconds; with ``reaped``, also of its children that ended and were
    waited for (cutime + cstime)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return sum(int(field) for field in fields[11 : 15 if reaped else 13]) / CLK_TCK  # fields 14-17 of proc(5)


def children(pid: int) -> list[int]:
    """The direct children of a process (of all its threads)."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return found


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants."""
    pids, i = [pid], 0
    while i < len(pids):
        pids += children(pids[i])
        i += 1
    return pids


def cmdline(pid: int) -> list[str]:
    """A process's command line ([] once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def tree_pids_running(pid: int, *args: str) -> list[int]:
    """pid's descendants (and itself) whose command line holds ``args`` as consecutive words."""
    n = len(args)
    return [p for p in tree_pids(pid)
            if any(tuple(words[i:i + n]) == args for words in [cmdline(p)] for i in range(len(words)))]


def _sum_over_tree(pid: int, reading: Callable[[int], float]) -> float:
    """A reading summed over the tree; a process that is gone (or just went) counts 0."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += reading(p)
        except (OSError, AssertionError):
            pass
    return total


def tree_status_kib(pid: int, name: str = "VmRSS") -> int:
    return int(_sum_over_tree(pid, lambda p: status_kib(p, name)))


def tree_pss_kib(pid: int) -> int:
    return int(_sum_over_tree(pid, pss_kib))


def tree_fd_count(pid: int) -> int:
    return int(_sum_over_tree(pid, fd_count))


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its descendants (launcher + program), in seconds, with those of
    descendants that ended and were waited for (PostgreSQL's backends, say: pgbench's connections end
    with the run)."""
    return _sum_over_tree(pid, lambda p: cpu_seconds(p, reaped=True))
