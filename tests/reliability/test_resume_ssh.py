"""An interactive SSH session (real ``ssh`` and ``sshd``) through the tunnel keeps working across link cuts.

The agent reaches the server through tests/reliability/faultproxy.py; keepalive runs at 1 s/1 s on
both sides (see tests/integration/test_sessions.py). ``sshd`` runs in the foreground on loopback
with its own config, host key and authorized key, all under tmp_path; ``ssh -tt`` logs in through
the server's user port and drives a remote login shell over pipes, with ssh's own keepalive
defaults (no ServerAliveInterval: a resumed session must be invisible to ssh, not tolerated by it).

Every cut is followed at once by a command typed while the link is down: its bytes must reach
the shell after the resume and its output must come back, in the same ssh connection.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Callable, Iterator

import pytest

from tests.reliability.conftest import Figure
from tests.reliability.faultproxy import FaultProxy
from tests.support.deployment import Deployment
from tests.support.ports import free_port, listening
from tests.support.processes import Process
from tests.support.waiting import wait_for

SSHD = "/usr/sbin/sshd"
FAST_KEEPALIVE_CONFIG = "ping_interval_seconds = 1\nping_timeout_seconds = 1"
FAST_KEEPALIVE_FLAGS = ("--ping-interval=1", "--ping-timeout=1")
KEEPALIVE_BOUND = 1 + 1 + 2  # interval + timeout + closing handshake timeout, seconds
SLACK = 2.0  # scheduling on a shared machine
LINK_AGE = 1.2  # s of link life before a cut: the agent then reconnects at once (agent.AT_ONCE_AFTER)
STEADY_SAMPLES = 5  # commands timed between two cuts
COMMAND_TIMEOUT = 20.0  # s for one command's output, a resume included
BULK_LINES = 300_000  # `seq` output (about 2.3 MB through the terminal) in flight during one cut
# What ssh prints when its connection breaks; none of it may ever show.
SSH_TROUBLE = ("connection reset", "broken pipe", "closed by remote host", "timeout", "timed out",
               "disconnect", "packet corrupt", "corrupted mac", "bad packet")


@dataclass
class Cut:
    how: str  # "rst", "fin" or "freeze"
    bulk: bool = False  # cut while a long command output is in flight


CUTS = [Cut("rst"), Cut("fin"), Cut("rst", bulk=True), Cut("freeze"), Cut("fin")]


class Shell:
    """``ssh -tt`` running a remote login shell: commands go to its stdin, its output is collected."""

    def __init__(self, args: list[str], stderr_path: Path, env: dict[str, str]) -> None:
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 — closed by close()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=env, bufsize=0)
        self.output = bytearray()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="ssh stdout", daemon=True)
        self._reader.start()
        self.commands = 0
        self.typed: list[str] = []  # every line typed, for telling their echo from command output

    def _read(self) -> None:
        stdout: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        while True:
            chunk = os.read(stdout.fileno(), 1 << 16)
            with self._changed:
                if not chunk:
                    self._changed.notify_all()
                    return
                self.output += chunk
                self._changed.notify_all()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def check_alive(self) -> None:
        assert self.proc.poll() is None, \
            f"ssh exited with {self.proc.returncode}: {self.stderr()[-2000:]}\n{self.tail()}"

    def tail(self) -> str:
        return "the shell's last output: " + bytes(self.output[-1500:]).decode(errors="replace")

    def type(self, text: str) -> int:
        """Write ``text`` to ssh's stdin (the remote terminal); return where its output starts."""
        self.check_alive()
        with self._changed:
            start = len(self.output)
        stdin: IO[bytes] = self.proc.stdin  # type: ignore[assignment]
        self.typed += text.splitlines()
        stdin.write(text.encode())
        stdin.flush()
        return start

    def wait_output(self, wanted: bytes, start: int, timeout: float = COMMAND_TIMEOUT) -> int:
        """Wait until ``wanted`` shows in the output after ``start``; return where it ends."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self.output.find(wanted, start)
                if found >= 0:
                    return found + len(wanted)
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    break
                self._changed.wait(min(left, 0.5))
        self.check_alive()
        raise AssertionError(f"no {wanted!r} from the remote shell within {timeout:g} s; {self.tail()}")

    def command(self, text: str, tag: str | None = None) -> tuple[bytes, float]:
        """Type ``text; echo <marker>``; wait for the marker's output; return the output before it and the time.

        The marker is typed as ``"m""ark-N"``: the terminal's echo of the typed line cannot match ``mark-N``.
        """
        self.commands += 1
        name = f"{tag or 'mark'}-{self.commands}"
        typed = f'{text}; echo "{name[:2]}""{name[2:]}"\n' if text else f'echo "{name[:2]}""{name[2:]}"\n'
        started = time.monotonic()
        start = self.type(typed)
        end = self.wait_output(name.encode() + b"\r\n", start)
        took = time.monotonic() - started
        return bytes(self.output[start:end - len(name) - 2]), took

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        self._stderr.close()


@dataclass
class Sshd:
    process: Process
    port: int
    key: Path  # the client's private key


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip(f"{SSHD}, ssh and ssh-keygen are needed (apt-get install openssh-server openssh-client)")
    workdir = tmp_path / "sshd"
    workdir.mkdir()
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    if os.geteuid() == 0:
        # sshd running as root chroots its unprivileged child there (privilege separation)
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress 127.0.0.1:{port}",
        f"HostKey {host_key}",
        f"PidFile {workdir / 'sshd.pid'}",
        f"AuthorizedKeysFile {client_key}.pub",
        f"AllowUsers {getpass.getuser()}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PermitRootLogin prohibit-password",
        "PrintMotd no",
        "PrintLastLog no",
        "Banner none",
        "UseDNS no",
        "LogLevel VERBOSE",
        "",
    ]))
    checked = subprocess.run([SSHD, "-t", "-f", str(config)], check=False, capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    assert checked.returncode == 0, f"sshd -t refused {config}: {checked.stdout}{checked.stderr}"
    process = Process([SSHD, "-D", "-e", "-f", str(config)], tmp_path / "sshd.log", name="sshd", launcher=False)
    try:
        def up() -> bool:
            process.check_alive()
            return listening(port)

        wait_for(up, 10, f"sshd to listen on {port}")
        yield Sshd(process, port, client_key)
    finally:
        process.stop()


def _ssh(sshd: Sshd, port: int, tmp_path: Path, name: str) -> Shell:
    args = ["ssh", "-tt", "-F", "/dev/null", "-i", str(sshd.key), "-p", str(port),
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", f"{getpass.getuser()}@127.0.0.1"]
    env = dict(os.environ, TERM="dumb", LC_ALL="C")  # no colours, no cursor dances in the output
    return Shell(args, tmp_path / f"{name}.stderr", env)


def _steady(shell: Shell, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        times.append(shell.command("")[1])
    return times


def _resumed(deployment: Deployment, count: int) -> bool:
    return bool(deployment.status()["BUS1"]["sessions_resumed"] == count)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _check_seq(output: bytes, lines: int, typed_ahead: list[str]) -> None:
    """The output of ``seq 1 <lines>``, whole and in order, after the echo of the typed line.

    ``typed_ahead``: lines typed while it ran, whose echo by the terminal lands among the numbers.
    """
    text = output.decode(errors="replace")
    for line in typed_ahead:
        text = text.replace(line + "\r\n", "")
    text = text.replace("\r\n", "\n")
    numbers = re.findall(r"^(\d+)$", text, re.MULTILINE)
    expected = [str(n) for n in range(1, lines + 1)]
    if numbers != expected:
        missing = next((i for i, (a, b) in enumerate(zip(numbers, expected)) if a != b), min(len(numbers), lines))
        raise AssertionError(f"`seq 1 {lines}` came back damaged: {len(numbers)} lines, first difference at "
                             f"line {missing + 1}: {numbers[missing:missing + 3]} instead of "
                             f"{expected[missing:missing + 3]}")


def test_interactive_ssh_session_survives_link_cuts(
        deployment: Deployment, sshd: Sshd, make_proxy: Callable[[int], FaultProxy], figure: Figure,
        tmp_path: Path) -> None:
    test_started = time.monotonic()
    # Direct to sshd, for reference: the command round trip without the tunnel
    direct_shell = _ssh(sshd, sshd.port, tmp_path, "ssh-direct")
    try:
        direct_shell.command("", tag="ready")
        direct = _steady(direct_shell, STEADY_SAMPLES * 2)
        direct_shell.type("exit\n")
        assert direct_shell.proc.wait(15) == 0, direct_shell.stderr()
    finally:
        direct_shell.close()

    deployment.extra_config += FAST_KEEPALIVE_CONFIG
    deployment.write_config()
    deployment.options.append("--log-format=json")
    server = deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    agent = deployment.start_agent("BUS1", sshd.port, *FAST_KEEPALIVE_FLAGS,
                                   url=f"{proxy.url_base}/forward_to_me/BUS1")
    shell = _ssh(sshd, deployment.services["BUS1"], tmp_path, "ssh-tunnel")
    try:
        _, login = shell.command("", tag="ready")  # the login, the shell's start and one command
        user_output, _ = shell.command("id -un")
        assert getpass.getuser().encode() in user_output, user_output
        steady = _steady(shell, STEADY_SAMPLES)
        after_cut: list[tuple[str, float]] = []
        freeze_detected: float | None = None
        bulk_took = 0.0
        bulk_bytes = received_at_cut = 0
        for number, cut in enumerate(CUTS, start=1):
            wait_for(lambda: proxy.connection_count() == 1, 10, "the agent's link through the proxy")
            time.sleep(LINK_AGE)
            shell.check_alive()
            bulk_start = None
            if cut.bulk:  # a long output in flight when the link goes
                bulk_started = time.monotonic()
                bulk_start = shell.type(f'seq 1 {BULK_LINES}; echo "bu""lk-done"\n')
                shell.wait_output(b"\r\n1000\r\n", bulk_start, timeout=10)
            if cut.how == "freeze":
                proxy.freeze()
                frozen_at = time.monotonic()
                agent_mark = agent.mark()
                output_start = shell.type('echo "fro""zen-typed"\n')  # typed while the link is silent
                wait_for(lambda: not deployment.status()["BUS1"]["connected"], KEEPALIVE_BOUND + SLACK,
                         "the server's keepalive to notice the frozen link")
                agent.wait_line("keeping", since=agent_mark, timeout=KEEPALIVE_BOUND + SLACK)
                freeze_detected = time.monotonic() - frozen_at
                assert b"frozen-typed" not in shell.output[output_start:], "output came back through a frozen link"
                proxy.forward()
                forwarded_at = time.monotonic()
                shell.wait_output(b"frozen-typed\r\n", output_start)
                after_cut.append(("freeze (from the link's return)", time.monotonic() - forwarded_at))
            else:
                assert proxy.cut(rst=cut.how == "rst") == 1, f"cut #{number} found no link to cut"
                if bulk_start is not None:  # how much of it had come back by then (at most)
                    received_at_cut = len(shell.output) - bulk_start
                    assert b"bulk-done" not in shell.output[bulk_start:], "the output was over before the cut"
                _, took = shell.command("", tag="after-cut")  # typed at once, while the link is down
                after_cut.append((cut.how + (" during output" if cut.bulk else ""), took))
            if cut.bulk:
                assert bulk_start is not None
                end = shell.wait_output(b"bulk-done\r\n", bulk_start)
                bulk_took = time.monotonic() - bulk_started
                bulk_bytes = end - bulk_start
                _check_seq(bytes(shell.output[bulk_start:end]), BULK_LINES, shell.typed)
            wait_for(partial(_resumed, deployment, number), 15, f"resume #{number}")
            steady += _steady(shell, STEADY_SAMPLES)
            shell.check_alive()

        shell.type("exit\n")
        try:
            code = shell.proc.wait(15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ssh did not exit after `exit`; {shell.tail()}") from None
        assert code == 0, f"ssh exited with {code}: {shell.stderr()[-2000:]}\n{shell.tail()}"
    finally:
        shell.close()
    stderr = shell.stderr()
    trouble = [word for word in SSH_TROUBLE if word in stderr.lower()]
    assert not trouble, f"ssh printed {trouble}: {stderr[-2000:]}"
    status = deployment.status()["BUS1"]
    assert status["sessions_resumed"] == len(CUTS), status
    assert status["connected"], status
    assert len(agent.find_lines("session resumed")) == len(CUTS)
    assert not agent.find_lines("given up") and not server.find_lines("dropped")
    assert not server.find_lines("expired", reason="session expired")
    assert status["streams_opened_total"] == 1, status  # one ssh connection, never opened again
    sshd_log = sshd.process.log()
    assert sshd_log.count("Accepted publickey") == 2, sshd_log[-3000:]  # the direct login and the tunnelled one
    assert sshd_log.count("disconnected by user") == 2, sshd_log[-3000:]  # both ended by `exit`, cleanly
    retransmitted = [line["message"] for line in server.find_lines("session resumed")] + \
                    [line["message"] for line in agent.find_lines("session resumed")]
    sent_again = sum(int(m) for m in re.findall(r"(\d+) bytes sent again", " ".join(retransmitted)))
    took = time.monotonic() - test_started

    def stats(samples: list[float]) -> str:
        return f"median {_ms(statistics.median(samples))}, max {_ms(max(samples))}"

    cuts_text = ", ".join(f"{how} {_ms(t)}" for how, t in after_cut)
    figure(f"v2: interactive ssh -tt session (real ssh and sshd, ssh keepalive defaults) through the tunnel while "
           f"the agent's link is cut {len(CUTS)} times (RST, FIN, RST during a {BULK_LINES:,}-line output, a freeze "
           f"until both keepalives fire, FIN), a command typed at once after every cut",
           "the ssh connection never breaks: every command typed while the link is down runs and its output comes "
           "back, no byte lost; `exit` ends ssh with 0",
           f"ssh exit 0, no error printed, {status['sessions_resumed']} sessions resumed, 1 stream; command round "
           f"trip: steady {stats(steady)} (direct to sshd {stats(direct)}); typed right after each cut until its "
           f"output: {cuts_text} (the freeze noticed by both sides after {freeze_detected or 0:.1f} s); seq "
           f"output intact ({bulk_bytes:,} bytes in {bulk_took:.2f} s, {received_at_cut:,} of them back when the "
           f"link was cut); {sent_again} bytes sent again in all; login {_ms(login)}; {took:.1f} s in all",
           steady_ms=[round(t * 1000, 1) for t in steady], direct_ms=[round(t * 1000, 1) for t in direct],
           after_cut_ms={f"{i}:{how}": round(t * 1000, 1) for i, (how, t) in enumerate(after_cut, 1)},
           freeze_detected_s=freeze_detected, bulk_s=bulk_took, bulk_bytes=bulk_bytes,
           bulk_bytes_back_at_cut=received_at_cut, bytes_sent_again=sent_again,
           sessions_resumed=status["sessions_resumed"], login_ms=round(login * 1000, 1), took=took)
