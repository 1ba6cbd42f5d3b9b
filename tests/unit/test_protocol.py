"""The frame codec (reverse_websockify.protocol): round-trips, every malformed input, fuzzing.

Pure: no sockets, no event loop.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reverse_websockify.protocol import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_CREDIT,
    MAX_DATA,
    MAX_MESSAGE,
    MAX_REASON,
    MAX_STREAM_ID,
    SUBPROTOCOL,
    Frame,
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

stream_ids = st.integers(min_value=1, max_value=MAX_STREAM_ID)
# Sizes across the whole range, with the edges drawn often.
payload_sizes = st.one_of(st.sampled_from([1, 2, MAX_DATA - 1, MAX_DATA]), st.integers(1, MAX_DATA))
increments = st.one_of(st.sampled_from([1, INITIAL_WINDOW, MAX_CREDIT - 1, MAX_CREDIT]), st.integers(1, MAX_CREDIT))


def short_texts() -> st.SearchStrategy[str]:
    """UTF-8 texts that fit MAX_REASON once encoded (4 bytes per code point at most)."""
    return st.text(max_size=MAX_REASON // 4)


def header(kind: int, stream_id: int) -> bytes:
    return struct.pack(">BI", kind, stream_id)


def reencode(frame: Frame) -> bytes:
    """Encode a decoded frame again with the public encoders (raw bytes where text is not UTF-8)."""
    kind, sid, body = frame.type, frame.stream_id, bytes(frame.body)
    if kind is FrameType.DATA:
        return encode_data(sid, body)
    if kind is FrameType.WINDOW:
        return encode_window(sid, frame.window_increment)
    if kind is FrameType.OPEN_OK:
        return encode_open_ok(sid)
    if kind is FrameType.FIN:
        return encode_fin(sid)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return header(kind, sid) + body
    return encode_open(sid, text) if kind is FrameType.OPEN else encode_rst(sid, text)


# -- constants -------------------------------------------------------------------


def test_constants_are_consistent() -> None:
    assert HEADER_SIZE == 5
    assert SUBPROTOCOL == "reverse-websockify.v1"
    assert MAX_MESSAGE == HEADER_SIZE + MAX_DATA
    assert MAX_STREAM_ID == 2**32 - 1
    assert 0 < MAX_DATA <= INITIAL_WINDOW <= MAX_CREDIT
    assert [t.value for t in FrameType] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert [t.name for t in FrameType] == ["OPEN", "OPEN_OK", "DATA", "WINDOW", "FIN", "RST", "HELLO", "RESUME",
                                           "GRANT", "RELEASE"]


# -- round trips -----------------------------------------------------------------


@given(stream_id=stream_ids, peer=short_texts())
@example(stream_id=1, peer="")
@example(stream_id=MAX_STREAM_ID, peer="[2001:db8::1]:54321")
def test_open_round_trip(stream_id: int, peer: str) -> None:
    wire = encode_open(stream_id, peer)
    assert wire[:HEADER_SIZE] == header(1, stream_id)
    frame = decode(wire)
    assert frame.type is FrameType.OPEN
    assert frame.stream_id == stream_id
    assert frame.text == peer
    assert bytes(frame.body) == peer.encode()


@given(stream_id=stream_ids)
def test_open_ok_round_trip(stream_id: int) -> None:
    wire = encode_open_ok(stream_id)
    assert wire == header(2, stream_id)
    assert decode(wire) == Frame(FrameType.OPEN_OK, stream_id, b"")


@given(stream_id=stream_ids, size=payload_sizes, data=st.data())
@settings(max_examples=60)
def test_data_round_trip(stream_id: int, size: int, data: st.DataObject) -> None:
    fill = data.draw(st.binary(min_size=1, max_size=64))
    payload = (fill * (size // len(fill) + 1))[:size]
    wire = encode_data(stream_id, payload)
    assert len(wire) == HEADER_SIZE + size <= MAX_MESSAGE
    frame = decode(wire)
    assert frame.type is FrameType.DATA
    assert frame.stream_id == stream_id
    assert bytes(frame.body) == payload


@given(stream_id=stream_ids, payload=st.binary(min_size=1, max_size=2048))
def test_data_round_trip_arbitrary_bytes(stream_id: int, payload: bytes) -> None:
    assert bytes(decode(encode_data(stream_id, payload)).body) == payload


@given(stream_id=stream_ids, increment=increments)
def test_window_round_trip(stream_id: int, increment: int) -> None:
    wire = encode_window(stream_id, increment)
    assert wire == header(4, stream_id) + struct.pack(">I", increment)
    frame = decode(wire)
    assert frame.type is FrameType.WINDOW
    assert frame.stream_id == stream_id
    assert frame.window_increment == increment


@given(stream_id=stream_ids)
def test_fin_round_trip(stream_id: int) -> None:
    wire = encode_fin(stream_id)
    assert wire == header(5, stream_id)
    assert decode(wire) == Frame(FrameType.FIN, stream_id, b"")


@given(stream_id=stream_ids, reason=short_texts())
@example(stream_id=7, reason="dial 127.0.0.1:36000 failed: Connection refused")
@example(stream_id=7, reason="")
def test_rst_round_trip(stream_id: int, reason: str) -> None:
    frame = decode(encode_rst(stream_id, reason))
    assert frame.type is FrameType.RST
    assert frame.stream_id == stream_id
    assert frame.text == reason


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_every_bytes_like(kind: type) -> None:
    frame = decode(kind(encode_data(3, b"hello")))
    assert (frame.type, frame.stream_id, bytes(frame.body)) == (FrameType.DATA, 3, b"hello")
    frame = decode(kind(encode_window(3, 10)))
    assert frame.window_increment == 10


@pytest.mark.parametrize("encode", [encode_open, encode_rst])
def test_long_text_is_truncated_to_max_reason(encode) -> None:  # type: ignore[no-untyped-def]
    wire = encode(9, "x" * (MAX_REASON + 100))
    assert len(wire) == HEADER_SIZE + MAX_REASON
    frame = decode(wire)
    assert frame.text == "x" * MAX_REASON


@pytest.mark.parametrize("encode", [encode_open, encode_rst])
def test_truncated_multibyte_text_still_decodes(encode) -> None:  # type: ignore[no-untyped-def]
    # 1 + 2 * 600 bytes: a cut at MAX_REASON would fall inside a 2-byte code point,
    # so the encoder stops one byte short and the text stays valid UTF-8.
    frame = decode(encode(9, "a" + "é" * 600))
    assert len(frame.body) == MAX_REASON - 1
    assert frame.text == "a" + "é" * 511


# -- malformed input: ProtocolError naming the problem ----------------------------


def expect_error(message: bytes | str, *words: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(message)
    text = str(info.value)
    for word in words:
        assert word.lower() in text.lower(), f"{word!r} not in {text!r}"
    assert "\n" not in text
    return info.value


@pytest.mark.parametrize("message", ["", "hello", "\x03\x00\x00\x00\x01x"])
def test_text_message(message: str) -> None:
    expect_error(message, "text", "binary")


@pytest.mark.parametrize("size", range(HEADER_SIZE))
def test_short_header(size: int) -> None:
    expect_error(bytes([3, 0, 0, 0, 1])[:size], f"{size} bytes", "header")


@pytest.mark.parametrize("kind", [0, 7, 8, 9, 10, 100, 255])
def test_unknown_type(kind: int) -> None:
    expect_error(header(kind, 1) + b"body", "unknown frame type", str(kind))


@pytest.mark.parametrize("kind", [t for t in FrameType if t < FrameType.HELLO])
def test_stream_id_zero(kind: FrameType) -> None:
    body = struct.pack(">I", 1) if kind is FrameType.WINDOW else (b"x" if kind is FrameType.DATA else b"")
    expect_error(header(kind, 0) + body, kind.name, "stream id 0")


def test_empty_data() -> None:
    expect_error(header(3, 42), "empty DATA", "42")


@pytest.mark.parametrize("extra", [1, 2, 1000])
def test_data_over_max_data(extra: int) -> None:
    expect_error(header(3, 42) + bytes(MAX_DATA + extra), "DATA", str(MAX_DATA + extra), str(MAX_DATA))


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 8])
def test_window_body_not_four_bytes(size: int) -> None:
    expect_error(header(4, 6) + b"\x01" * size, "WINDOW", f"{size} bytes", "4 expected")


def test_window_zero() -> None:
    expect_error(header(4, 6) + struct.pack(">I", 0), "WINDOW of 0", "6")


@pytest.mark.parametrize("increment", [MAX_CREDIT + 1, 2**31, 2**32 - 1])
def test_window_over_max_credit(increment: int) -> None:
    expect_error(header(4, 6) + struct.pack(">I", increment), "WINDOW", str(increment))


@pytest.mark.parametrize("kind", [FrameType.OPEN_OK, FrameType.FIN])
@pytest.mark.parametrize("size", [1, 4, 100])
def test_empty_frames_with_a_body(kind: FrameType, size: int) -> None:
    expect_error(header(kind, 8) + b"z" * size, kind.name, f"{size}-byte body")


@pytest.mark.parametrize("kind", [FrameType.OPEN, FrameType.RST])
@pytest.mark.parametrize("size", [MAX_REASON + 1, MAX_REASON * 4])
def test_text_over_max_reason(kind: FrameType, size: int) -> None:
    expect_error(header(kind, 8) + b"r" * size, kind.name, f"{size} bytes")


@pytest.mark.parametrize("kind", [FrameType.OPEN, FrameType.RST])
def test_text_of_max_reason_is_accepted(kind: FrameType) -> None:
    assert len(decode(header(kind, 8) + b"r" * MAX_REASON).body) == MAX_REASON


@pytest.mark.parametrize("kind", [FrameType.OPEN, FrameType.RST])
def test_text_that_is_not_utf8_is_accepted(kind: FrameType) -> None:
    # The body is for logs only: invalid UTF-8 is shown with replacement characters.
    frame = decode(header(kind, 8) + b"\xff\xfe ok")
    assert frame.text == "\ufffd\ufffd ok"


# -- fuzzing -------------------------------------------------------------------------


def near_valid_frames() -> st.SearchStrategy[bytes]:
    """Mostly well-formed headers with arbitrary bodies: reaches every check in decode()."""
    return st.builds(
        lambda kind, sid, body: header(kind, sid) + body,
        st.one_of(st.integers(0, 8), st.integers(0, 255)),
        st.one_of(st.sampled_from([0, 1, MAX_STREAM_ID]), st.integers(0, MAX_STREAM_ID)),
        st.one_of(
            st.binary(max_size=8),
            st.binary(min_size=MAX_REASON - 2, max_size=MAX_REASON + 2),
            st.integers(0, 2**32 - 1).map(lambda n: struct.pack(">I", n)),
        ),
    )


@given(message=st.one_of(st.binary(max_size=64), near_valid_frames()))
@settings(max_examples=1500)
@example(message=b"")
@example(message=header(3, 1) + bytes(MAX_DATA + 1))
@example(message=header(3, 1) + bytes(MAX_DATA))
def test_decode_fuzz(message: bytes) -> None:
    try:
        frame = decode(message)
    except ProtocolError:
        return
    assert isinstance(frame.type, FrameType)
    assert 1 <= frame.stream_id <= MAX_STREAM_ID
    assert reencode(frame) == message


@given(message=st.text(max_size=20))
def test_decode_fuzz_text(message: str) -> None:
    with pytest.raises(ProtocolError):
        decode(message)


# -- encoders reject out-of-range input ----------------------------------------------


@pytest.mark.parametrize("size", [0, MAX_DATA + 1, MAX_DATA * 2])
def test_encode_data_size_out_of_range(size: int) -> None:
    with pytest.raises(ValueError, match=str(size)):
        encode_data(1, bytes(size))


@pytest.mark.parametrize("increment", [0, -1, MAX_CREDIT + 1, 2**32, 2**40])
def test_encode_window_out_of_range(increment: int) -> None:
    with pytest.raises(ValueError, match="WINDOW"):
        encode_window(1, increment)


ENCODERS = [
    pytest.param(lambda sid: encode_open(sid, "peer"), id="open"),
    pytest.param(encode_open_ok, id="open_ok"),
    pytest.param(lambda sid: encode_data(sid, b"x"), id="data"),
    pytest.param(lambda sid: encode_window(sid, 1), id="window"),
    pytest.param(encode_fin, id="fin"),
    pytest.param(lambda sid: encode_rst(sid, "reason"), id="rst"),
]


@pytest.mark.parametrize("encode", ENCODERS)
def test_encoders_at_stream_id_bounds(encode) -> None:  # type: ignore[no-untyped-def]
    for sid in (1, MAX_STREAM_ID):
        assert decode(encode(sid)).stream_id == sid


def test_encoders_reject_stream_id_out_of_range() -> None:
    wrong = []
    for param in ENCODERS:
        encode = param.values[0]
        for stream_id in (0, -1, MAX_STREAM_ID + 1):
            try:
                encode(stream_id)
            except ValueError:
                continue
            except Exception as exc:  # noqa: BLE001 - reported below
                wrong.append(f"{param.id}({stream_id}) raised {type(exc).__name__}")
            else:
                wrong.append(f"{param.id}({stream_id}) returned a frame")
    assert not wrong, "; ".join(wrong)


# -- the worked example in docs/protocol.md stays true ---------------------------------------


def test_docs_worked_example_decodes() -> None:
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
    if not doc.exists():
        pytest.skip("docs/protocol.md not present")
    text = doc.read_text(encoding="utf-8")
    block = text[text.index("#  dir   frame"):]
    block = block[: block.index("```")]
    messages = [bytes.fromhex(m) for m in re.findall(r"^ {9}((?:[0-9a-f]{2} )*[0-9a-f]{2})\s*", block, re.M)]
    frames = [decode(m) for m in messages]
    assert [(f.type, f.stream_id, bytes(f.body)) for f in frames] == [
        (FrameType.OPEN, 1, b"198.51.100.23:50000"),
        (FrameType.DATA, 1, b"GET / HTTP/1.0\r\n\r\n"),
        (FrameType.FIN, 1, b""),
        (FrameType.OPEN_OK, 1, b""),
        (FrameType.DATA, 1, b"HTTP/1.0 200 OK\r\n\r\nhi\n"),
        (FrameType.FIN, 1, b""),
    ]
    assert messages == [reencode(f) for f in frames]
    assert "04 00 00 00 01 00 08 00 00" in text
    assert decode(bytes.fromhex("04 00 00 00 01 00 08 00 00")).window_increment == INITIAL_WINDOW // 2


def test_docs_v2_worked_example_decodes() -> None:
    import re
    from pathlib import Path

    from reverse_websockify.protocol import Hello, StreamProgress, parse_hello, parse_resume

    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    block = text[text.index("#  dir   frame (v2)"):]
    block = block[: block.index("```")]
    messages = [bytes.fromhex(m) for m in re.findall(r"^ {9}((?:[0-9a-f]{2} )*[0-9a-f]{2})\s*$", block, re.M)]
    frames = [decode(m, version=2) for m in messages]
    assert [f.type for f in frames] == [FrameType.HELLO, FrameType.HELLO, FrameType.RESUME, FrameType.RESUME,
                                        FrameType.DATA]
    session_id = bytes(range(16))
    assert parse_hello(frames[0].body) == Hello(False, 60, session_id, b"\xa1" * 32)
    assert parse_hello(frames[1].body) == Hello(True, 60, session_id, b"\xb2" * 32)
    for report in (parse_resume(frames[2].body), parse_resume(frames[3].body)):
        assert report.highest_id == 1 and not report.more
        assert report.streams == (StreamProgress(1, 6, INITIAL_WINDOW, False, True),)
    assert (frames[4].stream_id, bytes(frames[4].body)) == (1, b"world\n")
    resume_line = re.search(r"X-Reverse-Websockify-Resume: ([0-9a-f]+)\.", block)
    assert resume_line is not None and bytes.fromhex(resume_line.group(1)) == session_id


def test_v2_frames_are_unknown_in_v1_and_need_stream_zero() -> None:
    from reverse_websockify.protocol import Hello, encode_hello

    hello = encode_hello(Hello(False, 60, bytes(16), bytes(32)))
    with pytest.raises(ProtocolError, match="unknown frame type 7"):
        decode(hello)
    assert decode(hello, version=2).type is FrameType.HELLO
    with pytest.raises(ProtocolError, match="stream id 0"):
        decode(b"\x07\x00\x00\x00\x01" + hello[5:], version=2)


@pytest.mark.parametrize("kind", [FrameType.GRANT, FrameType.RELEASE])
def test_v2_grant_and_release_carry_a_byte_count_on_a_stream(kind: FrameType) -> None:
    from reverse_websockify.protocol import encode_window

    frame = encode_window(3, 65536, kind)
    assert frame == bytes([kind.value]) + bytes.fromhex("00000003" + "00010000")
    decoded = decode(frame, version=2)
    assert (decoded.type, decoded.stream_id, decoded.window_increment) == (kind, 3, 65536)
    with pytest.raises(ProtocolError, match=f"unknown frame type {kind.value}"):
        decode(frame)  # v1
    for bad, message in ((frame[:5] + bytes(4), f"{kind.name} of 0"), (frame[:5] + b"\x00", "4 expected"),
                         (bytes([kind.value]) + bytes(4) + frame[5:], "stream id 0")):
        with pytest.raises(ProtocolError, match=message):
            decode(bad, version=2)


@pytest.mark.parametrize("body, message", [
    (b"\x00\x00\x00\x00\x01" + b"\x00" * 20, "not a header and whole entries"),
    (b"\x00\x00\x00\x00\x01" + bytes.fromhex("00000002" + "00" * 8 + "00" * 8 + "00"), "above the highest id"),
    (b"\x00\x00\x00\x00\x01" + bytes.fromhex("00000001" + "0000000000000010" + "0000000000000001" + "00"),
     "credit limit"),
])
def test_bad_resume_reports_are_protocol_errors(body: bytes, message: str) -> None:
    from reverse_websockify.protocol import parse_resume

    with pytest.raises(ProtocolError, match=message):
        parse_resume(body)


def test_resume_reports_split_over_frames() -> None:
    from reverse_websockify.protocol import RESUME_ENTRIES_PER_FRAME, StreamProgress, encode_resume, parse_resume

    entries = [StreamProgress(i, i, i + 10, bool(i % 2), bool(i % 3)) for i in range(1, RESUME_ENTRIES_PER_FRAME + 3)]
    frames = encode_resume(len(entries), entries)
    assert len(frames) == 2 and all(len(f) <= MAX_MESSAGE for f in frames)
    reports = [parse_resume(decode(f, version=2).body) for f in frames]
    assert [r.more for r in reports] == [True, False]
    assert [e for r in reports for e in r.streams] == entries
