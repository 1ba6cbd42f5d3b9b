"""Progress lines on stderr (stdout is for the markdown tables)."""

from __future__ import annotations

import sys
import time


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
