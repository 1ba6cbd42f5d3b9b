"""The status page: what an operator reads (escaped), and how a fleet of thousands is filtered and paged."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reverse_websockify import status
from reverse_websockify.status import (
    StatusQuery,
    StatusQueryError,
    render_html,
    render_json,
    render_page_json,
    select,
    summarize,
)


def test_the_table_shows_the_agent_and_the_certificate_it_presented() -> None:
    snapshot = {"bus02": {"nickname": "Bus <02>", "forward_at": "0.0.0.0:39036", "connected": True,
                          "connected_for_seconds": 75, "agent_address": "192.0.2.7", "agent_version": "0.1.0",
                          "agent_identity": "bus02, bus02.fleet.example", "client_connection_count": 3}}
    page = render_html(snapshot).decode()
    assert "<th>Agent certificate</th>" in page
    assert "<td>bus02, bus02.fleet.example</td>" in page and "<td>192.0.2.7</td>" in page
    assert "<b>online</b> for 1m 15s" in page
    assert "Bus &lt;02&gt;" in page and "Bus <02>" not in page  # names come from files and the network


def test_an_agent_without_a_certificate_leaves_the_cell_empty() -> None:
    page = render_html({"open": {"connected": False}}).decode()
    assert "never connected" in page and "None" not in page


# -- a fleet: filter and page ----------------------------------------------------------------

FLEET = {
    **{f"bus{i:03d}": {"nickname": f"Bus {i}", "connected": i % 3 == 0, "client_connection_count": i % 2,
                       "bytes_to_service": 10, "reconnecting_since": "2026-12-02T10:00:00Z" if i % 3 == 1 else None}
       for i in range(250)},
    "depot": {"nickname": "Depot gateway", "connected": False},
}


def test_the_unfiltered_json_is_the_original_document() -> None:
    assert json.loads(render_json(FLEET)) == FLEET
    assert not StatusQuery.parse("").filtered


def test_a_query_filters_by_state_text_and_id_then_pages() -> None:
    page, matched = select(FLEET, StatusQuery.parse("state=online"))
    assert matched == 84 and all(entry["connected"] for entry in page.values())
    page, matched = select(FLEET, StatusQuery.parse("q=DEPOT"))  # nickname or ID, any case
    assert list(page) == ["depot"] and matched == 1
    page, matched = select(FLEET, StatusQuery.parse("service=bus007&service=bus008&service=nope"))
    assert list(page) == ["bus007", "bus008"]
    page, matched = select(FLEET, StatusQuery.parse("state=offline&offset=10&limit=5"))
    offline = [sid for sid, e in FLEET.items() if not e.get("connected") and not e.get("reconnecting_since")]
    assert list(page) == offline[10:15] and matched == len(offline)
    assert json.loads(render_json(FLEET, StatusQuery.parse("q=bus00&limit=3"))) == {
        sid: FLEET[sid] for sid in ("bus000", "bus001", "bus002")}


def test_the_page_document_carries_the_counts_to_page_with() -> None:
    document = json.loads(render_page_json(FLEET, StatusQuery.parse("state=reconnecting&limit=10")))
    assert document["matched"] == 83 and document["offset"] == 0 and document["limit"] == 10
    assert len(document["services"]) == 10
    assert document["summary"] == {"services": 251, "online": 84, "reconnecting": 83, "offline": 84,
                                   "active_streams": 125, "bytes_to_service": 2500, "bytes_from_service": 0}
    assert summarize(FLEET) == document["summary"]


@pytest.mark.parametrize("query, error", [
    ("state=sleeping", "state: expected one of online, reconnecting, offline, got 'sleeping'"),
    ("limit=-1", "limit: expected a whole number, got '-1'"),
    ("offset=ten", "offset: expected a whole number, got 'ten'"),
    ("sort=id", "unknown query parameter 'sort' (allowed: state, q, service, offset, limit)"),
])
def test_a_bad_query_says_what_is_wrong(query: str, error: str) -> None:
    with pytest.raises(StatusQueryError) as caught:
        StatusQuery.parse(query)
    assert str(caught.value) == error


def test_the_html_view_shows_a_page_and_links_to_the_next() -> None:
    page = render_html(FLEET).decode()
    assert page.count('<tr class="service"') == 100
    assert "1&ndash;100 of 251" in page and 'href="?offset=100&amp;limit=100"' in page
    assert "<b>84</b> of <b>251</b> services online" in page  # totals are the fleet's, not the page's
    last = render_html(FLEET, query=StatusQuery.parse("offset=200&limit=100")).decode()
    assert last.count('<tr class="service"') == 51 and "next &rarr;" not in last and "&larr; previous" in last
    found = render_html(FLEET, query=StatusQuery.parse("q=depot&limit=100")).decode()
    assert found.count('<tr class="service"') == 1 and 'value="depot"' in found


@pytest.mark.parametrize("encoder", ["orjson", "standard library"])
def test_a_large_document_is_compact_for_scripts(encoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large documents are encoded by orjson, or by the standard library where orjson has no wheel (PyPy)."""
    assert status._encoder() is not status.encode_with_json, "CPython installs orjson with the package"
    if encoder == "standard library":
        monkeypatch.setattr(status, "_encoder", lambda: status.encode_with_json)
    assert status.render_json(FLEET).startswith(b'{\n  "bus000": {')  # indented for people
    large = {f"bus{i:04d}": {"connected": i % 3 == 0, "nickname": f"Bahnhof Zürich \"{i}\"", "seconds": i / 7,
                             "failed": {"refused": i} if i % 5 else {}, "since": None} for i in range(1001)}
    large["bus0007"]["agent_version"] = "0.1.0 \udcff"  # a lone surrogate: orjson refuses it
    large["bus0008"]["bytes_to_service"] = 1 << 70  # beyond 64 bits: the same
    text = status.render_json(large)
    assert text.count(b"\n") == 1 and json.loads(text) == large
    page = json.loads(status.render_page_document(status.StatusPage(large, 1001, {"online": 334}),
                                                  StatusQuery.parse("state=online")))
    assert page["services"] == large and page["matched"] == 1001 and page["summary"] == {"online": 334}


def test_orjson_is_imported_only_for_a_large_document() -> None:
    """It adds 1.7 MiB to the process: a server that never shows more than PRETTY_LIMIT services does without."""
    code = ("import sys; from reverse_websockify import status; "
            "status.render_json({'bus1': {'connected': True}}); small = 'orjson' in sys.modules; "
            "status.render_json({f'bus{i}': {'connected': True} for i in range(status.PRETTY_LIMIT + 1)}); "
            "print(small, 'orjson' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "True"], out
