"""The operator's pages (status, metrics) for a fleet of thousands, without stalling anyone's tunnel.

At 8,000 agents, reading every service and formatting megabytes of JSON or
Prometheus text in one go held the event loop for up to 1.4 s per request, and
with it every user of every tunnel. So the reading happens on the loop in
slices with a yield between them (pacing.py; the values are plain counters,
read where they live), and the formatting runs in a worker thread,
where the interpreter's switch interval (5 ms) lets the loop back in. Requests
that arrive while a reading is under way share it instead of starting another.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, Iterable, Mapping, TypeVar
from urllib.parse import parse_qs

from . import status
from .pacing import collector_paused, in_worker_thread, paced
from .service import Service

if TYPE_CHECKING:
    from .looplag import LoopLag
    from .metrics import ServiceReading

T = TypeVar("T")
R = TypeVar("R")


async def read_in_slices(items: Iterable[T], read: Callable[[T], R]) -> list[R]:
    return [read(item) async for item in paced(items)]


class Shared(Generic[T]):
    """One reading at a time: callers that arrive while it runs get its result."""

    def __init__(self, produce: Callable[[], Awaitable[T]]) -> None:
        self._produce = produce
        self._running: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._running is None:
            self._running = asyncio.ensure_future(self._produce())
            self._running.add_done_callback(self._finished)
        return await asyncio.shield(self._running)

    def _finished(self, future: asyncio.Future[T]) -> None:
        self._running = None
        if not future.cancelled():
            future.exception()  # retrieved: a failed reading is reported to its callers, not as "never retrieved"


Page = tuple[HTTPStatus, bytes, str]


async def status_page(snapshot: Callable[[], Awaitable[dict[str, dict[str, Any]]]], query_string: str, accept: str,
                      envelope: bool,
                      page_of: Callable[[status.StatusQuery], Awaitable[status.StatusPage]] | None = None) -> Page:
    """``/`` (the original document, or HTML for a browser) and ``/services`` (a page with counts).

    ``page_of``: a cheaper way to a page than every service's snapshot (HTML and /services with a limit).
    """
    as_html = not envelope and "text/html" in accept
    try:
        query = status.StatusQuery.parse(query_string, status.HTML_PAGE_ROWS if as_html else None)
    except status.StatusQueryError as exc:
        return HTTPStatus.BAD_REQUEST, f"{exc}\n".encode(), "text/plain; charset=utf-8"
    with collector_paused():
        if page_of is not None and (as_html or envelope) and query.limit is not None:
            page = await page_of(query)
            if as_html:
                body = await in_worker_thread(lambda: status.render_html_page(page, query))
                return HTTPStatus.OK, body, "text/html; charset=utf-8"
            return HTTPStatus.OK, await in_worker_thread(lambda: status.render_page_document(page, query)), \
                "application/json"
        entries = await snapshot()
        if as_html:
            body = await in_worker_thread(lambda: status.render_html(entries, query=query))
            content_type = "text/html; charset=utf-8"
        else:
            render = status.render_page_json if envelope else status.render_json
            body = await in_worker_thread(lambda: render(entries, query))
            content_type = "application/json"
        # Every service's entry is freed here (2-3 ms at 8,000 services), in a loop turn of its own rather
        # than in the one that then writes the response.
        del entries
        await asyncio.sleep(0)
        return HTTPStatus.OK, body, content_type


class Reports:
    """``/``, ``/services`` and ``/metrics`` for the server's current services."""

    def __init__(self, services: Callable[[], Mapping[str, Service]], per_service_limit: Callable[[], int],
                 loop_lag: LoopLag | None = None) -> None:
        self._services = services
        self._per_service_limit = per_service_limit
        self._loop_lag = loop_lag
        self._snapshots: Shared[dict[str, dict[str, Any]]] = Shared(self._read_snapshots)
        self._briefs: Shared[dict[str, dict[str, Any]]] = Shared(self._read_briefs)
        self._readings: Shared[list[ServiceReading]] = Shared(self._read_metrics)

    async def _read_snapshots(self) -> dict[str, dict[str, Any]]:
        return await self._read_all(Service.snapshot)

    async def _read_briefs(self) -> dict[str, dict[str, Any]]:
        return await self._read_all(Service.brief)

    async def _read_all(self, read: Callable[[Service], dict[str, Any]]) -> dict[str, dict[str, Any]]:
        services = list(self._services().values())
        entries = await read_in_slices(services, read)
        return {service.service_id: entry for service, entry in zip(services, entries)}

    async def _page(self, query: status.StatusQuery) -> status.StatusPage:
        """Filter and count on every service's brief entry (in a worker thread: 8,000 entries held the loop
        5-25 ms), the whole entry only for the page's rows."""
        briefs = await self._briefs.get()
        brief = await in_worker_thread(lambda: status.StatusPage.of(briefs, query))
        services = self._services()
        rows = {sid: services[sid].snapshot() for sid in brief.services if sid in services}
        return status.StatusPage(rows, brief.matched, brief.totals)

    async def _read_metrics(self) -> list[ServiceReading]:
        from .metrics import read  # prometheus_client is imported on the first scrape, not at start

        return await read_in_slices(self._services().values(), read)

    async def status(self, query_string: str, accept: str, envelope: bool) -> Page:
        return await status_page(self._snapshots.get, query_string, accept, envelope, page_of=self._page)

    async def metrics(self, query_string: str) -> Page:
        """Per-service series up to the configured number of services, or when asked; fleet sums otherwise."""
        from .metrics import LoopLagReading, render

        fields = parse_qs(query_string)
        with collector_paused():
            readings = await self._readings.get()
            services = len(readings)
            chosen = set(fields.get("service", ()))
            if chosen:
                readings = [r for r in readings if r.service_id in chosen]
            switch = fields.get("per_service", [""])[-1]
            per_service = bool(chosen) or (switch in ("1", "true", "yes") if switch
                                           else services <= self._per_service_limit())
            lag = LoopLagReading.of(self._loop_lag) if self._loop_lag is not None else None
            body, content_type = await in_worker_thread(lambda: render(readings, per_service, services, lag))
        return HTTPStatus.OK, body, content_type
