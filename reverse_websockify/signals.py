"""The signals that stop either program cleanly (tunnels closed with 1001, exit 0).

SIGQUIT is among them because the stock nginx image, in which the reference
deployment runs the server, stops its containers with SIGQUIT.
"""

import signal

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGQUIT") if hasattr(signal, name)
)
