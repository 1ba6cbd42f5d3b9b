"""The status page: one JSON document (the original's shape, plus more) and an HTML view of it.

Rendering lives apart from the server so that it stays a pure function of a
snapshot; every value is escaped, since IDs and nicknames come from a file and
agent versions from the network.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
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
    if s.get("connected"):
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


def render_html(snapshot: Mapping[str, Mapping[str, Any]], *, refresh_seconds: int = 5) -> bytes:
    """A self-contained page (no external assets: the intranet has no internet) that refreshes itself."""
    now = datetime.now(timezone.utc)
    online = sum(1 for s in snapshot.values() if s.get("connected"))
    streams = sum(int(s.get("client_connection_count") or 0) for s in snapshot.values())
    to_service = sum(int(s.get("bytes_to_service") or 0) for s in snapshot.values())
    from_service = sum(int(s.get("bytes_from_service") or 0) for s in snapshot.values())
    rows = []
    for service_id, s in snapshot.items():
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
<title>reverse_websockify: {online}/{len(snapshot)} online</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222;background:#fafafa}}
h1{{font-size:1.4em;margin:0 0 .3em}} .totals{{margin:.2em 0 1em;color:#444}}
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
<p class="totals" id="totals"><b>{online}</b> of <b>{len(snapshot)}</b> services online &middot;
<b>{streams}</b> active streams &middot; <b>{html.escape(_human_bytes(to_service))}</b> to services &middot;
<b>{html.escape(_human_bytes(from_service))}</b> from services</p>
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<footer>Refreshes every {int(refresh_seconds)} s &middot; {html.escape(now.strftime("%Y-%m-%d %H:%M:%S UTC"))}
&middot; JSON: <code>curl -H 'Accept: application/json' …/</code> &middot; <a href="metrics">metrics</a></footer>
</body></html>
"""
    return page.encode()
