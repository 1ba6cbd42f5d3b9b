"""CPU time that the parties of one measurement spent: the load tool, the service, the relay.

A throughput ratio on a box whose cores are all busy says how much more CPU each request costs
through the tunnel, not how fast the tunnel could be on its own machine. So the workloads report
each party's CPU per request too: when the relay (server + agent) spends more per request than the
service and its client together, no tunnel on that box can reach half of direct.
"""

from __future__ import annotations

import resource
import time

from tests.support import probes


def _finished_children_seconds() -> float:
    """The CPU of the bench's children that ended and were waited for: the load tools (subprocess.run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds of ``parties`` (name → process ids, each with its descendants) since the meter was made;
    with ``load_tool``, also of the load tool that ran meanwhile ("client": the bench's finished children)."""

    def __init__(self, parties: dict[str, list[int]], *, load_tool: bool = False) -> None:
        self.parties = parties
        self.load_tool = load_tool
        self._start = self._read()
        self._started = time.monotonic()

    def _read(self) -> dict[str, float]:
        readings = {name: sum(probes.tree_cpu_seconds(pid) for pid in pids) for name, pids in self.parties.items()}
        if self.load_tool:
            readings["client"] = _finished_children_seconds()
        return readings

    def spent(self) -> dict[str, float]:
        """Seconds each party spent since the meter was made."""
        now = self._read()
        return {name: now[name] - self._start[name] for name in now}

    def cores(self) -> dict[str, float]:
        """What each party spent since the meter was made, in cores (CPU seconds per second)."""
        spent, wall = self.spent(), time.monotonic() - self._started
        return {name: seconds / wall for name, seconds in spent.items()}
