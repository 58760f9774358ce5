from __future__ import annotations

import random

import pytest

from detector_node.errors import ProtocolError
from detector_node.serial_protocol import (
    MAX_LINE,
    MAX_SEQ,
    Garbage,
    Heartbeat,
    Light,
    LineBuffer,
    Result,
    Trigger,
    checksum,
    format_frame,
    parse_line,
)

FRAMES = [Trigger(0, "brandA"), Trigger(MAX_SEQ, "b" * 64), Result(42, "OK"), Result(7, "NG"),
          Light(True), Light(False), Heartbeat(0), Heartbeat(MAX_SEQ)]


@pytest.mark.parametrize("frame", FRAMES, ids=str)
def test_round_trip(frame):
    wire = format_frame(frame)
    assert wire.startswith(b"$") and wire.endswith(b"\r\n") and len(wire) <= MAX_LINE
    assert parse_line(wire) == frame
    assert parse_line(wire.rstrip(b"\r\n")) == frame


def test_wire_format_is_the_documented_one():
    assert format_frame(Trigger(42, "brandA")) == b"$TRIG 42 brandA*34\r\n"
    assert format_frame(Result(42, "NG")) == b"$RES 42 NG*4B\r\n"
    assert format_frame(Light(True)) == b"$LIGHT ON*7F\r\n"
    assert format_frame(Heartbeat(7)) == b"$HB 7*1D\r\n"
    assert checksum(b"HB 7") == 0x1D
    assert parse_line(b"$HB 7*1d") == Heartbeat(7)  # lower-case hex accepted


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xff\xfe\x00garbage", Garbage.NOT_ASCII),
        (b"$TRIG 42 br\xe4ndA*34", Garbage.NOT_ASCII),
        (b"TRIG 42 brandA*34", Garbage.NO_START),
        (b"$TRIG 42 brandA", Garbage.NO_CHECKSUM),
        (b"$TRIG 42 brandA*3", Garbage.NO_CHECKSUM),
        (b"$TRIG 42 brandA*ZZ", Garbage.NO_CHECKSUM),
        (b"$TRIG 42 brandA*35", Garbage.BAD_CHECKSUM),
        (b"$TRIG 43 brandA*34", Garbage.BAD_CHECKSUM),
        (b"$" + b"A" * 200 + b"*00", Garbage.TOO_LONG),
        (format_frame(Heartbeat(1)).replace(b"HB", b"XX"), Garbage.BAD_CHECKSUM),
    ],
)
def test_garbage_is_rejected_with_a_reason(line, reason):
    with pytest.raises(ProtocolError) as info:
        parse_line(line)
    assert info.value.reason == reason


def _framed(body: str) -> bytes:
    raw = body.encode()
    return b"$%s*%02X" % (raw, checksum(raw))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("BOOM 1", Garbage.UNKNOWN_COMMAND),
        ("trig 1 a", Garbage.UNKNOWN_COMMAND),
        ("", Garbage.UNKNOWN_COMMAND),
        ("TRIG 1", Garbage.BAD_ARGUMENTS),
        ("TRIG -1 brandA", Garbage.BAD_ARGUMENTS),
        ("TRIG 4294967296 brandA", Garbage.BAD_ARGUMENTS),
        ("TRIG 1 ../etc", Garbage.BAD_ARGUMENTS),
        ("TRIG  1 brandA", Garbage.BAD_ARGUMENTS),
        ("RES 1 MAYBE", Garbage.BAD_ARGUMENTS),
        ("RES x OK", Garbage.BAD_ARGUMENTS),
        ("LIGHT DIM", Garbage.BAD_ARGUMENTS),
        ("HB", Garbage.BAD_ARGUMENTS),
        ("HB 1 2", Garbage.BAD_ARGUMENTS),
    ],
)
def test_well_framed_but_wrong_lines_are_rejected(body, reason):
    with pytest.raises(ProtocolError) as info:
        parse_line(_framed(body))
    assert info.value.reason == reason


def test_random_bytes_only_ever_raise_protocol_error():
    rng = random.Random(1)
    for _ in range(3000):
        line = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120)))
        if rng.random() < 0.3:
            line = b"$" + line
        with pytest.raises(ProtocolError):
            parse_line(line)


def test_every_single_byte_corruption_is_detected():
    wire = format_frame(Trigger(123456, "brand-A.1")).rstrip(b"\r\n")
    for i in range(len(wire)):
        for flip in (0x01, 0x02, 0x10, 0x20):
            bad = bytearray(wire)
            bad[i] ^= flip
            with pytest.raises(ProtocolError):
                parse_line(bytes(bad))


def test_frames_refuse_invalid_fields():
    with pytest.raises(ValueError):
        Trigger(-1, "brandA")
    with pytest.raises(ValueError):
        Trigger(1, "../x")
    with pytest.raises(ValueError):
        Result(1, "MAYBE")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Heartbeat(MAX_SEQ + 1)


def test_line_buffer_reassembles_lines_split_across_reads():
    hb = format_frame(Heartbeat(3)).replace(b"\r\n", b"\n")  # a bare \n line end
    wire = format_frame(Trigger(1, "a")) + format_frame(Result(1, "OK")) + b"\n\r\n" + hb
    buf = LineBuffer()
    lines = [item for i in range(len(wire)) for item in buf.feed(wire[i : i + 1])]
    assert [parse_line(x) for x in lines] == [Trigger(1, "a"), Result(1, "OK"), Heartbeat(3)]


def test_line_buffer_bounds_an_overlong_line_and_resumes():
    buf = LineBuffer()
    out = buf.feed(b"x" * 500)
    out += buf.feed(b"y" * 500)  # still the same endless line: one error, memory bounded
    assert [e.reason for e in out] == [Garbage.TOO_LONG]
    assert len(buf._buf) <= MAX_LINE
    out = buf.feed(b"tail\n" + format_frame(Heartbeat(9)))
    assert out == [b"$HB 9*" + b"%02X" % checksum(b"HB 9")]
    # a complete line just over the limit is one error too
    out = buf.feed(b"z" * (MAX_LINE - 1) + b"\n" + format_frame(Light(False)))
    assert isinstance(out[0], ProtocolError) and out[0].reason == Garbage.TOO_LONG
    assert parse_line(out[1]) == Light(False)
