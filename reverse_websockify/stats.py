"""What the server counts about one service, across all of its agents' sessions.

A plain record handed down to the tunnel and the user-side streams, which add
to it where things happen (an open timer fires, OPEN_OK or RST comes back, a
session resumes); the status page and /metrics read it. Nothing here is
updated per packet.
"""

from __future__ import annotations

import collections

from .latency import LatencyHistogram
from .reasons import StreamFailure


class ServiceStats:
    __slots__ = ("failures", "latency", "sessions_resumed", "sessions_expired", "streams_resumed",
                 "bytes_retransmitted", "refusals")

    def __init__(self) -> None:
        self.failures: collections.Counter[StreamFailure] = collections.Counter()
        self.latency = LatencyHistogram()  # a user's accept -> the agent's connect to its service
        self.sessions_resumed = 0
        self.sessions_expired = 0  # detached sessions given up: resume_seconds passed
        self.streams_resumed = 0  # streams carried across a lost link
        self.bytes_retransmitted = 0
        self.refusals: collections.Counter[str] = collections.Counter()  # agents refused at attach, by reason

    def failed(self, reason: StreamFailure) -> None:
        self.failures[reason] += 1

    def opened(self, seconds: float) -> None:
        self.latency.observe(seconds)
