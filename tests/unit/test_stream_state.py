"""StreamState: credit both ways, batched WINDOW, FIN/RST — driven directly, no sockets."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from reverse_websockify.flow import RETURN_SHIFT
from reverse_websockify.protocol import INITIAL_WINDOW, MAX_CREDIT, MAX_DATA, ProtocolError
from reverse_websockify.stream_state import StreamState

W = INITIAL_WINDOW
HALF = W // 2
BATCH = W >> RETURN_SHIFT  # credit goes back in batches of this much


def test_initial_state() -> None:
    s = StreamState(7)
    assert s.stream_id == 7
    assert s.window == s.send_credit == s.recv_allowance == INITIAL_WINDOW
    assert s.delivered_unreturned == 0
    assert not (s.fin_sent or s.fin_received or s.is_reset or s.finished or s.open_confirmed)


def test_custom_window() -> None:
    s = StreamState(1, window=100)
    assert s.send_credit == s.recv_allowance == 100


# -- sending: credit spent and granted ---------------------------------------------------


def test_spend_reduces_credit_down_to_zero() -> None:
    s = StreamState(1)
    s.spend(MAX_DATA)
    assert s.send_credit == W - MAX_DATA
    s.spend(W - MAX_DATA)
    assert s.send_credit == 0


@pytest.mark.parametrize("already", [0, 1000, W])
def test_spend_beyond_credit_raises(already: int) -> None:
    s = StreamState(1)
    if already:
        s.spend(already)
    with pytest.raises(RuntimeError, match="exceed credit"):
        s.spend(W - already + 1)
    assert s.send_credit == W - already  # unchanged by the refused spend


@pytest.mark.parametrize("size", [0, -1])
def test_spend_of_nothing_raises(size: int) -> None:
    with pytest.raises(RuntimeError):
        StreamState(1).spend(size)


def test_granted_restores_credit() -> None:
    s = StreamState(1)
    s.spend(W)
    s.granted(HALF)
    assert s.send_credit == HALF
    s.spend(HALF)
    s.granted(W)
    assert s.send_credit == W


def test_granted_up_to_max_credit_is_fine() -> None:
    s = StreamState(1)
    s.granted(MAX_CREDIT - W)
    assert s.send_credit == MAX_CREDIT


@pytest.mark.parametrize("increment", [MAX_CREDIT - W + 1, MAX_CREDIT])
def test_window_raising_credit_above_max_credit_is_a_protocol_error(increment: int) -> None:
    with pytest.raises(ProtocolError, match="above"):
        StreamState(3).granted(increment)


def test_repeated_windows_overflowing_max_credit_is_a_protocol_error() -> None:
    s = StreamState(3)
    with pytest.raises(ProtocolError):
        for _ in range(MAX_CREDIT // W + 1):
            s.granted(W)


def test_spend_after_fin_or_reset_raises() -> None:
    s = StreamState(1)
    s.send_fin()
    with pytest.raises(RuntimeError, match="after FIN"):
        s.spend(1)
    s = StreamState(1)
    s.reset()
    with pytest.raises(RuntimeError):
        s.spend(1)


def test_fin_sent_twice_raises() -> None:
    s = StreamState(1)
    s.send_fin()
    with pytest.raises(RuntimeError, match="twice"):
        s.send_fin()


# -- receiving: allowance, delivery, batched WINDOW ------------------------------------------


def test_received_within_allowance() -> None:
    s = StreamState(1)
    s.received(W - 1)
    s.received(1)
    assert s.recv_allowance == 0


@pytest.mark.parametrize("first", [0, 1, W - 1, W])
def test_received_beyond_allowance_is_a_protocol_error(first: int) -> None:
    s = StreamState(5)
    if first:
        s.received(first)
    with pytest.raises(ProtocolError, match="exceeds the granted credit") as info:
        s.received(W - first + 1)
    assert "stream 5" in str(info.value)


def test_delivered_batches_credit_until_a_quarter_window() -> None:
    s = StreamState(1)
    s.received(W)
    assert s.delivered(BATCH - 1)[0] == 0
    assert s.recv_allowance == 0  # nothing returned yet
    assert s.delivered(1)[0] == BATCH  # reaches the batch: the whole accumulated amount
    assert s.recv_allowance == BATCH
    assert s.delivered_unreturned == 0
    assert s.delivered(BATCH - 1)[0] == 0
    assert s.delivered(1)[0] == BATCH
    assert s.recv_allowance == 2 * BATCH


def test_delivered_returns_everything_accumulated_in_one_increment() -> None:
    s = StreamState(1)
    s.received(W)
    for _ in range(3):
        assert s.delivered(BATCH // 4)[0] == 0
    increment = s.delivered(BATCH)[0]
    assert increment == 3 * (BATCH // 4) + BATCH
    assert s.recv_allowance == increment


def test_small_deliveries_add_up() -> None:
    s = StreamState(1, window=12)
    s.received(12)
    assert [s.delivered(1)[0] for _ in range(12)] == [0, 0, 3, 0, 0, 3, 0, 0, 3, 0, 0, 3]
    assert s.recv_allowance == 12


def test_allowance_grows_so_the_peer_can_send_again() -> None:
    s = StreamState(1)
    s.received(W)
    with pytest.raises(ProtocolError):
        StreamState(1).received(W + 1)
    s.delivered(W)
    s.received(W)  # the full window again: allowed after the WINDOW
    assert s.recv_allowance == 0


def test_data_after_fin_is_a_protocol_error() -> None:
    s = StreamState(9)
    s.received(10)
    s.receive_fin()
    with pytest.raises(ProtocolError, match="DATA after FIN on stream 9"):
        s.received(1)


def test_second_fin_is_a_protocol_error() -> None:
    s = StreamState(9)
    s.receive_fin()
    with pytest.raises(ProtocolError, match="second FIN on stream 9"):
        s.receive_fin()


def test_no_credit_returned_after_fin_received() -> None:
    s = StreamState(1)
    s.received(W)
    s.receive_fin()
    assert s.delivered(W)[0] == 0
    assert s.recv_allowance == 0


def test_no_credit_returned_after_reset() -> None:
    s = StreamState(1)
    s.received(W)
    s.reset()
    assert s.delivered(W)[0] == 0


def test_fin_does_not_stop_the_other_direction() -> None:
    s = StreamState(1)
    s.receive_fin()
    s.spend(100)  # we may still send after the peer's FIN (half-close)
    s.granted(100)
    s.send_fin()
    assert s.finished


# -- OPEN_OK (server side) ------------------------------------------------------------------


def test_open_ok_once() -> None:
    s = StreamState(4)
    assert not s.open_confirmed
    s.confirm_open()
    assert s.open_confirmed


def test_second_open_ok_is_a_protocol_error() -> None:
    s = StreamState(4)
    s.confirm_open()
    with pytest.raises(ProtocolError, match="second OPEN_OK on stream 4"):
        s.confirm_open()


# -- finished ------------------------------------------------------------------------------


def test_finished_needs_both_fins() -> None:
    s = StreamState(1)
    s.send_fin()
    assert not s.finished
    s.receive_fin()
    assert s.finished

    s = StreamState(2)
    s.receive_fin()
    assert not s.finished
    s.send_fin()
    assert s.finished


def test_reset_finishes_at_once() -> None:
    s = StreamState(1)
    s.reset()
    assert s.finished


# -- a sender and a receiver exchanging frames -----------------------------------------------

DATA, FIN = "DATA", "FIN"


class Pair(RuleBasedStateMachine):
    """Two StreamStates, A and B, each sending to the other through an ordered pipe.

    Each direction's pipe carries DATA and FIN (in order, as the WebSocket
    does); WINDOW travels the other way. Received bytes wait in a buffer
    (the socket) until some are "delivered". The peers follow the rules
    (never spend more than their credit), so neither may ever raise.
    """

    def __init__(self) -> None:
        super().__init__()
        self.side: dict[str, StreamState] = {}

    @initialize(window=st.one_of(st.integers(1, 64), st.sampled_from([2, 3, 1000, INITIAL_WINDOW])))
    def start(self, window: int) -> None:
        self.window = window
        self.side = {"A": StreamState(1, window), "B": StreamState(1, window)}
        # per sending side: frames in flight to the peer, bytes the peer holds undelivered,
        # WINDOW increments in flight back to the sender, totals
        self.pipe: dict[str, deque[tuple[str, int]]] = {"A": deque(), "B": deque()}
        self.undelivered = {"A": 0, "B": 0}
        self.windows: dict[str, deque[int]] = {"A": deque(), "B": deque()}
        self.sent = {"A": 0, "B": 0}
        self.delivered_total = {"A": 0, "B": 0}

    @staticmethod
    def peer(name: str) -> str:
        return "B" if name == "A" else "A"

    # the sender
    @rule(who=st.sampled_from("AB"), data=st.data())
    def send_data(self, who: str, data: st.DataObject) -> None:
        s = self.side[who]
        if s.fin_sent or s.send_credit == 0:
            return
        size = data.draw(st.integers(1, min(s.send_credit, MAX_DATA)), label="size")
        s.spend(size)
        self.sent[who] += size
        self.pipe[who].append((DATA, size))

    @rule(who=st.sampled_from("AB"))
    def send_fin(self, who: str) -> None:
        s = self.side[who]
        if not s.fin_sent:
            s.send_fin()
            self.pipe[who].append((FIN, 0))

    # the network
    @rule(who=st.sampled_from("AB"))
    def arrive(self, who: str) -> None:
        """The next frame from ``who`` reaches its peer."""
        if not self.pipe[who]:
            return
        kind, size = self.pipe[who].popleft()
        receiver = self.side[self.peer(who)]
        if kind == DATA:
            receiver.received(size)  # a correct sender: must never raise
            self.undelivered[who] += size
        else:
            receiver.receive_fin()

    @rule(who=st.sampled_from("AB"), data=st.data())
    def deliver(self, who: str, data: st.DataObject) -> None:
        """The peer writes some of ``who``'s bytes to its socket and they drain."""
        if not self.undelivered[who]:
            return
        size = data.draw(st.integers(1, self.undelivered[who]), label="delivered")
        self.undelivered[who] -= size
        self.delivered_total[who] += size
        increment = self.side[self.peer(who)].delivered(size)[0]
        assert increment >= 0
        if increment:
            self.windows[who].append(increment)

    @rule(who=st.sampled_from("AB"))
    def window_arrives(self, who: str) -> None:
        """The oldest WINDOW for ``who`` reaches it."""
        if self.windows[who]:
            self.side[who].granted(self.windows[who].popleft())

    # what must always hold
    def in_flight(self, who: str) -> int:
        """Bytes ``who`` sent that its peer has not yet returned credit for."""
        data = sum(size for kind, size in self.pipe[who] if kind == DATA)
        return data + self.undelivered[who] + self.side[self.peer(who)].delivered_unreturned

    @invariant()
    def bytes_in_flight_never_exceed_the_window(self) -> None:
        for who in self.side:
            assert self.in_flight(who) <= self.window
            assert 0 <= self.side[who].send_credit <= self.window

    @invariant()
    def credit_is_conserved(self) -> None:
        for who in self.side:
            s, r = self.side[who], self.side[self.peer(who)]
            pending_windows = sum(self.windows[who])
            assert s.send_credit + self.in_flight(who) + pending_windows == self.window
            data = sum(size for kind, size in self.pipe[who] if kind == DATA)
            # the receiver always allows at least what is in flight towards it
            assert r.recv_allowance == s.send_credit + data + pending_windows

    @invariant()
    def never_stuck(self) -> None:
        """A sender out of credit always has credit coming once everything is delivered."""
        for who in self.side:
            s, r = self.side[who], self.side[self.peer(who)]
            quiet = not self.pipe[who] and not self.undelivered[who] and not self.windows[who]
            if quiet and not r.fin_received:
                # all delivered, no WINDOW on the way: the sender must still have credit
                assert s.send_credit > 0, f"{who} stuck with {r.delivered_unreturned} bytes unreturned"
                assert r.delivered_unreturned < max(self.window // 2, 1)

    @invariant()
    def finished_after_both_fins_arrived(self) -> None:
        a, b = self.side["A"], self.side["B"]
        assert a.finished == (a.fin_sent and a.fin_received)
        assert b.finished == (b.fin_sent and b.fin_received)

    @precondition(lambda self: bool(self.side))
    @rule()
    def drain_everything(self) -> None:
        """Let the network settle: every frame arrives and is delivered; FIN ends the batching."""
        for _ in range(10_000):
            progressed = False
            for who in "AB":
                while self.pipe[who]:
                    self.arrive(who)
                    progressed = True
                if self.undelivered[who]:
                    size = self.undelivered[who]
                    self.undelivered[who] = 0
                    self.delivered_total[who] += size
                    increment = self.side[self.peer(who)].delivered(size)[0]
                    if increment:
                        self.windows[who].append(increment)
                    progressed = True
                while self.windows[who]:
                    self.window_arrives(who)
                    progressed = True
            if not progressed:
                break
        for who in "AB":
            assert self.delivered_total[who] == self.sent[who]


Pair.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestPair = Pair.TestCase
