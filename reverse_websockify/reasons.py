"""Why a user's connection never reached the service: one vocabulary for logs, status and metrics."""

from __future__ import annotations

import enum


class StreamFailure(str, enum.Enum):
    """The ``failure`` field of log lines, the keys of the status page's ``streams_failed``, and the
    ``reason`` label of the ``streams_failed`` metric: one name each, so they can be joined."""

    NO_AGENT = "no_agent"  # no agent attached (within agent_wait_seconds)
    DIAL_FAILED = "dial_failed"  # the agent could not connect to its service
    OPEN_TIMEOUT = "open_timeout"  # the agent did not answer OPEN within open_timeout_seconds
    TOO_MANY_STREAMS = "too_many_streams"  # max_streams_per_agent reached

    def __str__(self) -> str:
        return self.value
