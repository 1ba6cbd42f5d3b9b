"""The programs' ``--log-format json`` output: one JSON object per line, matched on its fields.

Tests assert on fields (``close_code=1001``, ``failure="dial_failed"``) rather than on substrings
of the text, which would also match a port number or a byte count that happens to read "1001".
"""

from __future__ import annotations

import json
from typing import Any, Callable, Union

LogLine = dict[str, Any]
MessageTest = Union[str, Callable[[str], bool], None]


def parse_json_lines(text: str) -> list[LogLine]:
    """Every JSON object line of a log; other lines (a traceback on stderr, a launcher's words) are skipped."""
    lines: list[LogLine] = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw.startswith("{"):
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            continue  # a line cut short as the process was killed
        if isinstance(value, dict):
            lines.append(value)
    return lines


def line_matches(line: LogLine, message: MessageTest = None, **fields: Any) -> bool:
    """Does this log line carry every one of ``fields`` (exact values) and the message?

    ``message`` is a substring of the message, or a predicate on it.
    """
    for key, value in fields.items():
        if key not in line or line[key] != value:
            return False
    if message is None:
        return True
    text = str(line.get("message", ""))
    return message(text) if callable(message) else message in text


def matching_lines(lines: list[LogLine], message: MessageTest = None, **fields: Any) -> list[LogLine]:
    return [line for line in lines if line_matches(line, message, **fields)]
