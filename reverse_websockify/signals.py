"""The signals that stop either program cleanly (tunnels closed with 1001, exit 0).

SIGQUIT is among them because the stock nginx image, in which the reference
deployment runs the server, stops its containers with SIGQUIT.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGQUIT") if hasattr(signal, name)
)


def on_stop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM, SIGINT or SIGQUIT.

    A SIGTERM or SIGQUIT is then ignored from there on: a single-file executable's
    launcher forwards the signal it gets, so a signal sent to the whole process
    group (systemd, docker) arrives twice, and the second copy must not kill the
    process during its clean shutdown. A second Ctrl-C still does what it says.
    """

    def handle(sig: int) -> None:
        if sig != signal.SIGINT:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        stop()

    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, handle, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover (Windows)
            pass
