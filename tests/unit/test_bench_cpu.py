"""The benchmark's CPU accounting (bench/cpu.py) on real processes: who spent the CPU is who is charged.

The workloads' "CPU per request" rows stand on it: a tool's CPU must count once it has ended, a
service's must include the processes it started and waited for (PostgreSQL's backends end with
pgbench's connections), and an idle party must count next to nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ lives at the repository root

from bench.cpu import CpuMeter  # noqa: E402

BURN = "import time\nend = time.process_time() + {0}\nwhile time.process_time() < end: pass\n"


def test_the_tool_the_service_with_its_ended_children_and_an_idle_party_each_get_their_own_cpu() -> None:
    # Told to go, the "service" starts a child that burns 0.3 s and ends (it waits for it), then idles until
    # stdin closes.
    service = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys\nprint('ready', flush=True)\nsys.stdin.readline()\n"
         f"subprocess.run([sys.executable, '-c', {BURN.format(0.3)!r}])\nprint('burnt', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    idle = subprocess.Popen([sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for process in (service, idle):  # started: their interpreters' start-up is not what is measured
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        meter = CpuMeter({"service": [service.pid], "relay": [idle.pid]}, load_tool=True)
        assert service.stdin is not None
        service.stdin.write("go\n")
        service.stdin.flush()
        subprocess.run([sys.executable, "-c", BURN.format(0.2)], check=True)  # the load tool
        assert service.stdout is not None and service.stdout.readline() == "burnt\n"
        spent = meter.spent()
    finally:
        for process in (service, idle):
            process.communicate("")
    assert 0.2 <= spent["client"] < 0.5
    assert 0.3 <= spent["service"] < 0.6  # the child that ended counts for the service
    assert spent["relay"] < 0.05
