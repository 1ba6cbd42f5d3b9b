"""wsframes: our binary framing, read the way a BufferedProtocol is read, without sockets.

The reader plays the kernel: each read copies at most what the buffer offered by
``get_buffer`` holds, from a byte stream cut at places hypothesis picks. Whatever
the cuts, binary messages come out whole and in order, every other frame goes to
websockets whole, and websockets' own parser agrees with our writer.
"""

from __future__ import annotations

from typing import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from reverse_websockify.wsframes import IncomingFrames, frame_binary, pong_for

MAX = 1 << 20


class Receiver:
    def __init__(self, *, masked: bool, open_until: int | None = None) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.open_until = open_until  # websockets "closes" after this many other frames
        self.frames = IncomingFrames(masked=masked, max_size=MAX, on_message=self.message, on_other=self.other)

    def message(self, data: bytes | bytearray) -> None:
        self.items.append(("message", bytes(data)))

    def other(self, data: bytes) -> bool:
        self.items.append(("other", data))
        others = sum(1 for kind, _ in self.items if kind == "other")
        return self.open_until is None or others < self.open_until

    def read(self, stream: bytes, cuts: Iterable[int] = ()) -> None:
        """Deliver ``stream`` as the kernel would, never more per read than the buffer or the next cut allows."""
        pos, limits = 0, sorted(set(c for c in cuts if 0 < c < len(stream)))
        while pos < len(stream):
            buffer = self.frames.get_buffer()
            assert len(buffer) > 0
            stop = next((c for c in limits if c > pos), len(stream))
            n = min(len(buffer), stop - pos)
            buffer[:n] = stream[pos : pos + n]
            self.frames.buffer_updated(n)
            pos += n


def wire(messages: list[bytes], *, mask: bool) -> bytes:
    return b"".join(frame_binary(messages, mask=mask))


def parsed_by_websockets(data: bytes, *, mask: bool) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=mask, max_size=MAX)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("size", [0, 1, 125, 126, 4097, 65535, 65536, 256 * 1024 + 5])
def test_websockets_reads_what_we_write(mask: bool, size: int) -> None:
    message = bytes(range(256)) * (size // 256) + bytes(size % 256)
    (frame,) = parsed_by_websockets(wire([message], mask=mask), mask=mask)
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.BINARY, True, message)


def test_each_masked_frame_has_its_own_key() -> None:
    pieces = frame_binary([b"same", b"same"], mask=True)
    assert pieces[0][2:6] != pieces[2][2:6]


sizes = st.lists(st.integers(0, 300_000), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(sizes=sizes, mask=st.booleans(), cuts=st.lists(st.integers(0, 2_000_000), max_size=12))
def test_messages_come_out_whole_and_in_order_however_the_reads_fall(sizes: list[int], mask: bool,
                                                                      cuts: list[int]) -> None:
    messages = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    receiver = Receiver(masked=mask)
    receiver.read(wire(messages, mask=mask), cuts)
    assert receiver.items == [("message", m) for m in messages]


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 400_000), max_size=8), mask=st.booleans())
def test_other_frames_go_to_websockets_whole_between_messages(cuts: list[int], mask: bool) -> None:
    ping = Frame(Opcode.PING, b"are you there").serialize(mask=mask)
    text = Frame(Opcode.TEXT, b"hello").serialize(mask=mask)
    first = Frame(Opcode.BINARY, b"frag", fin=False).serialize(mask=mask)
    last = Frame(Opcode.CONT, b"mented").serialize(mask=mask)
    big = b"x" * 200_000
    stream = wire([b"a"], mask=mask) + ping + wire([big], mask=mask) + text + first + ping + last + wire([b"b"], mask=mask)
    receiver = Receiver(masked=mask)
    receiver.read(stream, cuts)
    assert receiver.items == [("message", b"a"), ("other", ping), ("message", big), ("other", text),
                              ("other", first), ("other", ping), ("other", last), ("message", b"b")]


def test_a_binary_frame_inside_a_fragmented_message_goes_to_websockets() -> None:
    """websockets then refuses it (a new message while one is unfinished): the sequence is its to check."""
    first = Frame(Opcode.BINARY, b"frag", fin=False).serialize(mask=True)
    stray = wire([b"stray"], mask=True)
    receiver = Receiver(masked=True)
    receiver.read(first + stray)
    assert receiver.items == [("other", first), ("other", stray)]


@pytest.mark.parametrize("mask_on_wire", [True, False])
def test_wrong_masking_and_oversized_frames_hand_everything_to_websockets(mask_on_wire: bool) -> None:
    wrong = wire([b"abc"], mask=mask_on_wire) + b"more bytes"
    receiver = Receiver(masked=not mask_on_wire)
    receiver.read(wrong)
    assert receiver.frames.escaped and b"".join(d for _, d in receiver.items) == wrong
    receiver.read(b"later")
    assert receiver.items[-1] == ("other", b"later")

    oversized = b"\x82\xff" + (MAX + 1).to_bytes(8, "big") + b"\0\0\0\0"
    receiver = Receiver(masked=True)
    receiver.read(wire([b"ok"], mask=True) + oversized)
    assert receiver.items[0] == ("message", b"ok")
    assert receiver.frames.escaped and receiver.items[1] == ("other", oversized)


def test_once_websockets_closes_it_gets_every_further_byte() -> None:
    close = Frame(Opcode.CLOSE, b"\x03\xe8bye").serialize(mask=True)
    after = wire([b"late"], mask=True)
    receiver = Receiver(masked=True, open_until=1)
    receiver.read(close + after)
    assert receiver.items == [("other", close), ("other", after)]


def test_what_followed_the_handshake_is_fed_in_and_a_large_payload_then_read_in_place() -> None:
    big = bytes(range(256)) * 1000
    stream = wire([b"hello", big], mask=False)
    receiver = Receiver(masked=False)
    receiver.frames.feed(stream[:20])  # the HELLO and the start of the next frame came with the response
    receiver.read(stream[20:])
    assert receiver.items == [("message", b"hello"), ("message", big)]


def serialized(frame: Frame, *, mask: bool) -> bytes:
    return frame.serialize(mask=mask, extensions=[])


@pytest.mark.parametrize("from_client", [True, False])
@pytest.mark.parametrize("payload", [b"", b"\x00\x01keepalive", bytes(range(125))])
def test_a_ping_is_answered_with_a_pong_that_websockets_reads(from_client: bool, payload: bytes) -> None:
    ping = serialized(Frame(Opcode.PING, payload), mask=from_client)  # a client's ping is masked
    pong = pong_for(ping, mask=not from_client)
    assert pong is not None
    (frame,) = parsed_by_websockets(pong, mask=not from_client)
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.PONG, True, payload)


@pytest.mark.parametrize("frame", [
    serialized(Frame(Opcode.PONG, b"x"), mask=True),  # not a ping
    bytes((0xC9, 0x81)) + bytes(4 + 1),  # a reserved bit set: websockets refuses it
    bytes((0x09, 0x81)) + bytes(4 + 1),  # a fragmented control frame: the same
    bytes((0x89, 0x80 | 126)) + (126).to_bytes(2, "big") + bytes(4 + 126),  # longer than a control frame may be
    bytes((0x89, 0x85)) + bytes(4 + 3),  # shorter than its header says
])
def test_anything_but_a_plain_ping_goes_to_websockets(frame: bytes) -> None:
    assert pong_for(frame, mask=False) is None
