#!/usr/bin/env python3
"""The reverse_websockify benchmark: real tools, directly and through the tunnel, interleaved.

    python3 bench/run.py [--quick] [--binaries DIR] [--repeat N] [--out bench/results]

Everything runs on 127.0.0.1 and stops by itself. It starts its own nginx (a 1 KiB
and a 256 MiB file), iperf3 servers, an idle echo service, the reverse_websockify
server and agents (the package's CLIs, or the single-file binaries in DIR), and
runs iperf3, wrk, ab and curl against each service directly and through the tunnel,
alternating direct / tunnel within every repetition. See bench/README.md for what
each figure means.

No thresholds: the figures are for people. The exit status is 1 when a tool fails
to run, a figure through the tunnel is zero, or the server or an agent dies; 2 on a
usage error or a missing tool.

This file is only the entry point: the benchmark is the bench package next to it, and
its processes, probes, services and deployment are tests/support, shared with the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: bench, tests

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
