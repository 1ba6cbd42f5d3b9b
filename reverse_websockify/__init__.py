"""reverse_websockify: a reverse TCP-over-WebSocket rendezvous.

Only the version lives here so that ``--version`` and the handshake's
User-Agent never import the heavy modules.
"""

__version__ = "0.1.0"
