"""The status page's HTML view: what an operator reads, escaped, from a snapshot alone."""

from __future__ import annotations

from reverse_websockify.status import render_html


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
