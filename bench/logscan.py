"""ERROR/CRITICAL lines and tracebacks in the server's and agents' text logs, summarised for the report."""

from __future__ import annotations

import re
from pathlib import Path


def problems_in(name: str, text: str) -> list[str]:
    """One entry per ERROR/CRITICAL line (timestamp dropped) or traceback ('last own frame → exception')."""
    found: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Traceback"):
            frame = ""
            i += 1
            while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
                m = re.match(r'\s+File "([^"]+)", line (\d+), in (\S+)', lines[i])
                if m and "/asyncio/" not in m.group(1) and "/websockets/" not in m.group(1):
                    frame = f"{Path(m.group(1)).name}:{m.group(2)} in {m.group(3)}"
                i += 1
            exc = lines[i].strip() if i < len(lines) else "?"
            found.append(f"{name}: traceback at {frame or '?'} → {exc[:200]}")
        elif re.search(r"\b(ERROR|CRITICAL)\b", line):
            # drop the timestamp; stream numbers and ports vary, keep the rest
            text_only = re.sub(r"^\d{4}-\d\d-\d\d[ T][\d:,.]+Z? ", "", line.strip())
            found.append(f"{name}: {text_only[:300]}")
        i += 1
    return found


def log_problems(logs: list[tuple[str, str]]) -> list[str]:
    """The problems of every (process name, log text), each distinct one once, 'N× ' when repeated."""
    counts: dict[str, int] = {}
    for name, text in logs:
        for entry in problems_in(name, text):
            counts[entry] = counts.get(entry, 0) + 1
    return [f"{n}× {e}" if n > 1 else e for e, n in counts.items()]
