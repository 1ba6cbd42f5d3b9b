"""One line for a connection error, for logs and for the RST reason the server shows."""

from __future__ import annotations

import asyncio
import os
import ssl


def describe_error(exc: BaseException) -> str:
    """The error and its cause (e.g. the TLS alert behind a failed handshake), in one line."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"  # e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's own strerror ("Connect call failed (...)") says less
    text = str(exc)
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        line += f" ({describe_error(cause)})"
    return line
