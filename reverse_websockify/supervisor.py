"""``--all-shards``: one command that runs every shard of a [shards] config as a child process.

Each shard is ``reverse_websockify_server CONFIG --shard K`` (the same executable,
the same flags), so it is exactly what a systemd template unit would run. The
supervisor:

- restarts a shard that exits (1 s later; up to 30 s, doubling, while it keeps
  dying within 10 s of its start), without touching the others;
- forwards SIGHUP to every shard (each re-reads config.toml and takes its own
  share; a broken file is reported here too, and changes nothing); when a
  service moved to another shard, every shard is reloaded once more 2 s later,
  so that the new owner listens once the old one has let go of the port;
- on SIGTERM, SIGINT or SIGQUIT sends SIGTERM to every shard, waits up to
  ``STOP_SECONDS`` for them (SIGKILL after that), and exits 0;
- on Linux, has each shard killed (SIGTERM) if the supervisor itself dies.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from typing import Callable

from .config import ConfigError, ServerConfig, load
from .signals import on_stop_signals

log = logging.getLogger("reverse_websockify.shards")

STOP_SECONDS = 12.0
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
HEALTHY_AFTER = 10.0
MOVE_DELAY = 2.0


def _die_with_parent() -> None:  # pragma: no cover (runs in the child, between fork and exec)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Supervisor:
    def __init__(self, config: ServerConfig, shard_command: Callable[[int], list[str]],
                 on_reload: Callable[[ServerConfig], None] | None = None) -> None:
        assert config.shards is not None
        self.config = config
        self.shard_command = shard_command
        self.on_reload = on_reload
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.restarts: dict[int, int] = {}
        self._stopping = asyncio.Event()

    async def _run_shard(self, shard: int) -> None:
        delay = RESTART_DELAY
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                process = await asyncio.create_subprocess_exec(
                    *self.shard_command(shard), stdin=asyncio.subprocess.DEVNULL,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            except OSError as exc:
                log.error("shard %d: cannot start: %s", shard, exc)
                code: int | None = None
            else:
                self.processes[shard] = process
                log.info("shard %d: started, pid %d, HTTP on %s", shard, process.pid,
                         self.config.shards.endpoints[shard])
                code = await process.wait()
                self.processes.pop(shard, None)
            if self._stopping.is_set():
                log.info("shard %d: exited (%s)", shard, _exit_text(code))
                return
            if time.monotonic() - started > HEALTHY_AFTER:
                delay = RESTART_DELAY
            self.restarts[shard] = self.restarts.get(shard, 0) + 1
            log.warning("shard %d: exited (%s); restarting in %g s", shard, _exit_text(code), delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, MAX_RESTART_DELAY)

    def reload(self) -> None:
        try:
            new = load(self.config.path)
            if new.shards is None or new.shards.endpoints != self.config.shards.endpoints:
                raise ConfigError("[shards] removed or changed; that takes effect only after a restart")
        except ConfigError as exc:
            log.error("SIGHUP: %s; the shards keep their running config", exc)
            return
        old, self.config = self.config, new
        if self.on_reload is not None:
            self.on_reload(new)
        self._hang_up("reloading")
        moved = [sid for sid, shard in new.shards.owners.items()
                 if sid in old.shards.owners and old.shards.owners[sid] != shard]
        if moved:
            # The new owner may have tried to listen before the old one let go of the port: a second
            # reload (unchanged services are untouched by it) starts what could not start the first time.
            log.info("SIGHUP: %s moved to another shard; reloading every shard again in %g s",
                     ", ".join(moved[:10]) + (", ..." if len(moved) > 10 else ""), MOVE_DELAY)
            asyncio.get_running_loop().call_later(MOVE_DELAY, self._hang_up, "reloading again")

    def _hang_up(self, what: str) -> None:
        for shard, process in sorted(self.processes.items()):
            log.info("SIGHUP: %s shard %d (pid %d)", what, shard, process.pid)
            _send(process, signal.SIGHUP)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        on_stop_signals(loop, self._stopping.set)
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (AttributeError, NotImplementedError, RuntimeError):  # pragma: no cover (Windows)
            pass
        count = len(self.config.shards)
        log.info("starting %d shards of %s", count, self.config.path)
        tasks = [loop.create_task(self._run_shard(k)) for k in range(count)]
        await self._stopping.wait()
        log.info("shutting down %d shards", len(self.processes))
        for process in list(self.processes.values()):
            _send(process, signal.SIGTERM)
        done, pending = await asyncio.wait(tasks, timeout=STOP_SECONDS)
        if pending:
            for shard, process in list(self.processes.items()):
                log.warning("shard %d: still running after %g s; SIGKILL", shard, STOP_SECONDS)
                _send(process, signal.SIGKILL)
            await asyncio.wait(pending, timeout=5)


def _send(process: asyncio.subprocess.Process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except ProcessLookupError:
        pass


def _exit_text(code: int | None) -> str:
    if code is None:
        return "not started"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
