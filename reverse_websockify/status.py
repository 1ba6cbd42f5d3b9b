"""The status page: one JSON document (the original's shape, plus more) and an HTML view of it.

Rendering lives apart from the server so that it stays a pure function of a
snapshot; every value is escaped, since IDs and nicknames come from a file and
agent versions from the network.

A fleet of thousands needs to find one bus and page through the rest, so every
view takes the same query (``?state=offline&q=bus1&offset=100&limit=100``,
``?service=ID`` repeated). The JSON at ``/`` keeps its shape (ID -> entry), only
filtered; ``/services`` wraps a page with the counts a script needs to page;
the HTML view shows 100 rows unless asked for more.
"""

from __future__ import annotations

import functools
import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import parse_qs, urlencode

STATES = ("online", "reconnecting", "offline")
HTML_PAGE_ROWS = 100
PRETTY_LIMIT = 1000
"""JSON documents of up to this many services are indented for people; larger ones are for scripts,
and compact JSON is written ten times faster (8,000 services: 5.7 MB in ~0.5 s indented, ~0.07 s
compact with the standard library's C encoder, ~0.01 s with orjson)."""


class StatusQueryError(ValueError):
    """A query the status page cannot answer; the text is the one-line 400 body."""


@dataclass(frozen=True)
class StatusQuery:
    state: str | None = None  # one of STATES
    text: str = ""  # a case-insensitive substring of the ID or the nickname
    services: tuple[str, ...] = ()  # exact IDs
    offset: int = 0
    limit: int | None = None  # None: all

    @property
    def filtered(self) -> bool:
        return self != StatusQuery()

    @classmethod
    def parse(cls, query_string: str, default_limit: int | None = None) -> StatusQuery:
        try:
            fields = parse_qs(query_string, keep_blank_values=True, strict_parsing=False, max_num_fields=1000)
        except ValueError as exc:
            raise StatusQueryError(f"bad query string: {exc}") from None
        unknown = sorted(set(fields) - {"state", "q", "service", "offset", "limit"})
        if unknown:
            raise StatusQueryError(f"unknown query parameter {unknown[0][:50]!r} (allowed: state, q, service, offset, "
                                   "limit)")
        state = fields.get("state", [""])[-1] or None
        if state is not None and state not in STATES:
            raise StatusQueryError(f"state: expected one of {', '.join(STATES)}, got {state[:50]!r}")
        return cls(state, fields.get("q", [""])[-1], tuple(fields.get("service", ())),
                   _count(fields, "offset", 0), _count(fields, "limit", default_limit))

    def to_query_string(self, **changes: Any) -> str:
        values = {"state": self.state, "q": self.text, "service": list(self.services), "offset": self.offset,
                  "limit": self.limit, **changes}
        return urlencode({k: v for k, v in values.items() if v not in (None, "", [], 0)}, doseq=True)


def _count(fields: Mapping[str, list[str]], name: str, default: int | None) -> int | None:
    if name not in fields:
        return default
    text = fields[name][-1]
    if not text.isdigit() or len(text) > 9:
        raise StatusQueryError(f"{name}: expected a whole number, got {text[:50]!r}")
    return int(text)


def state_of(entry: Mapping[str, Any]) -> str:
    if entry.get("connected"):
        return "online"
    return "reconnecting" if entry.get("reconnecting_since") else "offline"


def select(snapshot: Mapping[str, Mapping[str, Any]], query: StatusQuery) -> tuple[dict[str, Mapping[str, Any]], int]:
    """The page the query asks for, and how many services matched before paging."""
    wanted = set(query.services)
    text = query.text.casefold()
    matched = [
        (sid, entry) for sid, entry in snapshot.items()
        if (not wanted or sid in wanted)
        and (query.state is None or state_of(entry) == query.state)
        and (not text or text in sid.casefold() or text in str(entry.get("nickname") or "").casefold())
    ]
    end = None if query.limit is None else query.offset + query.limit
    return dict(matched[query.offset:end]), len(matched)


def summarize(snapshot: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Fleet totals: what a person or a dashboard reads first."""
    totals = {"services": len(snapshot), **{state: 0 for state in STATES}, "active_streams": 0,
              "bytes_to_service": 0, "bytes_from_service": 0}
    for entry in snapshot.values():
        totals[state_of(entry)] += 1
        totals["active_streams"] += int(entry.get("client_connection_count") or 0)
        totals["bytes_to_service"] += int(entry.get("bytes_to_service") or 0)
        totals["bytes_from_service"] += int(entry.get("bytes_from_service") or 0)
    return totals


def render_json(snapshot: Mapping[str, Mapping[str, Any]], query: StatusQuery = StatusQuery()) -> bytes:
    """``/``: the original document (ID -> entry), filtered and paged when asked."""
    page = select(snapshot, query)[0] if query.filtered else snapshot
    return _json(page, len(page))


@dataclass(frozen=True)
class StatusPage:
    """The rows a query asks for, how many matched, and the fleet's totals."""

    services: Mapping[str, Mapping[str, Any]]
    matched: int
    totals: Mapping[str, int]

    @classmethod
    def of(cls, snapshot: Mapping[str, Mapping[str, Any]], query: StatusQuery) -> StatusPage:
        """From every service's entry; entries need only the keys ``select`` and ``summarize`` read."""
        page, matched = select(snapshot, query)
        return cls(page, matched, summarize(snapshot))


def render_page_json(snapshot: Mapping[str, Mapping[str, Any]], query: StatusQuery) -> bytes:
    return render_page_document(StatusPage.of(snapshot, query), query)


def render_page_document(page: StatusPage, query: StatusQuery) -> bytes:
    """``/services``: one page with the counts to fetch the next (``matched``) and the fleet's totals."""
    document = {"summary": page.totals, "matched": page.matched, "offset": query.offset, "limit": query.limit,
                "services": page.services}
    return _json(document, len(page.services))


def _json(document: Mapping[str, Any], services: int) -> bytes:
    if services <= PRETTY_LIMIT:
        return json.dumps(document, indent=2).encode() + b"\n"
    return b"".join(_compact(document, _encoder())) + b"\n"


_json_encode = json.JSONEncoder(check_circular=False).encode  # our documents are trees: no cycle to look for


def encode_with_json(value: Any) -> bytes:
    """The standard library's C encoder: where orjson has no wheel (PyPy)."""
    return _json_encode(value).encode()


Encode = Callable[[Any], bytes]


@functools.cache
def _encoder() -> Encode:
    """orjson, eight times faster, imported with the first large document: it adds 1.7 MiB to a server
    that never shows more than ``PRETTY_LIMIT`` services. What orjson refuses (a lone surrogate, an
    integer beyond 64 bits) the standard library writes, so that one odd value never costs the page."""
    try:
        import orjson
    except ImportError:  # pragma: no cover (CPython installs orjson with the package)
        return encode_with_json

    def encode(value: Any) -> bytes:
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:
            return encode_with_json(value)

    return encode


ENTRIES_PER_CALL = 500
"""Services encoded per encoder call in a large document, which holds the interpreter lock throughout:
about 0.5 ms each with orjson (8,000 services, 4.9 MB: 8 ms in all, against 66 ms for the standard
library's encoder, whose memo of the keys it wrote serves a whole call). Between calls the event loop
gets in."""


def _compact(value: Any, encode: Encode) -> Iterator[bytes]:
    """Compact JSON, a mapping of many entries (the services) ``ENTRIES_PER_CALL`` entries per encoder call.

    Formatting runs in a worker thread, but an encoder holds the interpreter lock for the whole of one
    call: 4.9 MB in one call of the standard library's encoder held every tunnel for ~70 ms.
    """
    if not isinstance(value, Mapping):
        yield encode(value)
    elif len(value) > ENTRIES_PER_CALL:
        items = list(value.items())
        yield b"{"
        for start in range(0, len(items), ENTRIES_PER_CALL):
            yield (b"," if start else b"") + encode(dict(items[start:start + ENTRIES_PER_CALL]))[1:-1]
        yield b"}"
    else:  # an envelope (/services): its small members whole, its large mapping in parts
        yield b"{"
        for i, (key, item) in enumerate(value.items()):
            yield (b"," if i else b"") + encode(key) + b":"
            yield from _compact(item, encode) if isinstance(item, Mapping) and len(item) > ENTRIES_PER_CALL \
                else (encode(item),)
        yield b"}"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _human_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def _state(s: Mapping[str, Any], now: datetime) -> tuple[str, str]:
    """('online'|'reconnecting'|'offline', 'for 3h 2m')."""
    if state_of(s) == "online":
        return "online", f"for {_human_duration(s.get('connected_for_seconds') or 0)}"
    since = s.get("reconnecting_since")
    if since:
        try:
            went = datetime.fromisoformat(since.replace("Z", "+00:00"))
            ago = f"since {since} ({_human_duration((now - went).total_seconds())}), "
        except ValueError:
            ago = ""
        return "reconnecting", f"{ago}{int(s.get('paused_streams') or 0)} streams paused"
    since = s.get("disconnected_since")
    if since:
        try:
            went = datetime.fromisoformat(since.replace("Z", "+00:00"))
            return "offline", f"for {_human_duration((now - went).total_seconds())}"
        except ValueError:
            return "offline", ""
    return "offline", "never connected"


_COLUMNS = (
    "Nickname", "Service ID", "Listening on", "State", "Agent address", "Agent certificate", "Agent version",
    "Active streams", "Streams total", "To service", "From service", "Last disconnect",
)


def render_html(snapshot: Mapping[str, Mapping[str, Any]], *, refresh_seconds: int = 5,
                query: StatusQuery | None = None) -> bytes:
    """A self-contained page (no external assets: the intranet has no internet) that refreshes itself.

    The totals are the whole fleet's; the table is the query's page (100 rows by default).
    """
    query = query or StatusQuery(limit=HTML_PAGE_ROWS)
    return render_html_page(StatusPage.of(snapshot, query), query, refresh_seconds=refresh_seconds)


def render_html_page(status_page: StatusPage, query: StatusQuery, *, refresh_seconds: int = 5) -> bytes:
    now = datetime.now(timezone.utc)
    totals = status_page.totals
    online, streams, services = totals["online"], totals["active_streams"], totals["services"]
    to_service, from_service = totals["bytes_to_service"], totals["bytes_from_service"]
    page, matched = status_page.services, status_page.matched
    rows = []
    for service_id, s in page.items():
        state, how_long = _state(s, now)
        cells = [
            s.get("nickname") or "",
            service_id,
            s.get("forward_at") or "",
            None,  # state, rendered below
            s.get("agent_address") or "",
            s.get("agent_identity") or "",
            s.get("agent_version") or "",
            str(s.get("client_connection_count") or 0),
            str(s.get("streams_opened_total") or 0),
            _human_bytes(int(s.get("bytes_to_service") or 0)),
            _human_bytes(int(s.get("bytes_from_service") or 0)),
            s.get("last_disconnect_reason") or "",
        ]
        html_cells = []
        for value in cells:
            if value is None:
                html_cells.append(f'<td class="{state}"><b>{html.escape(state)}</b> {html.escape(how_long)}</td>')
            else:
                html_cells.append(f"<td>{html.escape(str(value))}</td>")
        rows.append(f'<tr class="service" data-state="{state}">' + "".join(html_cells) + "</tr>")
    head = "".join(f"<th>{html.escape(title)}</th>" for title in _COLUMNS)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{int(refresh_seconds)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>reverse_websockify: {online}/{services} online</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222;background:#fafafa}}
h1{{font-size:1.4em;margin:0 0 .3em}} form{{margin:0 0 .8em}} form *{{margin-right:.4em}} .totals{{margin:.2em 0 1em;color:#444}}
.totals b{{color:#000}}
table{{border-collapse:collapse;background:#fff;font-size:.92em}}
th,td{{border:1px solid #ddd;padding:.35em .6em;text-align:left;vertical-align:top}}
th{{background:#f0f0f0;position:sticky;top:0}}
tr.service:nth-child(even){{background:#f8f8f8}}
td.online b{{color:#0a7a0a}} td.offline b{{color:#b00}} td.reconnecting b{{color:#b60}}
td:nth-child(7),td:nth-child(8),td:nth-child(9),td:nth-child(10){{text-align:right;white-space:nowrap}}
footer{{margin-top:1em;color:#777;font-size:.85em}}
</style></head><body>
<h1>reverse_websockify</h1>
<p class="totals" id="totals"><b>{online}</b> of <b>{services}</b> services online &middot;
<b>{streams}</b> active streams &middot; <b>{html.escape(_human_bytes(to_service))}</b> to services &middot;
<b>{html.escape(_human_bytes(from_service))}</b> from services</p>
{_filter_form(query, matched, len(page))}
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<footer>Refreshes every {int(refresh_seconds)} s &middot; {html.escape(now.strftime("%Y-%m-%d %H:%M:%S UTC"))}
&middot; JSON: <code>curl -H 'Accept: application/json' …/</code> &middot; <a href="metrics">metrics</a></footer>
</body></html>
"""
    return page.encode()


def _filter_form(query: StatusQuery, matched: int, shown: int) -> str:
    """The filter (state, text) and the pager, as plain links and a GET form: no script."""
    options = "".join(f'<option value="{state}"{" selected" if query.state == state else ""}>{state or "any"}</option>'
                      for state in ("", *STATES))
    limit = query.limit if query.limit is not None else matched
    links = []
    if query.offset > 0:
        links.append(f'<a href="?{html.escape(query.to_query_string(offset=max(0, query.offset - limit)))}">'
                     "&larr; previous</a>")
    if query.offset + shown < matched:
        links.append(f'<a href="?{html.escape(query.to_query_string(offset=query.offset + shown))}">next &rarr;</a>')
    first = query.offset + 1 if shown else 0
    return (f'<form method="get"><label>state <select name="state">{options}</select></label>'
            f'<label>ID or nickname <input name="q" value="{html.escape(query.text)}" size="16"></label>'
            f'<input type="hidden" name="limit" value="{limit}"><button>filter</button>'
            f'<span id="shown">{first}&ndash;{query.offset + shown} of {matched}</span> {" ".join(links)}</form>')
