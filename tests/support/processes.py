"""A program we started, its output captured to a file that can be read at any time."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.support import probes
from tests.support.logs import LogLine, MessageTest, matching_lines, parse_json_lines
from tests.support.programs import FROM_ENVIRONMENT
from tests.support.waiting import wait_for

# Signals a single-file executable's launcher cannot forward to the program it runs.
_NOT_FORWARDED = (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT)


class ProcessDied(AssertionError):
    """A process that had to keep running exited."""


class Process:
    """A started program; stdout and stderr go to ``log_path``.

    ``launcher``: the program is a single-file executable, i.e. a launcher with the real
    program as its child; SIGKILL, SIGSTOP and SIGCONT then go to the child as well.
    """

    def __init__(self, args: list[str], log_path: Path, *, name: str | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 launcher: bool = FROM_ENVIRONMENT.binaries) -> None:
        self.args = args
        self.name = name or Path(args[0]).name
        self.log_path = log_path
        self.launcher = launcher
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise ProcessDied(f"{self.name} died with exit status {self.proc.returncode}:\n{self.log()[-3000:]}")

    # -- its output ------------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait for ``text`` anywhere in the output; for text-format logs and user-facing messages."""
        wait_for(lambda: text in self.log(), timeout, f"{text!r} in {self.log_path.name}:\n{self.log()[-3000:]}")
        return self.log()

    def lines(self) -> list[LogLine]:
        """The JSON log lines so far (the program runs with --log-format json)."""
        return parse_json_lines(self.log())

    def mark(self) -> int:
        """How many JSON log lines there are now: pass it as ``since`` to look only at later ones."""
        return len(self.lines())

    def find_lines(self, message: MessageTest = None, *, since: int = 0, **fields: Any) -> list[LogLine]:
        return matching_lines(self.lines()[since:], message, **fields)

    def wait_line(self, message: MessageTest = None, *, since: int = 0, timeout: float = 10.0,
                  **fields: Any) -> LogLine:
        """Wait for a JSON log line with these fields (and message substring or predicate); return it."""
        wanted = ", ".join([f"message {message!r}"] * (message is not None) + [f"{k}={v!r}" for k, v in fields.items()])
        found = wait_for(lambda: self.find_lines(message, since=since, **fields), timeout,
                         f"a log line with {wanted} in {self.log_path.name}:\n{self.log()[-3000:]}")
        return found[0]

    # -- signals and the end -----------------------------------------------------------------------

    def children(self) -> list[int]:
        return probes.children(self.pid)

    def signal(self, sig: int) -> None:
        if not self.alive():
            return
        if self.launcher and sig in _NOT_FORWARDED:
            for child in self.children():
                try:
                    os.kill(child, sig)
                except ProcessLookupError:
                    pass
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (after a SIGCONT, should it be stopped), then SIGKILL after ``timeout``; the exit status."""
        if self.alive():
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    # -- what it costs -----------------------------------------------------------------------------

    def rss_kib(self, field_name: str = "VmRSS") -> int:
        """A memory field of this process alone (not of a launcher's child)."""
        return probes.status_kib(self.pid, field_name)

    def fd_count(self) -> int:
        return probes.fd_count(self.pid)

    def tree_kib(self, field_name: str = "VmRSS") -> int:
        """A memory field summed over the process and its descendants (launcher + program)."""
        return probes.tree_status_kib(self.pid, field_name)

    def tree_pss_kib(self) -> int:
        return probes.tree_pss_kib(self.pid)

    def tree_fd_count(self) -> int:
        return probes.tree_fd_count(self.pid)
