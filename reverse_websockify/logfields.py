"""Structured fields for connection-event log lines.

Text logs carry them in the message already ("service X stream N: ..."); with
``--log-format json`` they also become separate keys, so a log pipeline can
filter by service ID or stream without parsing sentences.
"""

from __future__ import annotations

from typing import Any


def fields(service: str, stream: int | None = None, peer: str | None = None, **more: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"service": service}
    if stream is not None:
        extra["stream"] = stream
    if peer:
        extra["peer"] = peer
    extra.update(more)
    return extra


FIELD_NAMES = ("service", "stream", "peer", "reason", "failure", "close_code", "duration_seconds", "agent_version",
               "shard")
