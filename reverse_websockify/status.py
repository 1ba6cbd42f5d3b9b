"""The status page: one JSON document (the original's shape, plus more) and an HTML view of it.

Rendering lives apart from the server so that it stays a pure function of a
snapshot; every value is escaped, since IDs and nicknames come from a file and
agent versions from the network.
"""

from __future__ import annotations

import html
import json
from typing import Any, Mapping


def render_json(snapshot: Mapping[str, Mapping[str, Any]]) -> bytes:
    return json.dumps(snapshot, indent=2, sort_keys=False).encode() + b"\n"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


_COLUMNS = (
    ("Service ID", "id"),
    ("Nickname", "nickname"),
    ("Listening on", "forward_at"),
    ("State", "state"),
    ("Since", "service_connection_since"),
    ("Agent address", "agent_address"),
    ("Agent version", "agent_version"),
    ("Active streams", "client_connection_count"),
    ("Streams total", "streams_opened_total"),
    ("To service", "bytes_to_service"),
    ("From service", "bytes_from_service"),
    ("Last disconnect", "last_disconnect_reason"),
)


def render_html(snapshot: Mapping[str, Mapping[str, Any]], *, refresh_seconds: int = 5) -> bytes:
    online = sum(1 for s in snapshot.values() if s.get("connected"))
    streams = sum(int(s.get("client_connection_count") or 0) for s in snapshot.values())
    rows = []
    for service_id, s in snapshot.items():
        values = dict(s, id=service_id, state="online" if s.get("connected") else "offline")
        cells = []
        for _, key in _COLUMNS:
            value = values.get(key)
            if key in ("bytes_to_service", "bytes_from_service"):
                text = _human_bytes(int(value or 0))
            else:
                text = "" if value is None else str(value)
            css = f' class="{values["state"]}"' if key == "state" else ""
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(title)}</th>" for title, _ in _COLUMNS)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{int(refresh_seconds)}">
<title>reverse_websockify status</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
th{{background:#f3f3f3}} td.online{{color:#070;font-weight:bold}} td.offline{{color:#a00}}
</style></head><body>
<h1>reverse_websockify</h1>
<p id="totals">{online} of {len(snapshot)} services online &middot; {streams} active streams</p>
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    return page.encode()
