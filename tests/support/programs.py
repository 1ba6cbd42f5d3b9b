"""The command lines of the two programs under test.

By default the package's CLIs (``python -m reverse_websockify.cli.*``); the single-file
executables when a folder holding them is given (RW_BIN_DIR for the tests, ``--binaries`` for
the benchmark). RW_EVENT_LOOP (or ``--event-loop``) runs both on that event loop.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "reverse_websockify_server"
AGENT_NAME = "reverse_websockify_agent_service_side"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Programs:
    bin_dir: Path | None = None  # the built executables' folder; None: the package's CLIs
    event_loop: str | None = None  # "asyncio", "uvloop", "auto"; None: the programs' default

    @classmethod
    def from_environment(cls) -> "Programs":
        bin_dir = os.environ.get("RW_BIN_DIR")
        return cls(Path(bin_dir).resolve() if bin_dir else None, os.environ.get("RW_EVENT_LOOP") or None)

    @property
    def binaries(self) -> bool:
        """Single-file executables: a launcher process with the program as its child."""
        return self.bin_dir is not None

    def executable(self, name: str) -> list[str]:
        """How to run the program ``name`` (SERVER_NAME or AGENT_NAME), without any option."""
        if self.bin_dir is not None:
            return [str(self.bin_dir / name)]
        module = "server" if name == SERVER_NAME else "agent"
        return [sys.executable, "-m", f"reverse_websockify.cli.{module}"]

    def command(self, name: str) -> list[str]:
        """The program with the options every run of it gets (the event loop)."""
        args = self.executable(name)
        if self.event_loop:
            args.append(f"--event-loop={self.event_loop}")
        return args

    def env(self) -> dict[str, str]:
        """The environment to run them in: this checkout first on PYTHONPATH (the package's CLIs)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env


FROM_ENVIRONMENT = Programs.from_environment()


def command(name: str) -> list[str]:
    """The command line of a program as the test run was asked to run it (RW_BIN_DIR, RW_EVENT_LOOP)."""
    return FROM_ENVIRONMENT.command(name)
