"""The built single-file executables themselves, as a user runs them.

Built by ``bash scripts/build_binaries.sh`` into ``dist/`` (or the folder named by RW_BIN_DIR).
Without them these tests skip, saying so; the binaries stage of .ci/run builds them first and
then also runs the whole integration/e2e suite through them (RW_BIN_DIR=dist).

What is checked here and nowhere else:
- ``--version`` names the program, the version and the Python it was built with;
- websockets' C speedups are inside the archive and loaded by the running server;
- the binaries need no Python: they run under ``env -i`` with a PATH holding no Python at all,
  from a temporary folder holding only the binary (and, for the server, config.toml);
- with no CONFIG argument the server finds config.toml next to the executable;
- a config error is one line and exit code 2;
- bytes relay intact through the two binaries;
- SIGTERM (to the launcher, or to the whole process group as systemd does) ends the server
  with exit code 0 within 5 s, and the folder it unpacked into $TMPDIR is gone;
- SIGKILL of the launcher does not leave the Python process running as an orphan;
- the agent trusts the CA bundle named by SSL_CERT_FILE (the bundled OpenSSL's own CA path is the
  build distribution's);
- cold start of ``--version`` (median of 5) and size, printed for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from reverse_websockify import __version__
from tests.support.clients import sha256, transfer
from tests.support.ports import free_port
from tests.support.probes import children
from tests.support.processes import Process
from tests.support.programs import AGENT_NAME, SERVER_NAME
from tests.support.services import Service
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("RW_BIN_DIR") or ROOT / "dist").resolve()
EXE_SUFFIX = ".exe" if sys.platform == "win32" else ""
SERVER = BIN_DIR / (SERVER_NAME + EXE_SUFFIX)
AGENT = BIN_DIR / (AGENT_NAME + EXE_SUFFIX)

pytestmark = [
    pytest.mark.skipif(not (SERVER.is_file() and AGENT.is_file()),
                       reason=f"no built executables in {BIN_DIR} (build them with: bash scripts/build_binaries.sh)"),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, env -i and /proc are used here"),
]


# -- helpers ---------------------------------------------------------------------------------------

def _empty_path_dir(tmp_path: Path) -> Path:
    """A PATH with nothing in it: the binaries must need no program from PATH, Python least of all."""
    path = tmp_path / "empty-bin"
    path.mkdir(exist_ok=True)
    return path


def _minimal_env(tmp_path: Path, path: str = "/usr/bin:/bin", **extra: str) -> dict[str, str]:
    """What `env -i PATH=/usr/bin:/bin` leaves, plus TMPDIR when asked: no PYTHON*, no HOME, no venv."""
    env = {"PATH": path}
    env.update(extra)
    return env


def _install(binary: Path, folder: Path, config: str | None = None) -> Path:
    """Copy one binary (and config.toml) into a folder of their own, as a user would."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / binary.name
    shutil.copy2(binary, target)
    if config is not None:
        (folder / "config.toml").write_text(config)
    return target


def _server_config(http_port: int, services: dict[str, int]) -> str:
    lines = [f'http_server_endpoint = "127.0.0.1:{http_port}"']
    for sid, port in services.items():
        lines += [f"[remote_service.{sid}]", f'nickname = "nick-{sid}"', f'local_listen_endpoint = "127.0.0.1:{port}"']
    return "\n".join(lines) + "\n"


def _status(http_port: int) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/", headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _http_up(http_port: int, proc: Process) -> bool:
    if proc.proc.poll() is not None:
        raise AssertionError(f"server exited with {proc.proc.returncode}: {proc.log()}")
    try:
        _status(http_port)
        return True
    except OSError:
        return False


def _mei_dirs(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.iterdir() if p.name.startswith("_MEI"))


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          **kwargs)  # type: ignore[call-overload]


def _python_with_pyinstaller() -> str | None:
    for python in (sys.executable, str(ROOT / "build" / "venv" / "bin" / "python")):
        if Path(python).exists() and subprocess.run([python, "-c", "import PyInstaller.archive.readers"],
                                                    capture_output=True).returncode == 0:
            return python
    return None


def _report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[binaries] {text}", flush=True)


# -- what the user sees first --------------------------------------------------------------------

@pytest.mark.parametrize("binary", [SERVER, AGENT], ids=["server", "agent"])
def test_version_names_program_version_and_python(binary: Path, tmp_path: Path) -> None:
    result = _run([str(binary), "--version"], env=_minimal_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result
    line = result.stdout.strip()
    assert "\n" not in line, line
    assert line.startswith(f"{binary.name.removesuffix(EXE_SUFFIX)} {__version__} "), line
    assert "(single-file build)" in line, line
    assert "Python 3." in line, line
    assert "websockets " in line, line
    assert result.stderr == ""


def test_speedups_and_libpython_are_inside_the_archive() -> None:
    """Read the archive with PyInstaller's own reader (scripts/check_glibc.py) and report the glibc floor."""
    python = _python_with_pyinstaller()
    if python is None:
        pytest.skip("PyInstaller is not importable here nor in build/venv: cannot list the archive")
    floor = os.environ.get("RW_GLIBC_MAX")
    args = [python, str(ROOT / "scripts" / "check_glibc.py"), "--require", "websockets/speedups",
            "--require", "libpython3", str(SERVER), str(AGENT)]
    if floor:
        args[2:2] = ["--max", floor]
    result = _run(args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "websockets/speedups" in result.stdout
    print(result.stdout)


def test_running_server_has_loaded_the_speedups(tmp_path: Path) -> None:
    """Not only bundled: the frozen Python process maps websockets' C extension once it serves."""
    http = free_port()
    exe = _install(SERVER, tmp_path / "rendezvous", _server_config(http, {"S": free_port()}))
    proc = Process([str(exe)], tmp_path / "server.log", env=_minimal_env(tmp_path), cwd=tmp_path / "rendezvous")
    try:
        wait_for(lambda: _http_up(http, proc), 20, "server HTTP")
        pids = [proc.pid] + children(proc.pid)
        maps = "".join(Path(f"/proc/{pid}/maps").read_text() for pid in pids if Path(f"/proc/{pid}/maps").exists())
        assert "websockets/speedups" in maps, "websockets' C speedups are not loaded by the frozen server"
    finally:
        assert proc.stop() == 0, proc.log()


# -- no Python needed -------------------------------------------------------------------------------

def test_minimal_environment_relay_default_config_and_clean_sigterm(tmp_path: Path) -> None:
    """env -i, an empty PATH, each binary alone in its own folder; the server finds config.toml next to
    itself (started from another folder, with no argument); bytes relay intact; SIGTERM exits 0 and
    the unpacked _MEI* folders are removed."""
    build_python = Path(sys.executable).resolve()
    empty_bin = _empty_path_dir(tmp_path)
    assert not any(empty_bin.iterdir())
    unpack = tmp_path / "unpack"
    unpack.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    http, user_port = free_port(), free_port()
    server_exe = _install(SERVER, tmp_path / "rendezvous", _server_config(http, {"BUS1": user_port}))
    agent_exe = _install(AGENT, tmp_path / "agent")
    assert sorted(p.name for p in server_exe.parent.iterdir()) == ["config.toml", SERVER_NAME]
    assert sorted(p.name for p in agent_exe.parent.iterdir()) == [AGENT_NAME]
    env = _minimal_env(tmp_path, path=str(empty_bin), TMPDIR=str(unpack))
    assert str(build_python.parent) not in env["PATH"]
    assert shutil.which("python3", path=env["PATH"]) is None and shutil.which("python", path=env["PATH"]) is None

    echo = Service()
    server = Process([str(server_exe)], tmp_path / "server.log", env=env, cwd=elsewhere)
    agent = None
    try:
        wait_for(lambda: _http_up(http, server), 20, "server HTTP")
        agent = Process([str(agent_exe), f"--service=127.0.0.1:{echo.port}",
                         f"--reverse-websockify=ws://127.0.0.1:{http}/forward_to_me/BUS1"],
                        tmp_path / "agent.log", env=env, cwd=elsewhere)
        wait_for(lambda: _status(http)["BUS1"]["connected"], 20, f"agent to attach: {agent.log()[-2000:]}")
        assert len(_mei_dirs(unpack)) == 2, "each running one-file binary unpacks into $TMPDIR"

        for size in (1, 65_537, 8 * 1024 * 1024 + 3):
            payload = os.urandom(size)
            back = transfer(user_port, payload)
            assert len(back) == size and sha256(back) == sha256(payload)
        status = _status(http)["BUS1"]
        assert status["nickname"] == "nick-BUS1"
        assert __version__ in (status["agent_version"] or ""), status
        assert status["bytes_to_service"] == status["bytes_from_service"] == 1 + 65_537 + 8 * 1024 * 1024 + 3

        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.proc.wait(5) == 0, server.log()
        assert time.monotonic() - started < 5
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(5) == 0, agent.log()
        assert _mei_dirs(unpack) == [], "the one-file launcher left its unpacked folder behind"
        assert "Traceback" not in server.log() + agent.log()
    finally:
        echo.close()
        if agent is not None:
            agent.stop()
        server.stop()


def test_sigterm_to_the_whole_process_group_like_systemd(tmp_path: Path) -> None:
    """systemd's default KillMode=control-group signals the launcher and the Python process at once."""
    unpack = tmp_path / "unpack"
    unpack.mkdir()
    http = free_port()
    exe = _install(SERVER, tmp_path / "rendezvous", _server_config(http, {"S": free_port()}))
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([str(exe)], env=_minimal_env(tmp_path, TMPDIR=str(unpack)), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _status_ok(http, proc), 20, "server HTTP")
        assert children(proc.pid), "a one-file launcher runs Python in a child process"
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(5)
        log_text = (tmp_path / "server.log").read_text()
        wait_for(lambda: not _mei_dirs(unpack), 5, "the _MEI folder to be removed")
        assert "shutting down" in log_text and "Traceback" not in log_text, log_text
        assert code in (0, -signal.SIGTERM), log_text
        if code != 0:
            # The launcher forwards the SIGTERM that the Python process also got directly; when the
            # duplicate lands after asyncio.run() has restored SIG_DFL (at loop close), Python dies of
            # it after a clean shutdown and the launcher reports -15 (systemd counts it as clean, a
            # shell or docker sees 143). Fixed in the library by ignoring SIGTERM once the first one
            # is handled (see the binaries' notes); until then this is an expected failure.
            pytest.xfail("duplicate SIGTERM after asyncio restored SIG_DFL: exit -15 instead of 0")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def test_sigkill_of_the_launcher_stops_the_python_process(tmp_path: Path) -> None:
    """SIGKILL cannot be forwarded: the Python process notices its launcher is gone (run-time hook
    specs/hooks/rth_launcher_watch.py), shuts down and frees its ports instead of living on."""
    http, user_port = free_port(), free_port()
    exe = _install(SERVER, tmp_path / "rendezvous", _server_config(http, {"S": user_port}))
    proc = Process([str(exe)], tmp_path / "server.log", env=_minimal_env(tmp_path), cwd=tmp_path)
    try:
        wait_for(lambda: _http_up(http, proc), 20, "server HTTP")
        (child,) = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the launcher only (Process.kill() would kill the child too)
        proc.proc.wait(10)
        wait_for(lambda: not Path(f"/proc/{child}").exists()
                 or Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z",
                 5, f"the orphaned Python process {child} to exit: {proc.log()}")
        assert "shutting down" in proc.log()
        with socket.socket() as s:
            s.bind(("127.0.0.1", user_port))  # released
    finally:
        proc.stop()


def _status_ok(http: int, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"server exited with {proc.returncode}")
    try:
        _status(http)
        return True
    except OSError:
        return False


def test_agent_trusts_the_ca_bundle_named_by_ssl_cert_file(tmp_path: Path) -> None:
    """The bundled OpenSSL was built for another distribution's CA location: the executables find the
    host's CA bundle (run-time hook) or the one SSL_CERT_FILE names. A CA the agent has not been told
    about is refused; the same CA given by SSL_CERT_FILE alone (no --ca-cert) is accepted."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a certificate")
    tls = tmp_path / "tls"
    tls.mkdir()
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(tls / "key.pem"), "-out", str(tls / "cert.pem"), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    http = free_port()
    config = _server_config(http, {"S": free_port()}) + \
        f'[tls]\ncert = "{tls / "cert.pem"}"\nkey = "{tls / "key.pem"}"\n'
    server_exe = _install(SERVER, tmp_path / "rendezvous", config)
    agent_exe = _install(AGENT, tmp_path / "agent")
    env = _minimal_env(tmp_path)
    server = Process([str(server_exe)], tmp_path / "server.log", env=env, cwd=tmp_path)
    echo = Service()
    agents: list[Process] = []

    def https_up() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(server.log())
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", http)) == 0

    def agent(extra_env: dict[str, str]) -> Process:
        proc = Process([str(agent_exe), f"--service=127.0.0.1:{echo.port}", "--max-backoff=1",
                        f"--reverse-websockify=wss://127.0.0.1:{http}/forward_to_me/S"],
                       tmp_path / f"agent-{len(agents)}.log", env={**env, **extra_env}, cwd=tmp_path)
        agents.append(proc)
        return proc

    try:
        wait_for(https_up, 20, "server TLS port")
        refused = agent({})
        wait_for(lambda: "certif" in refused.log().lower(), 20, f"a certificate error: {refused.log()}")
        assert refused.proc.poll() is None, "the agent keeps retrying"
        assert refused.stop() == 0, refused.log()
        trusted = agent({"SSL_CERT_FILE": str(tls / "cert.pem")})
        wait_for(lambda: "connected to wss://" in trusted.log(), 20,
                 f"the agent to attach: {trusted.log()}")
        assert trusted.stop() == 0, trusted.log()
    finally:
        echo.close()
        for proc in agents:
            proc.stop()
        server.stop()


# -- config -----------------------------------------------------------------------------------------

def test_config_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    exe = _install(SERVER, tmp_path / "rendezvous", 'http_server_endpoint = "127.0.0.1:1"\ncolour = 3\n')
    result = _run([str(exe)], env=_minimal_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{SERVER_NAME}: error: "), lines[0]
    assert str(exe.parent / "config.toml") in lines[0] and "colour: unknown key" in lines[0], lines[0]
    assert result.stdout == ""


def test_no_config_anywhere_lists_every_place_looked(tmp_path: Path) -> None:
    exe = _install(SERVER, tmp_path / "alone")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = _run([str(exe)], env=_minimal_env(tmp_path, HOME=str(tmp_path / "home")), cwd=cwd)
    assert result.returncode == 2, result
    line = result.stderr.strip()
    assert "\n" not in line, line
    assert str(exe.parent / "config.toml") in line, line
    assert str(cwd / "config.toml") in line, line


def test_check_config_finds_config_next_to_the_executable(tmp_path: Path) -> None:
    exe = _install(SERVER, tmp_path / "rendezvous", _server_config(free_port(), {"A": free_port(), "B": free_port()}))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = _run([str(exe), "--check-config"], env=_minimal_env(tmp_path), cwd=cwd)
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"{exe.parent / 'config.toml'}: OK, 2 services"


# -- numbers for the README -----------------------------------------------------------------------

def test_cold_start_and_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Median of 5 cold starts of --version (after one warm-up of the page cache), and the file size."""
    for binary in (SERVER, AGENT):
        env = _minimal_env(tmp_path, TMPDIR=str(tmp_path))
        _run([str(binary), "--version"], env=env)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            result = _run([str(binary), "--version"], env=env)
            times.append(time.perf_counter() - started)
            assert result.returncode == 0, result
        median = statistics.median(times)
        size_mb = binary.stat().st_size / 1e6
        _report(capsys, f"{binary.name}: {size_mb:.1f} MB, --version cold start median of 5: {median * 1000:.0f} ms "
                        f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times)} ms)")
        # Generous bounds: a regression to a multi-second start or a 50 MB file fails, machine noise does not.
        assert median < 3.0, times
        assert size_mb < 40, size_mb
        assert _mei_dirs(tmp_path) == []
