"""Hostile input: fuzzed agent sessions, a hostile server, HTTP abuse, oversized messages."""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from reverse_websockify.protocol import (
    INITIAL_WINDOW,
    MAX_CREDIT,
    MAX_DATA,
    MAX_MESSAGE,
    SUBPROTOCOL,
    FrameType,
    ProtocolError,
    decode,
    encode_data,
    encode_fin,
    encode_open,
    encode_open_ok,
    encode_rst,
    encode_window,
)
from tests.support.clients import Exchange, read_until_closed, sha256
from tests.support.deployment import Deployment
from tests.support.ports import free_port
from tests.support.probes import fd_count, rss_kib
from tests.support.services import Service
from tests.support.waiting import wait_for
from tests.support.websocket import fake_agent, mask, masked_frame_header, raw_handshake, read_close_code
from tests.reliability.conftest import Figure
from tests.support.loops import LoopThread

# -- fuzzing the agent endpoint ---------------------------------------------------------------------

OPEN_STREAM = 1  # the fuzz session's user makes the server open stream 1 before the frames are sent

_header = struct.Struct(">BI")
_types = st.sampled_from([0, 1, 2, 3, 3, 3, 4, 4, 5, 6, 7, 255])
_ids = st.sampled_from([0, 1, 1, 1, 1, 2, 3, 0xFFFFFFFF])
_bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=12),
    st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),  # WINDOW-sized
    st.sampled_from([struct.pack(">I", 1), struct.pack(">I", MAX_CREDIT), struct.pack(">I", MAX_CREDIT + 1)]),
    st.integers(1020, 1030).map(lambda n: b"r" * n),  # around MAX_REASON
    st.integers(MAX_DATA - 1, MAX_DATA + 1).map(lambda n: b"d" * n),  # around MAX_DATA
)
_structured = st.builds(lambda t, i, body: _header.pack(t, i) + body, _types, _ids, _bodies)
_valid = st.sampled_from([
    encode_open_ok(OPEN_STREAM),
    encode_data(OPEN_STREAM, b"hello"),
    encode_data(OPEN_STREAM, b"x" * 4000),
    encode_window(OPEN_STREAM, 1000),
    encode_window(OPEN_STREAM, MAX_CREDIT // 2),
    encode_fin(OPEN_STREAM),
    encode_rst(OPEN_STREAM, "bye"),
])
_message = st.one_of(
    _valid, _valid, _valid, _structured, _structured, _structured,
    st.binary(max_size=40),  # raw garbage
    st.text(max_size=12),  # text messages are always a protocol error
    st.integers(MAX_MESSAGE - 1, MAX_MESSAGE + 2).map(lambda n: b"\x03\x00\x00\x00\x01" + b"o" * (n - 5)),
)


# Half the sessions start like a well-behaved agent (OPEN_OK, then mostly valid frames), so that
# the rules after OPEN_OK (credit, FIN, RST, frames for ended streams) are reached too.
_session = st.one_of(
    st.lists(_message, min_size=1, max_size=6),
    st.builds(lambda valid, tail: [encode_open_ok(OPEN_STREAM), *valid, *tail],
              st.lists(_valid, max_size=5), st.lists(_message, max_size=2)),
)


@dataclass
class Expectation:
    code: int | None  # close code the server must send; None: the session must stay open
    sent: list[bytes | str] = field(default_factory=list)  # what to send (stops after the first error)
    delivered: bytes = b""  # DATA the user must receive (if the stream was not reset)
    fin: bool = False
    reset: bool = False
    ambiguous: bool = False


def expect(messages: list[bytes | str]) -> Expectation:
    """What the server must do with these agent messages, stream 1 being open (docs/protocol.md 6.1)."""
    result = Expectation(None)
    confirmed = ended = fin = False
    allowance, credit = INITIAL_WINDOW, INITIAL_WINDOW
    delivered = bytearray()
    for message in messages:
        result.sent.append(message)
        size = len(message.encode()) if isinstance(message, str) else len(message)
        if size > MAX_MESSAGE:
            result.code = 1009
            break
        try:
            frame = decode(message)
        except ProtocolError:
            result.code = 1002
            break
        kind, sid = frame.type, frame.stream_id
        if kind is FrameType.OPEN or sid > OPEN_STREAM:
            result.code = 1002
            break
        if ended:
            continue  # frames for a stream that has ended are dropped
        if not confirmed and kind not in (FrameType.OPEN_OK, FrameType.RST):
            result.code = 1002
            break
        if kind is FrameType.OPEN_OK:
            if confirmed:
                result.code = 1002
                break
            confirmed = True
        elif kind is FrameType.DATA:
            if fin:
                result.code = 1002
                break
            if len(frame.body) > allowance:
                result.ambiguous = True  # whether credit came back in time depends on the user's socket
                break
            allowance -= len(frame.body)
            delivered.extend(frame.body)
        elif kind is FrameType.WINDOW:
            credit += frame.window_increment
            if credit > MAX_CREDIT:
                result.code = 1002
                break
        elif kind is FrameType.FIN:
            if fin:
                result.code = 1002
                break
            fin = True
        elif kind is FrameType.RST:
            ended = True
    result.delivered, result.fin, result.reset = bytes(delivered), fin, ended
    return result


class Background:
    """Hash-checked transfers on another service, over and over, while the fuzzing runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            payload = os.urandom(256 * 1024)
            exchange = Exchange(self.port, payload, timeout=20)
            if exchange.join() != "complete" or sha256(bytes(exchange.received)) != sha256(payload):
                self.failures.append(f"transfer {self.done}: {exchange.outcome}, {len(exchange.received)} bytes")
            self.done += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


async def _fuzz_session(deployment: Deployment, messages: list[bytes | str]) -> tuple[Expectation, int | None, str]:
    want = expect(messages)
    ws = await fake_agent(deployment.url("FUZZ"), max_size=None, ping_interval=None)
    loop = asyncio.get_running_loop()
    me = "%s:%d" % ws.local_address[:2]
    await loop.run_in_executor(None, lambda: wait_for(
        lambda: deployment.status()["FUZZ"]["agent_address"] == me, 5, "the fuzz session to be attached"))
    user = socket.create_connection(("127.0.0.1", deployment.services["FUZZ"]))
    try:
        opened = decode(await asyncio.wait_for(ws.recv(), 5))
        assert opened.type is FrameType.OPEN and opened.stream_id == OPEN_STREAM
        for message in want.sent:
            try:
                await ws.send(message)
            except ConnectionClosed:
                break
        if want.code is not None or want.ambiguous:
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed:
                pass
            except asyncio.TimeoutError:
                if not want.ambiguous:
                    raise AssertionError(f"session not closed; expected {want.code}") from None
            if ws.close_code is not None:  # every stream of a closed session is closed
                await loop.run_in_executor(None, read_until_closed, user, 5)
        else:
            # Valid frames: the session stays open, the user gets exactly the DATA.
            if want.delivered and not want.reset:
                user.settimeout(5)
                got = bytearray()
                while len(got) < len(want.delivered):
                    chunk = await loop.run_in_executor(None, user.recv, 1 << 20)
                    assert chunk, "the user's connection ended before all DATA arrived"
                    got.extend(chunk)
                assert bytes(got) == want.delivered
            if want.reset:
                await loop.run_in_executor(None, read_until_closed, user, 5)
            try:
                await asyncio.wait_for(ws.recv(), 0.3)
            except asyncio.TimeoutError:
                pass
            except ConnectionClosed:
                raise AssertionError(f"a valid session was closed: {ws.close_code} {ws.close_reason}") from None
            pong = await ws.ping()
            await asyncio.wait_for(pong, 5)
            await ws.close()
        return want, ws.close_code, ws.close_reason or ""
    finally:
        user.close()
        await ws.close()


@pytest.mark.heavy
def test_fuzz_agent_endpoint(deployment: Deployment, echo: Service, figure: Figure) -> None:
    deployment.services["GOOD"] = free_port()
    deployment.services["FUZZ"] = free_port()
    deployment.extra_config = "open_timeout_seconds = 60\nagent_wait_seconds = 5"
    deployment.write_config()
    server = deployment.start_server()
    deployment.start_agent("GOOD", echo.port)
    good_address = deployment.status()["GOOD"]["agent_address"]
    good_user = socket.create_connection(("127.0.0.1", deployment.services["GOOD"]))
    good_user.sendall(b"before")
    good_user.settimeout(5)
    assert good_user.recv(6) == b"before"
    background = Background(deployment.services["GOOD"])
    codes: dict[str, int] = {}
    started = time.monotonic()

    @settings(max_examples=100, deadline=None, derandomize=False,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(_session)
    def session(messages: list[bytes | str]) -> None:
        want, code, reason = asyncio.run(_fuzz_session(deployment, messages))
        if want.ambiguous:
            assert code in (1002, 1000, None), (code, reason)
        elif want.code is None:
            assert code == 1000, (code, reason)
        else:
            assert code == want.code, (want.code, code, reason, [m[:12] for m in want.sent])
            if code == 1002:
                assert reason, "a protocol error names its cause"
        key = "ambiguous" if want.ambiguous else str(code)
        codes[key] = codes.get(key, 0) + 1
        assert server.proc.poll() is None

    try:
        session()
    finally:
        background.stop()
    took = time.monotonic() - started
    assert not background.failures, background.failures
    assert background.done >= 3
    good_user.sendall(b"after")
    assert good_user.recv(5) == b"after"
    good_user.close()
    assert deployment.status()["GOOD"]["agent_address"] == good_address  # never disturbed
    for bad in ("Traceback", "tunnel failed", "connection handler failed"):
        assert bad not in server.log(), f"{bad!r} in the server log"
    figure("fuzzed agent sessions (hypothesis, 100 sessions of 1-6 frames)",
           "server stays up; other agents' streams untouched; bad sessions closed 1002 (1009 oversize)",
           f"close codes {dict(sorted(codes.items()))} as predicted frame by frame; "
           f"{background.done} hash-checked 256 KiB transfers on another agent meanwhile, none disturbed; "
           f"{took:.0f} s",
           codes=codes, background_transfers=background.done)


# -- a hostile server, seen by a real agent ------------------------------------------------------------

HOSTILE_SERVER_FRAMES: list[tuple[str, list[bytes | str], int]] = [
    ("text message", ["hello"], 1002),
    ("short header", [b"\x01\x00"], 1002),
    ("unknown type", [b"\x09\x00\x00\x00\x01"], 1002),
    ("OPEN_OK from the server", [encode_open_ok(1)], 1002),
    ("DATA for a stream never opened", [encode_data(5, b"x")], 1002),
    ("OPEN with a non-increasing id", [encode_open(1), encode_open(1)], 1002),
    # 64 MiB to an echo whose replies nobody reads: once the agent stops returning credit, DATA
    # beyond it must be refused (its memory stays bounded), however much the server keeps sending.
    ("DATA beyond the credit", [encode_open(1)] + [encode_data(1, b"c" * MAX_DATA)] * 256, 1002),
    ("oversized message", [b"\x03\x00\x00\x00\x01" + b"x" * MAX_MESSAGE], 1009),
]


def test_hostile_server_cannot_crash_the_agent(deployment: Deployment, echo: Service, figure: Figure) -> None:
    """A fake server sends one bad frame per session: the agent closes with 1002/1009 and reconnects."""
    loop = LoopThread("hostile-server")
    results: list[tuple[str, int | None, str]] = []
    sessions = iter(HOSTILE_SERVER_FRAMES)

    async def handler(ws) -> None:  # noqa: ANN001
        case = next(sessions, None)
        if case is None:
            await ws.wait_closed()
            return
        name, messages, _ = case

        async def drain() -> None:  # read what the agent sends, so that its close frame is seen
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass

        reader = asyncio.create_task(drain())
        try:
            for message in messages:
                await ws.send(message)
        except ConnectionClosed:
            pass
        try:
            await asyncio.wait_for(ws.wait_closed(), 10)
        finally:
            reader.cancel()
            results.append((name, ws.close_code, ws.close_reason or ""))

    async def start() -> object:
        return await serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL], compression=None,
                           max_size=None, ping_interval=None)

    server = loop.run(start())
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        agent = deployment.start_agent("BUS1", echo.port, wait=False,
                                       url=f"ws://127.0.0.1:{port}/forward_to_me/BUS1")
        wait_for(lambda: len(results) == len(HOSTILE_SERVER_FRAMES), 30,
                 f"every hostile session to end: {results}\n{agent.log()[-2000:]}")
        assert agent.proc.poll() is None
        for (name, _, expected), (got_name, code, reason) in zip(HOSTILE_SERVER_FRAMES, results):
            assert got_name == name
            assert code == expected, (name, code, reason)
            if name == "DATA beyond the credit":
                assert "credit" in reason, reason
        assert "Traceback" not in agent.log() and "tunnel failed" not in agent.log()
        figure("hostile server (one bad frame per session)",
               "the agent closes that session with 1002 (1009 oversize), logs it, reconnects; never crashes",
               f"{len(results)} cases, each closed by the agent with the expected code; agent still running",
               cases={name: code for name, code, _ in results})
    finally:
        server.close()  # type: ignore[attr-defined]
        loop.stop()


# -- HTTP abuse -------------------------------------------------------------------------------------------


def _response_to(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send raw bytes, return (first response line or b'', seconds until the server closed)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass
        got = bytearray()
        try:
            while chunk := s.recv(65536):
                got.extend(chunk)
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise AssertionError(f"server kept the connection open after {data[:40]!r}") from None
    return bytes(got).split(b"\r\n", 1)[0], time.monotonic() - started


def test_http_garbage_and_oversized_headers(deployment: Deployment, echo: Service, figure: Figure) -> None:
    handshake_timeout = 2.0
    deployment.extra_config = f"handshake_timeout_seconds = {handshake_timeout}"
    deployment.write_config()
    server = deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    port = deployment.http_port
    requests = {
        "binary garbage": os.urandom(4096) + b"\r\n\r\n",
        "TLS hello on plain HTTP": bytes.fromhex("16030100a5010000a10303") + bytes(160),  # no line end
        "bad request line": b"HELLO\r\n\r\n",
        "HTTP/9.9": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        "header without colon": b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        "100 KB header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        "300 headers": b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(300)) + b"\r\n",
        "1 MB of header lines": b"GET / HTTP/1.1\r\n" + b"X: " + b"b" * 8000 + b"\r\n" * 1 + os.urandom(1 << 20),
        "upgrade with bad key": b"GET /forward_to_me/BUS1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\nSec-WebSocket-Key: nope\r\nSec-WebSocket-Version: 13\r\n"
                                b"Sec-WebSocket-Protocol: " + SUBPROTOCOL.encode() + b"\r\n\r\n",
        "request body on GET": b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000,
    }
    base_rss = rss_kib(server.pid)
    answers = {}
    slowest = 0.0
    for name, data in requests.items():
        first_line, took = _response_to(port, data)
        answers[name] = (first_line.decode(errors="replace")[:40] or "(closed)") + f" after {took:.2f} s"
        slowest = max(slowest, took)
        assert not first_line.startswith(b"HTTP/1.1 101"), name
        assert deployment.status()["BUS1"]["connected"], f"agent lost after {name}"
    assert slowest < handshake_timeout + 1.5, slowest
    assert rss_kib(server.pid) - base_rss < 8 * 1024
    payload = os.urandom(1 << 20)
    exchange = Exchange(deployment.services["BUS1"], payload, timeout=20)
    assert exchange.join() == "complete" and sha256(bytes(exchange.received)) == sha256(payload)
    assert server.proc.poll() is None
    figure("HTTP garbage and oversized headers on the server port",
           "refused (400 or closed), at the latest by handshake_timeout_seconds; nothing buffered; agents unaffected",
           f"{len(requests)} kinds refused, slowest after {slowest:.2f} s (handshake_timeout_seconds = "
           f"{handshake_timeout:g}): "
           + "; ".join(f"{k}: {v}" for k, v in answers.items()),
           answers=answers)


@pytest.mark.heavy
def test_slowloris_handshakes_time_out_and_server_keeps_serving(deployment: Deployment, echo: Service,
                                                                 figure: Figure) -> None:
    handshake_timeout = 2.0
    count = 200
    deployment.services["LATE"] = free_port()
    deployment.extra_config = f"handshake_timeout_seconds = {handshake_timeout}"
    deployment.write_config()
    server = deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    base_fds = fd_count(server.pid)
    partial = b"GET /forward_to_me/BUS1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    sockets: list[socket.socket] = []
    stop = threading.Event()

    def dribble(s: socket.socket) -> None:  # one byte every 0.3 s, forever
        for byte in partial + b"X-Slow: " + b"s" * 1000:
            if stop.is_set():
                return
            try:
                s.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.3)  # the scenario: a slowloris dribbles one byte every 0.3 s

    closed_at: dict[int, float] = {}

    def watch() -> None:
        selector = selectors.DefaultSelector()
        deadline = time.monotonic() + 60
        registered = 0
        while time.monotonic() < deadline and len(closed_at) < count:
            while registered < len(sockets):
                selector.register(sockets[registered], selectors.EVENT_READ, registered)
                registered += 1
            for key, _ in selector.select(0.05):
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                if not data:
                    closed_at[key.data] = time.monotonic()
                    selector.unregister(key.fileobj)
        selector.close()

    watcher = threading.Thread(target=watch, daemon=True)
    started = time.monotonic()
    watcher.start()
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", deployment.http_port))
        if i % 3 == 1:
            s.sendall(partial)  # half-sent handshake, then silence
        elif i % 3 == 2:
            threading.Thread(target=dribble, args=(s,), daemon=True).start()
        # i % 3 == 0: connect and send nothing
        sockets.append(s)
    opened = time.monotonic() - started
    # Meanwhile: the status page, the attached agent, and a new agent all work.
    status_times = []
    for _ in range(5):
        t = time.monotonic()
        assert deployment.status()["BUS1"]["connected"]
        status_times.append(time.monotonic() - t)
    payload = os.urandom(1 << 20)
    exchange = Exchange(deployment.services["BUS1"], payload, timeout=20)
    assert exchange.join() == "complete" and sha256(bytes(exchange.received)) == sha256(payload)
    deployment.start_agent("LATE", echo.port)
    exchange = Exchange(deployment.services["LATE"], payload, timeout=20)
    assert exchange.join() == "complete" and sha256(bytes(exchange.received)) == sha256(payload)

    watcher.join(opened + handshake_timeout + 10)
    stop.set()
    assert len(closed_at) == count, f"{count - len(closed_at)} half-sent handshakes still open"
    for s in sockets:
        s.close()
    latest = max(closed_at.values()) - started
    assert latest < opened + handshake_timeout + 1.5, latest
    wait_for(lambda: fd_count(server.pid) <= base_fds + 2, 5, "the server's fds to return to normal")
    assert server.proc.poll() is None
    figure(f"slowloris: {count} half-sent handshakes (silent, partial, dribbling)",
           "handshakes time out (handshake_timeout_seconds); status page and agents keep working",
           f"handshake_timeout_seconds = {handshake_timeout:g}: all {count} closed by {latest:.1f} s "
           f"(opened over {opened:.1f} s); status page answered in ≤ {max(status_times) * 1000:.0f} ms meanwhile; "
           "an attached and a newly attaching agent each moved 1 MiB byte-exact; server fds back to normal",
           closed_by=latest, status_max=max(status_times))


# -- oversized WebSocket messages ------------------------------------------------------------------------


def test_oversized_messages_refused_not_buffered(deployment: Deployment, figure: Figure) -> None:
    server = deployment.start_server()
    path = "/forward_to_me/BUS1"
    port = deployment.http_port

    def at_size(size: int) -> int | None:
        sock, rest = raw_handshake(port, path)
        with sock:
            header, key = masked_frame_header(0x2, size)
            payload = b"\x03\x00\x00\x00\x07" + b"x" * (size - 5)
            sock.sendall(header + mask(payload, key))
            return read_close_code(sock, rest)

    assert at_size(MAX_MESSAGE) == 1002  # at the limit: parsed (DATA for a stream never opened)
    assert at_size(MAX_MESSAGE + 1) == 1009

    def flood(first_header: bytes, frames: list[bytes] | None, raw_chunks: int) -> tuple[int | None, int, float]:
        """Send a big message while a thread reads the server's close frame; return (code, units sent, s)."""
        sock, rest = raw_handshake(port, path)
        result: list[int | None] = []
        reader = threading.Thread(target=lambda: result.append(read_close_code(sock, rest, 15)), daemon=True)
        reader.start()
        started = time.monotonic()
        units = 0
        try:
            sock.sendall(first_header)
            chunk = os.urandom(1 << 20)
            for frame in frames if frames is not None else [chunk] * raw_chunks:
                if result:
                    break
                sock.sendall(frame)
                units += 1
        except OSError:
            pass
        reader.join(15)
        took = time.monotonic() - started
        sock.close()
        return (result[0] if result else None), units, took

    time.sleep(0.5)  # part of the measurement: the base RSS once the handshakes above are released
    base = rss_kib(server.pid)
    # 1. One frame announcing 256 MiB, then up to 16 MiB of it.
    header, _ = masked_frame_header(0x2, 256 << 20)
    code_one, mib_sent, refused_after = flood(header, None, 16)
    # 2. A message in 64 KiB fragments, up to 16 MiB in total.
    fragment_frames = []
    for i in range(256):
        header, key = masked_frame_header(0x2 if i == 0 else 0x0, 64 * 1024, fin=False)
        body = (b"\x03\x00\x00\x00\x01" + b"f" * (64 * 1024 - 5)) if i == 0 else b"f" * (64 * 1024)
        fragment_frames.append(header + mask(body, key))
    code_fragmented, fragments, _ = flood(b"", fragment_frames, 0)
    grown = rss_kib(server.pid) - base
    assert code_one == 1009 and code_fragmented == 1009, (code_one, code_fragmented)
    assert grown < 4 * 1024, f"server RSS grew by {grown} KiB"
    assert server.proc.poll() is None
    figure("oversized WebSocket messages",
           "refused by the size limit (close 1009), not buffered",
           f"limit exact: {MAX_MESSAGE} bytes parsed, {MAX_MESSAGE + 1} refused with 1009; a frame announcing "
           f"256 MiB refused with 1009 after {refused_after:.2f} s ({mib_sent} MiB written by then), a message in "
           f"64 KiB fragments refused with 1009 after {fragments} fragments were written; server RSS grew {grown} KiB",
           rss_growth_kib=grown, fragments_written=fragments)


def test_a_peer_that_pings_and_never_reads_does_not_grow_the_server(deployment: Deployment, echo: Service,
                                                                   figure: Figure) -> None:
    """25 MB of pings from a peer that reads nothing: the pongs beyond one write limit are not buffered."""
    deployment.services["BUS2"] = free_port()  # the flooder's ID
    server = deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    flooder, _ = raw_handshake(deployment.http_port, "/forward_to_me/BUS2")
    time.sleep(0.5)  # part of the measurement: the base RSS once the handshake is released
    base = rss_kib(server.pid)
    pings = []
    for i in range(1000):
        header, key = masked_frame_header(0x9, 125)
        pings.append(header + mask(i.to_bytes(4, "big") * 31 + b"p", key))
    burst = b"".join(pings)
    with flooder:
        for _ in range(200):  # 200,000 pings, 131 bytes each
            flooder.sendall(burst)
        time.sleep(0.5)
        grown = rss_kib(server.pid) - base
        with socket.create_connection(("127.0.0.1", deployment.services["BUS1"]), timeout=5) as user:
            user.sendall(b"still served\n")
            assert user.recv(64) == b"still served\n", "another service's user was not served during the flood"
    assert server.proc.poll() is None
    assert grown < 6 * 1024, f"server RSS grew by {grown} KiB while 26 MB of pings went unanswered"
    figure("ping flood from a peer that never reads", "pongs beyond the write limit are not buffered",
           f"200,000 pings (26 MB) from a WebSocket that reads nothing: server RSS grew {grown} KiB, "
           f"another service's user served meanwhile", rss_growth_kib=grown)
