"""What the server counts about one service's stream opens, across all of its agents' tunnels.

A plain record handed down to the user-side streams, which add to it where
things happen (an open timer fires, OPEN_OK or RST comes back); the status
page and /metrics read it. Nothing here is updated per packet.
"""

from __future__ import annotations

import collections

from .latency import LatencyHistogram
from .reasons import StreamFailure


class OpenStats:
    __slots__ = ("failures", "latency")

    def __init__(self) -> None:
        self.failures: collections.Counter[StreamFailure] = collections.Counter()
        self.latency = LatencyHistogram()  # a user's accept -> the agent's connect to its service

    def failed(self, reason: StreamFailure) -> None:
        self.failures[reason] += 1

    def opened(self, seconds: float) -> None:
        self.latency.observe(seconds)
