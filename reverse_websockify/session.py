"""The streams of one WebSocket and their rules — pure, no I/O (like h2's ``H2Connection``).

A Session is fed every message the WebSocket delivers (``receive``: bytes in,
events out) and every local happening (a user connected, bytes were read from
a socket, a socket hung up: ``open_stream``, ``send_data``, ``send_fin``,
``reset``, ``delivered``). It enforces docs/protocol.md — who may open
streams and with which ids, the OPEN / OPEN_OK gate, ``max_streams``, credit,
FIN and RST — and queues the frames to send, which the tunnel collects with
``data_to_send()``. It never touches a socket, a timer or a logger, so every
rule is tested by wiring two Sessions back to back (tests/unit/test_session.py).

The events are small immutable records; the asyncio layer dispatches them to
the stream endpoint with the same id.

Protocol v2 sessions outlive their WebSocket. ``detach()`` when the link is
lost; on the next WebSocket each side sends a RESUME report (per stream: bytes
received, credit granted, FIN received, OPEN confirmed) and, once it has the
peer's, sends again whatever the peer is missing — DATA from the peer's
offset, a lost FIN, a lost OPEN — from the frames it kept (``SentLog``: those
not yet credited back). Streams one side no longer knows are reset on the
other. Until the peer's report is in, DATA and FIN are not queued ("held"):
they are sent from the log afterwards, so nothing overtakes a retransmission.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Union

from .protocol import (
    INITIAL_WINDOW,
    MAX_STREAM_ID,
    FrameType,
    Hello,
    ProtocolError,
    StreamProgress,
    data_tail,
    decode,
    encode_data,
    encode_fin,
    encode_hello,
    encode_open,
    encode_open_ok,
    encode_resume,
    encode_rst,
    encode_window,
    parse_hello,
    parse_resume,
)
from .flow import DEFAULT_BUDGET, WindowTuner
from .stream_state import StreamState

Role = Literal["server", "agent"]
"""Only the server opens streams; the agent answers them."""

Message = Union[bytes, bytearray, memoryview, str]


class StreamOpened(NamedTuple):
    """Agent: the server opened a stream for a user at ``peer``; connect it to the service."""

    stream_id: int
    peer: str


class OpenRefused(NamedTuple):
    """Agent: an OPEN beyond ``max_streams`` was answered with RST (for the log)."""

    stream_id: int
    reason: str


class OpenConfirmed(NamedTuple):
    """Server: the agent reached its service (OPEN_OK)."""

    stream_id: int


class DataReceived(NamedTuple):
    stream_id: int
    data: bytes | memoryview


class CreditGranted(NamedTuple):
    """WINDOW: ``unblocked`` when the stream had no credit left, so its reading had stopped."""

    stream_id: int
    unblocked: bool


class EndReceived(NamedTuple):
    """FIN: the peer sends no more; ``finished`` when our FIN went out too (the stream is over)."""

    stream_id: int
    finished: bool


class StreamReset(NamedTuple):
    """RST: the stream is over; ``before_open`` on the server when it came instead of OPEN_OK
    (the agent could not reach its service)."""

    stream_id: int
    reason: str
    before_open: bool


class SessionStarted(NamedTuple):
    """Agent, v2: the server's HELLO for a new session (keep its id and secret to resume it)."""

    hello: Hello


class SessionResumed(NamedTuple):
    """v2: both reports are in; ``streams`` were carried across, ``retransmitted`` bytes sent again."""

    streams: int
    retransmitted: int


Event = Union[StreamOpened, OpenRefused, OpenConfirmed, DataReceived, CreditGranted, EndReceived, StreamReset,
              SessionStarted, SessionResumed]

LOST_WHILE_DETACHED = "the other side ended the stream while the link was down"
NOT_RESUMED = "the server could not resume the session (it expired or the server restarted)"

_NO_IDS: tuple[int, ...] = ()


class Session:
    """The stream table of one WebSocket, seen from ``role``."""

    def __init__(self, role: Role, *, window: int = INITIAL_WINDOW, max_streams: int = 10000,
                 version: int = 1, budget: int = DEFAULT_BUDGET) -> None:
        self.role = role
        self.window = window
        self.tuner = WindowTuner(budget, window)
        self.max_streams = max_streams
        self.version = version
        self.resumable = version >= 2
        self.hello: Hello | None = None  # v2: the session's name and secret, once HELLO went out or came in
        self.bytes_retransmitted = 0
        self.streams: dict[int, StreamState] = {}
        self.highest_id = 0  # the highest stream id ever opened on this WebSocket
        self.streams_opened = 0
        self.bytes_sent = 0  # payload bytes sent as DATA
        self.bytes_received = 0  # payload bytes received as DATA
        self.closed = False
        # Only the server waits for OPEN_OK before it accepts frames on a stream: the server may
        # send DATA right after OPEN, and the agent holds it until its dial succeeds.
        self._gated = role == "server"
        self._outgoing: list[bytes] = []
        self.queued_data = 0  # payload bytes of the DATA in _outgoing that local reads queued (streams.Outlet)
        self._ended: list[int] = []
        # v2 only:
        self._holding = False  # detached, or the peer's RESUME report is not in yet: DATA and FIN wait
        self._peer_report: list[StreamProgress] | None = None  # RESUME entries received so far
        self._open_text: dict[int, str] = {}  # server: OPEN bodies until OPEN_OK, to redo a lost OPEN
        self._finished: dict[int, tuple[int, StreamState]] = {}  # both FINs done; kept until the peer surely has all
        self._held_resets: dict[int, str] = {}  # RSTs held with DATA and FIN (the peer may not know the stream yet)
        self._mark = 0
        self._ping_offsets: dict[int, int] | None = None  # each stream's sent bytes when the sample's ping went out
        self._awaiting_hello = self.resumable and role == "agent"  # the server speaks first in v2

    # -- what goes out ------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        return bool(self._outgoing) and not self._awaiting_hello

    def data_to_send(self) -> list[bytes]:
        """The frames queued since the last call, in order: one WebSocket message each."""
        if self._awaiting_hello:
            return []  # v2 agent: nothing goes out before the server's HELLO says which session this is
        frames, self._outgoing = self._outgoing, []
        self.queued_data = 0
        return frames

    def _clear_output(self) -> None:
        self._outgoing.clear()
        self.queued_data = 0

    def ended_streams(self) -> list[int] | tuple[int, ...]:
        """Ids of the streams that left the table since the last call (for the endpoint table)."""
        if not self._ended:
            return _NO_IDS
        ended, self._ended = self._ended, []
        return ended

    # -- local happenings -----------------------------------------------------------------

    def open_stream(self, peer: str) -> int | None:
        """Server: a user connected; the new stream's id, or None at ``max_streams``."""
        if self.role != "server":
            raise RuntimeError("only the server opens streams")
        if len(self.streams) >= self.max_streams:
            return None
        if self.highest_id >= MAX_STREAM_ID:
            return None  # 4 billion streams on one WebSocket: refuse rather than reuse an id
        self.highest_id += 1
        stream_id = self.highest_id
        self.streams[stream_id] = state = StreamState(stream_id, self.window, keep_sent=self.resumable)
        self.tuner.add(state.receive_window)
        self.streams_opened += 1
        if self.resumable:
            self._open_text[stream_id] = peer
        if not self._holding:  # else it goes out with the resume, after the OPENs the link lost
            self._outgoing.append(encode_open(stream_id, peer))
        return stream_id

    def confirm_open(self, stream_id: int) -> None:
        """Agent: the service accepted the connection for ``stream_id`` (OPEN_OK)."""
        self.streams[stream_id].confirm_open()
        self._outgoing.append(encode_open_ok(stream_id))

    def send_credit(self, stream_id: int) -> int:
        return self.streams[stream_id].send_credit

    def send_data(self, stream_id: int, payload: bytes | bytearray | memoryview) -> None:
        """Queue DATA; the caller read at most the stream's credit (never more than MAX_DATA)."""
        state = self.streams[stream_id]
        if not (state.open_confirmed or self._gated):
            raise RuntimeError(f"stream {stream_id}: DATA before OPEN_OK")
        size = len(payload)
        state.spend(size)
        frame = encode_data(stream_id, payload)
        log = state.sent_log
        if log is not None:
            log.keep(state.sent - size, size, frame)
        if not self._holding:
            self._outgoing.append(frame)
            self.queued_data += size
        self.bytes_sent += size

    def send_fin(self, stream_id: int) -> bool:
        """Queue FIN; True when the stream is now over (the peer's FIN came before)."""
        state = self.streams[stream_id]
        if not (state.open_confirmed or self._gated):
            raise RuntimeError(f"stream {stream_id}: FIN before OPEN_OK")
        state.send_fin()
        if not self._holding:
            self._outgoing.append(encode_fin(stream_id))
        if state.fin_received:
            self._forget(stream_id, finished=True)
            return True
        return False

    def reset(self, stream_id: int, reason: str) -> None:
        """Queue RST and forget the stream; nothing if it has already ended."""
        state = self.streams.get(stream_id)
        if state is None:
            return
        state.reset()
        if self._holding:
            self._held_resets[stream_id] = reason
        else:
            self._outgoing.append(encode_rst(stream_id, reason))
        self._forget(stream_id)

    def delivered(self, stream_id: int, nbytes: int) -> bool:
        """``nbytes`` received on ``stream_id`` left the process; True when a WINDOW was queued."""
        state = self.streams.get(stream_id)
        if state is None:
            return False  # the stream ended while its last bytes were draining
        if not (state.open_confirmed or self._gated):
            raise RuntimeError(f"stream {stream_id}: bytes delivered before OPEN_OK")
        increment, released = state.delivered(nbytes)
        return self._queue_window(stream_id, increment, released)

    def _queue_window(self, stream_id: int, credit: int, released: int, *, growth: bool = False) -> bool:
        """WINDOW for delivered bytes, or GRANT for growth (v2; WINDOW in v1); RELEASE for a shrink (v2 only)."""
        queued = False
        if credit:
            kind = FrameType.GRANT if growth and self.resumable else FrameType.WINDOW
            self._outgoing.append(encode_window(stream_id, credit, kind))
            queued = True
        if released and self.resumable:
            self._outgoing.append(encode_window(stream_id, released, FrameType.RELEASE))
            queued = True
        return queued

    # -- flow control: windows that follow the link (flow.WindowTuner) ------------------------

    @property
    def receive_window_bytes(self) -> int:
        """What the peer may have in flight toward us on all streams together (the budget's subject)."""
        return sum(state.receive_window.size for state in self.streams.values())

    def flow_new_link(self) -> None:
        """A new WebSocket carries the session: round trips are measured afresh."""
        self.tuner.new_link()
        self._ping_offsets = None

    def flow_sample_begin(self) -> None:
        """A ping goes out now: count what each stream receives until its pong.

        v2: the pong will also prove that the peer received everything written before the ping,
        so the frames below each stream's offset now need not be kept for a resume. Credit alone
        frees them late for a stream of small messages (it goes back a quarter window at a time):
        64 keep-alive HTTP streams held 16 MB of answers the client had long read.
        """
        self.tuner.begin_sample()
        self._ping_offsets = self._written_offsets()

    def flow_sample_end(self, rtt: float) -> bool:
        """The pong came after ``rtt`` seconds: resize the windows of the streams busy meanwhile.

        True when frames were queued."""
        offsets, self._ping_offsets = self._ping_offsets, None
        if offsets:
            self._peer_received(offsets)
        return self._resize(self.tuner.end_sample(rtt))

    def _written_offsets(self) -> dict[int, int] | None:
        """Each stream's sent bytes, if all of them are written (nothing queued) and no resume is under way."""
        if not self.resumable or self._outgoing or self._holding or self._awaiting_hello:
            return None
        return {stream_id: state.sent for stream_id, state in self.streams.items()
                if state.sent_log is not None and state.sent_log.frames}

    def _peer_received(self, offsets: dict[int, int]) -> None:
        streams = self.streams
        for stream_id, offset in offsets.items():
            state = streams.get(stream_id)
            if state is not None and state.sent_log is not None:
                state.sent_log.drop_below(offset)

    def flow_idle(self) -> bool:
        """Every IDLE_SECONDS: idle streams go back to the initial window. True when frames were queued."""
        return self._resize(self.tuner.idle([(sid, s.receive_window) for sid, s in self.streams.items()]))

    def _resize(self, targets: dict[int, int]) -> bool:
        queued = False
        for stream_id, target in targets.items():
            state = self.streams.get(stream_id)
            if state is None or state.fin_received or state.is_reset or not state.open_confirmed:
                continue  # ended; or the agent, before its OPEN_OK (nothing but OPEN_OK or RST may precede it)
            self.tuner.retarget(state.receive_window, target)
            growth, released = state.receive_window.resize(target)
            queued |= self._queue_window(stream_id, growth, released, growth=True)
        return queued

    def close(self) -> list[int]:
        """The WebSocket is gone for good: every stream ends, nothing more goes out. Returns their ids."""
        self.closed = True
        ids = list(self.streams)
        for state in self.streams.values():
            state.reset()
        self.streams.clear()
        self.tuner.clear()
        self._finished.clear()
        self._open_text.clear()
        self._held_resets.clear()
        self._clear_output()
        self._ended.clear()
        return ids

    # -- v2: sessions that outlive their WebSocket -------------------------------------------

    def start(self, hello: Hello) -> None:
        """Server: the first frame on a new WebSocket; for a resumed session our RESUME report follows."""
        if self.role != "server" or not self.resumable:
            raise RuntimeError("only a v2 server names sessions")
        self.hello = hello
        self._clear_output()
        self._outgoing.append(encode_hello(hello))
        if hello.resumed:
            self._send_report()

    def detach(self) -> None:
        """The WebSocket was lost, the session is kept: nothing more goes out until it resumes.

        Sockets may still be read while credit lasts; their DATA is only kept in the log.
        """
        self._holding = True
        self._peer_report = None
        self._ping_offsets = None
        self._clear_output()
        if self.role == "agent":
            self._awaiting_hello = True

    @property
    def finished_unconfirmed(self) -> int:
        """Streams ended by both FINs that the peer may not have seen end (see ``mark``)."""
        return len(self._finished)

    @property
    def can_confirm(self) -> bool:
        """A mark taken now can let finished streams go: there are some, and their frames go out on this link."""
        return bool(self._finished) and not self._holding and not self._awaiting_hello

    def mark(self) -> int:
        """A point in what we have sent; ``peer_caught_up(mark)`` once the peer is known to have processed it.

        The tunnel sends a WebSocket ping after taking a mark: the pong proves the peer
        processed every frame sent before it, so finished streams need not be kept for a resume.
        """
        mark = self._mark
        self._mark += 1
        return mark

    def peer_caught_up(self, mark: int) -> None:
        finished = self._finished
        for stream_id in [sid for sid, (seq, _) in finished.items() if seq <= mark]:
            del finished[stream_id]

    def _send_report(self) -> None:
        self._holding = True
        self._peer_report = []
        progress = [_progress(state) for state in self.streams.values()]
        progress += [_progress(state) for _, state in self._finished.values()]
        self._outgoing.extend(encode_resume(self.highest_id, progress))

    # -- frames from the peer ---------------------------------------------------------------

    def receive(self, message: Message) -> list[Event]:
        """Apply one WebSocket message; raise ProtocolError when the peer broke the protocol."""
        frame = decode(message, self.version)
        kind = frame.type
        stream_id = frame.stream_id
        if self._awaiting_hello and kind is not FrameType.HELLO:
            raise ProtocolError(f"{kind.name} before HELLO")
        if self._peer_report is not None and kind is not FrameType.RESUME:
            raise ProtocolError(f"{kind.name} before the end of the RESUME report")
        if kind is FrameType.OPEN:
            return self._accept_open(stream_id, frame.text)
        state = self.streams.get(stream_id)
        if state is None:
            if kind is FrameType.HELLO:
                return self._hello(parse_hello(frame.body))
            if kind is FrameType.RESUME:
                return self._resume_report(frame.body)
            if stream_id > self.highest_id:
                raise ProtocolError(f"{kind.name} for stream {stream_id}, which was never opened")
            return []  # the stream ended while this frame was in flight: normal
        if not state.open_confirmed and self._gated and kind is not FrameType.OPEN_OK and kind is not FrameType.RST:
            raise ProtocolError(f"{kind.name} on stream {stream_id} before OPEN_OK")
        if kind is FrameType.DATA:
            size = len(frame.body)
            state.received(size)
            self.bytes_received += size
            self.tuner.saw(stream_id, state.receive_window, size)
            return [DataReceived(stream_id, frame.body)]
        if kind is FrameType.WINDOW or kind is FrameType.GRANT:
            blocked = state.send_credit == 0
            state.granted(frame.window_increment, delivered=kind is FrameType.WINDOW)
            return [CreditGranted(stream_id, blocked)]
        if kind is FrameType.RELEASE:
            state.released(frame.window_increment)
            return []
        if kind is FrameType.FIN:
            state.receive_fin()
            if state.fin_sent:
                self._forget(stream_id, finished=True)
                return [EndReceived(stream_id, True)]
            return [EndReceived(stream_id, False)]
        if kind is FrameType.RST:
            before_open = not state.open_confirmed
            state.reset()
            self._forget(stream_id)
            return [StreamReset(stream_id, frame.text, before_open and self._gated)]
        if kind is FrameType.OPEN_OK:
            if self.role == "agent":
                raise ProtocolError(f"OPEN_OK from the server on stream {stream_id}")
            state.confirm_open()
            self._open_text.pop(stream_id, None)
            return [OpenConfirmed(stream_id)]
        raise AssertionError(f"unhandled frame type {kind!r}")  # pragma: no cover (decode knows the types)

    def _accept_open(self, stream_id: int, peer: str) -> list[Event]:
        if self.role == "server":
            raise ProtocolError(f"OPEN from the agent (stream {stream_id}); only the server opens streams")
        if stream_id in self.streams:
            raise ProtocolError(f"OPEN for stream {stream_id}, which is already open")
        if stream_id <= self.highest_id:
            raise ProtocolError(f"OPEN for stream {stream_id}; ids must increase (last was {self.highest_id})")
        self.highest_id = stream_id
        if len(self.streams) >= self.max_streams:
            reason = "too many streams on this agent"
            self._outgoing.append(encode_rst(stream_id, reason))
            return [OpenRefused(stream_id, reason)]
        self.streams[stream_id] = state = StreamState(stream_id, self.window, keep_sent=self.resumable)
        self.tuner.add(state.receive_window)
        self.streams_opened += 1
        return [StreamOpened(stream_id, peer)]

    def _hello(self, hello: Hello) -> list[Event]:
        """Agent: the server's first frame. A session it did not resume is lost with all its streams."""
        if self.role == "server":
            raise ProtocolError("HELLO from the agent; only the server names sessions")
        if not self._awaiting_hello:
            raise ProtocolError("a second HELLO")
        self._awaiting_hello = False
        previous, self.hello = self.hello, hello
        if hello.resumed:
            if previous is None or previous.session_id != hello.session_id:
                raise ProtocolError("HELLO resumes a session this agent did not ask for")
            self._clear_output()  # whatever was queued before HELLO is in the report
            self._send_report()
            return []
        events: list[Event] = [StreamReset(stream_id, NOT_RESUMED, False) for stream_id in self.streams]
        self.streams.clear()
        self.tuner.clear()
        self._finished.clear()
        self._held_resets.clear()
        self._clear_output()
        self._ended.extend(event.stream_id for event in events)
        self.highest_id = 0  # a new session: the server counts from 1 again
        self._holding = False
        events.append(SessionStarted(hello))
        return events

    def _resume_report(self, body: bytes | memoryview) -> list[Event]:
        entries = self._peer_report
        if entries is None:
            raise ProtocolError("RESUME outside a resume")
        report = parse_resume(body)
        entries.extend(report.streams)
        if report.more:
            return []
        self._peer_report = None
        return self._reconcile(report.highest_id, {entry.stream_id: entry for entry in entries})

    def _reconcile(self, peer_highest: int, peer: dict[int, StreamProgress]) -> list[Event]:
        """Both reports are in: send again what the peer is missing; reset what it no longer knows."""
        if self.role == "agent" and peer_highest < self.highest_id:
            raise ProtocolError(f"RESUME: the server's highest stream id {peer_highest} is below ours")
        self._holding = False
        events: list[Event] = []
        retransmitted = self.bytes_retransmitted
        kept = 0
        for stream_id, reason in self._held_resets.items():
            if stream_id in peer:  # else the peer never heard of it, or it resets it itself (not in our report)
                self._outgoing.append(encode_rst(stream_id, reason))
        self._held_resets.clear()
        for stream_id, state in list(self.streams.items()):
            entry = peer.get(stream_id)
            if entry is None:
                if self.role == "server" and stream_id > peer_highest:
                    self._redo_open(state)  # the link lost its OPEN, or it was opened while holding
                    kept += 1
                    continue
                before_open = self._gated and not state.open_confirmed
                state.reset()
                self._forget(stream_id)
                events.append(StreamReset(stream_id, LOST_WHILE_DETACHED, before_open))
                continue
            kept += 1
            if self._gated and entry.open_confirmed and not state.open_confirmed:
                state.confirm_open()  # the OPEN_OK was lost with the link; the report says it
                self._open_text.pop(stream_id, None)
                events.append(OpenConfirmed(stream_id))
            blocked = state.send_credit == 0
            self._catch_up(state, entry)
            if blocked and state.send_credit:
                events.append(CreditGranted(stream_id, True))
        for stream_id, (_, state) in list(self._finished.items()):
            del self._finished[stream_id]
            entry = peer.get(stream_id)
            if entry is not None:  # the peer still waits for our last bytes or FIN: keep it until it has them
                self._catch_up(state, entry)
                self._finished[stream_id] = (self._mark, state)
        events.append(SessionResumed(kept, self.bytes_retransmitted - retransmitted))
        return events

    def _catch_up(self, state: StreamState, entry: StreamProgress) -> None:
        """Take the peer's credit as it is now and send it what it is missing of this stream."""
        stream_id = state.stream_id
        if entry.received > state.sent:
            raise ProtocolError(f"RESUME: stream {stream_id}: {entry.received} bytes received of {state.sent} sent")
        if entry.limit < state.sent:
            raise ProtocolError(f"RESUME: stream {stream_id}: credit limit {entry.limit} below {state.sent} sent")
        state.send_credit = entry.limit - state.sent
        self._send_from(state, entry.received)
        if state.fin_sent and not entry.fin_received:
            self._outgoing.append(encode_fin(stream_id))

    def _send_from(self, state: StreamState, offset: int) -> None:
        log = state.sent_log
        if log is None or offset == state.sent:
            return
        try:
            kept = log.since(offset)
        except ValueError:
            raise ProtocolError(f"RESUME: stream {state.stream_id}: bytes from {offset} were credited back "
                                "already") from None
        log.drop_below(offset)
        for skip, frame in kept:
            resend = data_tail(frame, skip) if skip else frame
            self._outgoing.append(resend)
        self.bytes_retransmitted += state.sent - offset

    def _redo_open(self, state: StreamState) -> None:
        stream_id = state.stream_id
        self._outgoing.append(encode_open(stream_id, self._open_text.get(stream_id, "")))
        self._send_from(state, 0)
        if state.fin_sent:
            self._outgoing.append(encode_fin(stream_id))

    def _forget(self, stream_id: int, *, finished: bool = False) -> None:
        state = self.streams.pop(stream_id)
        self.tuner.remove(state.receive_window)
        self._ended.append(stream_id)
        if self.resumable:
            self._open_text.pop(stream_id, None)
            if finished:
                self._finished[stream_id] = (self._mark, state)


def _progress(state: StreamState) -> StreamProgress:
    window = state.receive_window
    return StreamProgress(state.stream_id, window.received_bytes, window.limit, state.fin_received,
                          state.open_confirmed)
