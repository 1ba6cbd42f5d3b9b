"""What both executables share: one-line errors, logging setup, --version text."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import sys
import time
from typing import Any, Callable, Coroutine, NoReturn

from .. import __version__
from ..logfields import FIELD_NAMES

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus exit 2), not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "reverse_websockify"
    if prog.endswith(".py") or prog == "__main__.py":
        prog = "reverse_websockify"
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def version_text(program: str) -> str:
    frozen = " (single-file build)" if getattr(sys, "frozen", False) else ""
    try:
        from websockets.version import version as ws_version
    except Exception:  # pragma: no cover
        ws_version = "?"
    return (f"{program} {__version__}{frozen}; Python {platform.python_version()}, "
            f"websockets {ws_version}")


def add_event_loop_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--event-loop", "-event-loop", default="auto", choices=["auto", "uvloop", "asyncio"],
                        help="auto (default): uvloop when installed, which relays connections faster; else asyncio")


def run_event_loop(main: Callable[[], Coroutine[Any, Any, None]], choice: str) -> str:
    """Run ``main()`` on the chosen event loop; return its name (for the start-up log line)."""
    from ..allocator import tune

    tune()
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                fail("--event-loop=uvloop: uvloop is not installed (pip install uvloop)")
        else:
            uvloop.run(main())
            return "uvloop"
    asyncio.run(main())
    return "asyncio"


def loop_name() -> str:
    """The running loop's kind, for the start-up log line."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", "-log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO")
    parser.add_argument("--log-format", "-log-format", default="text", choices=["text", "json"],
                        help="text (default) or json, one object per line")


class TextFormatter(logging.Formatter):
    """logging.Formatter's text, with the date and time formatted once per second, not per line."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return self.default_msec_format % (self._stamp, record.msecs)


class JsonFormatter(logging.Formatter):
    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            self._second = second
        entry = {
            "time": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELD_NAMES:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class DefaultService(logging.Filter):
    """The agent serves one service ID: every line of it carries that ID."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "service", None) is None:
            record.service = self.service
        return True


class LoopFlushedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines to stderr, written once per event-loop turn instead of once per line.

    stderr is line-buffered, so every connection event cost a write() system call
    of its own; under a connection storm that was a quarter of the relay's time
    (bench/). Lines are buffered and flushed by a callback at the end of the
    current loop turn, so none is delayed noticeably; outside a running loop
    (start-up errors, shutdown) every line is flushed at once.
    """

    def __init__(self) -> None:
        try:
            stream = open(sys.stderr.fileno(), "w", buffering=1 << 16, encoding="utf-8",
                          errors="backslashreplace", closefd=False)
        except (AttributeError, OSError, ValueError):  # no real stderr (e.g. a GUI launcher)
            stream = sys.stderr
        super().__init__(stream)
        self._flush_scheduled: asyncio.AbstractEventLoop | None = None  # the loop that will flush

    def flush(self) -> None:
        scheduled = self._flush_scheduled
        if scheduled is not None and not scheduled.is_closed():
            return  # the common case under load: no get_running_loop() (a getpid() system call)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().flush()
            return
        self._flush_scheduled = loop
        loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = None
        super().flush()

    def close(self) -> None:
        super().flush()
        super().close()


class ShardTag(logging.Filter):
    """Every line of shard K says so ([shards]: the shards of --all-shards share one stderr)."""

    def __init__(self, shard: int) -> None:
        super().__init__()
        self.shard = shard

    def filter(self, record: logging.LogRecord) -> bool:
        record.shard = self.shard
        return True


def configure_logging(level: str, fmt: str, service: str | None = None, shard: int | None = None) -> None:
    handler = LoopFlushedHandler()
    if service is not None:
        handler.addFilter(DefaultService(service))
    if shard is not None:
        handler.addFilter(ShardTag(shard))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        tag = " [shard %(shard)s]" if shard is not None else ""
        handler.setFormatter(TextFormatter(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"))
    # No formatter here shows the caller's file and line, the thread or the process: skip looking
    # them up for every record (a stack walk, and a getpid() system call each; bench/, ab -c32).
    logging._srcfile = None  # type: ignore[attr-defined]  # documented in the logging HOWTO, "Optimization"
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs every failed handshake at ERROR with a traceback; ours are one line.
    logging.getLogger("websockets").setLevel(logging.CRITICAL if level != "DEBUG" else logging.DEBUG)
    handler.addFilter(RedactSecrets())  # on the handler: websockets logs through child loggers


class RedactSecrets(logging.Filter):
    """At DEBUG websockets logs every handshake header: never the token or the session secret."""

    SECRET_HEADERS = ("authorization", "x-reverse-websockify-resume")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in self.SECRET_HEADERS:
            record.args = (args[0], "[redacted]")
        return True
