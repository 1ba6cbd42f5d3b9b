"""A fixed-bucket latency histogram, kept without prometheus_client.

Stream opens are observed here (once per stream, never per packet), and the
event loop's lag (looplag.py); the metrics page turns the buckets into a
Prometheus histogram when scraped, so start-up never imports prometheus_client.
"""

from __future__ import annotations

import bisect
from typing import Sequence

# Seconds from a user's accept to the agent's local connect: loopback is
# milliseconds, a cellular round trip 0.1-2 s, a dial timeout 10 s.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LatencyHistogram:
    __slots__ = ("buckets", "counts", "total")

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds


def cumulative(counts: Sequence[int], buckets: Sequence[float] = BUCKETS) -> list[tuple[str, int]]:
    """(upper bound, cumulative count) pairs, Prometheus style, ending with +Inf."""
    running = 0
    result = []
    for bound, n in zip([*map(str, buckets), "+Inf"], counts):
        running += n
        result.append((bound, running))
    return result
