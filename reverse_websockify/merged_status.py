"""The status of every shard on one page, for people: ``http_server_endpoint`` of a config with [shards].

Served by ``--all-shards`` (next to the shards it supervises) or ``--shards-status``
(when the shards run as systemd template units or on other hosts). Each request
fetches every shard's JSON status concurrently, over asyncio, with a short
timeout: a shard that does not answer costs the page at most that, and its
services are shown as down ("shard 1 (127.0.0.1:39002) not answering"). The
page is status.py's, one row per service, each entry with its ``shard``.

- ``GET /``: merged JSON keyed by service ID (HTML for a browser);
- ``GET /shards``: per shard: endpoint, up, services, error;
- ``GET /ready/<ID>``: asks the owner shard;
- ``GET /healthz``: 200 while this process runs;
- ``GET /metrics``: every shard's metrics with a ``shard`` label (Prometheus may
  also scrape each shard itself, see the README);
- ``/forward_to_me/<ID>``: 421 naming the owner shard (agents go to the shards).
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, serve
from websockets.http11 import Request, Response

from . import __version__
from .config import Endpoint, ServerConfig
from .nginxmap import upstream_address
from .protocol import AGENT_PATH_PREFIX
from .reports import status_page
from .server import StartupError, _response
from .wsconnection import DirectServerConnection

log = logging.getLogger("reverse_websockify.shards")

FETCH_TIMEOUT = 2.0
MAX_BODY = 64 << 20


async def fetch(endpoint: Endpoint, path: str, accept: str = "application/json",
                timeout: float = FETCH_TIMEOUT) -> tuple[int, bytes]:
    """GET ``path`` from a shard; (status, body). OSError or asyncio.TimeoutError when it does not answer."""
    host = upstream_address(endpoint).rsplit(":", 1)[0].strip("[]")

    async def get() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, endpoint.port, limit=1 << 16)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nAccept: {accept}\r\n"
                         "Connection: close\r\n\r\n".encode())
            data = await reader.read(MAX_BODY)
            while True:  # the server closes after its answer (Connection: close)
                more = await reader.read(MAX_BODY)
                if not more:
                    break
                data += more
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        try:
            code = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise OSError(f"not an HTTP answer: {head[:60]!r}") from None
        return code, body

    return await asyncio.wait_for(get(), timeout)


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {FETCH_TIMEOUT:g} s"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _down_entry(config: ServerConfig, sid: str, shard: int, why: str) -> dict[str, Any]:
    service = config.services[sid]
    return {"nickname": service.nickname, "forward_at": str(service.listen), "service_connection_since": None,
            "service_connection_info": None, "client_connection_count": 0, "connected": False,
            "agent_address": None, "agent_version": None, "bytes_to_service": 0, "bytes_from_service": 0,
            "streams_opened_total": 0,
            "last_disconnect_reason": f"shard {shard} ({config.shards.endpoints[shard]}) not answering: {why}"
            if config.shards else why,
            "shard": shard, "shard_down": True}


def merge_metrics(texts: list[tuple[int, str]]) -> str:
    """Prometheus text of several shards as one exposition, each sample labelled with its shard.

    A metric family's samples must stay together under one HELP/TYPE, so families are gathered
    across shards in the order they first appear.
    """
    families: dict[str, tuple[list[str], list[str]]] = {}
    for shard, text in texts:
        current = None
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                head, _ = families.setdefault(name, ([], []))
                current = name
                if not any(existing.startswith(line[:7]) for existing in head):
                    head.append(line)
                continue
            if not line or line.startswith("#") or current is None:
                continue
            name, brace, rest = line.partition("{")
            if brace:
                comma = "" if rest.startswith("}") else ","
                sample = f'{name}{{shard="{shard}"{comma}{rest}'
            else:
                metric, _, value = line.partition(" ")
                sample = f'{metric}{{shard="{shard}"}} {value}'
            families[current][1].append(sample)
    return "".join("\n".join(head + samples) + "\n" for head, samples in families.values())


class MergedStatus:
    """The merged status page on ``config.http`` (the [shards] config's own http_server_endpoint)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.http: Server | None = None

    def reload(self, config: ServerConfig) -> None:
        self.config = config

    async def start(self) -> None:
        http = self.config.http
        try:
            self.http = await serve(self._never, http.host, http.port, process_request=self._route,
                                    server_header=f"reverse_websockify/{__version__}", reuse_address=True,
                                    open_timeout=self.config.handshake_timeout,
                                    create_connection=DirectServerConnection)  # writes a BodyApartResponse
        except OSError as exc:
            raise StartupError(f"{self.config.path}: http_server_endpoint: cannot listen on {http}: "
                               f"{exc.strerror or exc}") from None
        log.info("merged status of %d shards on %s", len(self.config.shards or ()), http)

    async def stop(self) -> None:
        if self.http is not None:
            self.http.close()
            await asyncio.wait_for(self.http.wait_closed(), 5)

    async def _never(self, connection: Any) -> None:  # every request is answered by _route
        await connection.close()

    async def shards(self, path: str = "/",
                     accept: str = "application/json") -> list[tuple[int, bytes] | BaseException]:
        endpoints = self.config.shards.endpoints if self.config.shards else ()
        return await asyncio.gather(*(fetch(e, path, accept) for e in endpoints), return_exceptions=True)

    async def merged(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """(status keyed by service ID, in config order; one summary per shard)."""
        config = self.config
        answers = await self.shards()
        by_shard: list[dict[str, Any]] = []
        summary = []
        for index, answer in enumerate(answers):
            endpoint = str(config.shards.endpoints[index]) if config.shards else ""
            try:
                if isinstance(answer, BaseException):
                    raise answer
                code, body = answer
                if code != 200:
                    raise OSError(f"HTTP {code}")
                entries = json.loads(body)
                by_shard.append(entries)
                summary.append({"shard": index, "endpoint": endpoint, "up": True, "services": len(entries),
                                "error": None})
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                by_shard.append({})
                summary.append({"shard": index, "endpoint": endpoint, "up": False, "services": 0, "error": _why(exc)})
        merged: dict[str, dict[str, Any]] = {}
        owners = config.shards.owners if config.shards else {}
        for sid in config.services:
            shard = owners.get(sid, 0)
            entry = by_shard[shard].get(sid) if shard < len(by_shard) else None
            if entry is not None:
                merged[sid] = {**entry, "shard": shard}
            elif shard < len(summary) and not summary[shard]["up"]:
                merged[sid] = _down_entry(config, sid, shard, summary[shard]["error"])
        for index, entries in enumerate(by_shard):  # known to a shard, not (yet) to this process's config
            for sid, entry in entries.items():
                merged.setdefault(sid, {**entry, "shard": index})
        return merged, summary

    async def _route(self, connection: Any, request: Request) -> Response:
        url = urlsplit(request.path)
        path = unquote(url.path)
        if path in ("/", "/services"):
            async def merged_entries() -> dict[str, dict[str, Any]]:
                return (await self.merged())[0]

            return _response(*await status_page(merged_entries, url.query, request.headers.get("Accept", ""),
                                                envelope=path == "/services"))
        if path == "/shards":
            _, summary = await self.merged()
            return _response(HTTPStatus.OK, json.dumps(summary, indent=2) + "\n", "application/json")
        if path == "/healthz":
            return _response(HTTPStatus.OK, "ok\n")
        if path == "/metrics":
            answers = await self.shards("/metrics", "text/plain")
            answered = [not isinstance(a, BaseException) and a[0] == 200 for a in answers]
            texts = [(i, a[1].decode("utf-8", "replace")) for i, a in enumerate(answers)  # type: ignore[index]
                     if answered[i]]
            up = "\n".join(f'reverse_websockify_shard_up{{shard="{i}"}} {int(ok)}' for i, ok in enumerate(answered))
            head = "# HELP reverse_websockify_shard_up 1 when the shard answered this scrape\n" \
                   "# TYPE reverse_websockify_shard_up gauge\n"
            return _response(HTTPStatus.OK, head + up + "\n" + merge_metrics(texts),
                             "text/plain; version=0.0.4; charset=utf-8")
        shards = self.config.shards
        for prefix in ("/ready/", AGENT_PATH_PREFIX):
            if path.startswith(prefix):
                sid = path[len(prefix):]
                owner = shards.owners.get(sid) if shards else None
                if owner is None:
                    return _response(HTTPStatus.NOT_FOUND, f"unknown service ID {sid[:200]!r}\n")
                if prefix == AGENT_PATH_PREFIX:
                    return _response(HTTPStatus.MISDIRECTED_REQUEST,
                                     f"service {sid} belongs to shard {owner} ({shards.endpoints[owner]}); this is the "
                                     "merged status page, agents attach to the shards (nginx's shard map)\n")
                try:
                    code, body = await fetch(shards.endpoints[owner], f"/ready/{sid}")
                except (OSError, asyncio.TimeoutError) as exc:
                    return _response(HTTPStatus.SERVICE_UNAVAILABLE, f"shard {owner} not answering: {_why(exc)}\n")
                return _response(HTTPStatus(code), body)
        return _response(HTTPStatus.NOT_FOUND, "not found\n")
