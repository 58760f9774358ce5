"""The serial line protocol between the industrial PC and the microcontroller (MCU).

ASCII, one frame per line, framed like NMEA 0183:

    $<BODY>*<CS>\\r\\n

- BODY is a command and its arguments separated by single spaces, printable ASCII
  only (0x20-0x7E).
- CS is the XOR of every byte of BODY (the bytes between `$` and `*`), as two
  hexadecimal digits (upper case when sent; either case accepted).
- A frame is at most 96 bytes including the line end; `\\n` alone is accepted as a
  line end, empty lines are ignored. Default port settings: 115200 baud, 8N1.

Frames:

    TRIG <seq> <brand>   MCU -> PC   a product passed the encoder / photo sensor:
                                     capture and inspect it
    RES <seq> OK|NG      PC -> MCU   the verdict for trigger <seq>; NG drives the
                                     reject output; one per trigger, within the
                                     MCU's deadline
    LIGHT ON|OFF         PC -> MCU   switch the light source
    HB <n>               both ways   heartbeat; <n> counts up per sender

    <seq>, <n>: decimal 0..4294967295, +1 each time, wrapping to 0
    <brand>:    [A-Za-z0-9][A-Za-z0-9_.-]{0,63}

Examples:

    $TRIG 42 brandA*34
    $RES 42 NG*4B
    $LIGHT ON*7F
    $HB 7*1D

Garbage: a line that is not a valid frame is dropped, counted by reason and logged,
and reading goes on with the next line. Reasons: `too_long`, `not_ascii`,
`no_start`, `no_checksum`, `bad_checksum`, `unknown_command`, `bad_arguments`.
A trigger that gets no RES within the MCU's deadline is a missed trigger, counted
by the MCU (see `detector_node.mcu_sim`).

This module is the pure codec; `detector_node.serial_link` does the port I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from detector_node.errors import ProtocolError
from detector_node.names import check_name

MAX_LINE = 96  # bytes, line end included
MAX_SEQ = 2**32 - 1


class Garbage(StrEnum):
    """Why a line was rejected (``ProtocolError.reason``)."""

    TOO_LONG = "too_long"
    NOT_ASCII = "not_ascii"
    NO_START = "no_start"
    NO_CHECKSUM = "no_checksum"
    BAD_CHECKSUM = "bad_checksum"
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGUMENTS = "bad_arguments"


def _check_seq(value: int) -> int:
    if not 0 <= value <= MAX_SEQ:
        raise ValueError(f"sequence number {value} outside 0..{MAX_SEQ}")
    return value


@dataclass(frozen=True)
class Trigger:
    """``TRIG <seq> <brand>``: a product to inspect."""

    seq: int
    brand: str

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        check_name("brand", self.brand)

    def body(self) -> str:
        return f"TRIG {self.seq} {self.brand}"


@dataclass(frozen=True)
class Result:
    """``RES <seq> OK|NG``: the verdict for a trigger."""

    seq: int
    verdict: Literal["OK", "NG"]

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        if self.verdict not in ("OK", "NG"):
            raise ValueError(f"verdict must be OK or NG, got {self.verdict!r}")

    @property
    def ok(self) -> bool:
        return self.verdict == "OK"

    def body(self) -> str:
        return f"RES {self.seq} {self.verdict}"


@dataclass(frozen=True)
class Light:
    """``LIGHT ON|OFF``: light source control."""

    on: bool

    def body(self) -> str:
        return f"LIGHT {'ON' if self.on else 'OFF'}"


@dataclass(frozen=True)
class Heartbeat:
    """``HB <n>``: liveness, both directions."""

    n: int

    def __post_init__(self) -> None:
        _check_seq(self.n)

    def body(self) -> str:
        return f"HB {self.n}"


Frame = Trigger | Result | Light | Heartbeat


def checksum(body: bytes) -> int:
    """XOR of all bytes (NMEA 0183 style)."""
    cs = 0
    for b in body:
        cs ^= b
    return cs


def format_frame(frame: Frame) -> bytes:
    """The wire bytes of a frame, line end included."""
    body = frame.body().encode("ascii")
    return b"$%s*%02X\r\n" % (body, checksum(body))


def _number(text: str) -> int:
    if not text.isdecimal() or not text.isascii() or len(text) > 10:
        raise ValueError(f"not a sequence number: {text!r}")
    return _check_seq(int(text))


def _build(command: str, args: list[str]) -> Frame:
    """Frame from command and arguments; ValueError for bad arguments."""
    arity = {"TRIG": 2, "RES": 2, "LIGHT": 1, "HB": 1}[command]
    if len(args) != arity:
        raise ValueError(f"{command} takes {arity} argument(s), got {len(args)}")
    if command == "TRIG":
        return Trigger(_number(args[0]), args[1])
    if command == "RES":
        return Result(_number(args[0]), args[1])  # type: ignore[arg-type]
    if command == "LIGHT":
        if args[0] not in ("ON", "OFF"):
            raise ValueError(f"LIGHT takes ON or OFF, got {args[0]!r}")
        return Light(args[0] == "ON")
    return Heartbeat(_number(args[0]))


def parse_line(line: bytes) -> Frame:
    """Parse one line (line end optional). Raises ProtocolError, and only that, for garbage."""
    line = line.rstrip(b"\r\n")
    if len(line) + 2 > MAX_LINE:
        raise ProtocolError(Garbage.TOO_LONG, f"{len(line) + 2} bytes > {MAX_LINE}")
    if any(b < 0x20 or b > 0x7E for b in line):
        raise ProtocolError(Garbage.NOT_ASCII, "non-printable or non-ASCII byte")
    if not line.startswith(b"$"):
        raise ProtocolError(Garbage.NO_START, "line does not start with '$'")
    star = line.rfind(b"*")
    cs_text = line[star + 1 :]
    if star < 0 or len(cs_text) != 2 or any(c not in b"0123456789abcdefABCDEF" for c in cs_text):
        raise ProtocolError(Garbage.NO_CHECKSUM, "missing '*XX' checksum")
    body = line[1:star]
    expected = checksum(body)
    if int(cs_text, 16) != expected:
        raise ProtocolError(Garbage.BAD_CHECKSUM, f"checksum {cs_text.decode()} != computed {expected:02X}")
    command, *args = body.decode("ascii").split(" ")
    if command not in ("TRIG", "RES", "LIGHT", "HB"):
        raise ProtocolError(Garbage.UNKNOWN_COMMAND, f"unknown command {command[:16]!r}")
    try:
        return _build(command, args)
    except ValueError as exc:
        raise ProtocolError(Garbage.BAD_ARGUMENTS, str(exc)) from None


class LineBuffer:
    """Splits a byte stream into lines, bounding memory: an overlong line becomes one TOO_LONG error."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:
        """Complete lines (without line end, empty ones skipped) and errors, in stream order."""
        out: list[bytes | ProtocolError] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    if not self._discarding:
                        out.append(ProtocolError(Garbage.TOO_LONG, f"no line end within {self.max_line} bytes"))
                        self._discarding = True
                    self._buf.clear()
                return out
            line = bytes(self._buf[:nl]).rstrip(b"\r")
            del self._buf[: nl + 1]
            if self._discarding:  # the tail of an overlong line
                self._discarding = False
            elif len(line) + 2 > self.max_line:
                out.append(ProtocolError(Garbage.TOO_LONG, f"{len(line) + 2} bytes > {self.max_line}"))
            elif line:
                out.append(line)
