"""Which shard owns a service ID: the one rule that config.py, the nginx map and the shards share.

A sharded deployment (``[shards]`` in config.toml) runs one server process per
entry of ``shards.http_server_endpoints``; shard k serves the agents and the
listeners of the services it owns, and nginx sends ``/forward_to_me/<ID>`` to
the owner (``reverse_websockify_server --nginx-shard-map``). The rule is pure
and stable across processes, hosts, Python versions and restarts:

- ``shard = k`` in ``[remote_service.<ID>]``, when given;
- else CRC-32 (zlib, IEEE) of the ID's UTF-8 bytes, modulo the number of shards.

Never Python's ``hash()``: it is salted per process.
"""

from __future__ import annotations

import zlib


def owner(service_id: str, shard_count: int, explicit: int | None = None) -> int:
    """The shard (0 .. shard_count - 1) that owns ``service_id``."""
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    if explicit is not None:
        if not 0 <= explicit < shard_count:
            raise ValueError(f"shard {explicit} is not in 0..{shard_count - 1}")
        return explicit
    return zlib.crc32(service_id.encode("utf-8")) % shard_count
