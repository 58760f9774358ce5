"""One end of the serial line: opens the port, reads lines in a thread, hands frames to a callback.

The port is a config value handed to ``serial.serial_for_url``: a device path
(``/dev/ttyUSB0``), a pty path (``/dev/pts/5``, see :mod:`detector_node.mcu_sim`) or
a pyserial URL (``loop://``, ``socket://host:port``, ``rfc2217://host:port``). The
wire format is :mod:`detector_node.serial_protocol`. Garbage lines are counted by
reason and logged, never raised; an exception in the frame callback is logged and
counted, and the reader goes on.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Protocol

import serial
from pydantic import BaseModel, ConfigDict, Field

from detector_node.errors import LinkError, ProtocolError
from detector_node.serial_protocol import Frame, LineBuffer, format_frame, parse_line

log = logging.getLogger(__name__)
_LOUD_GARBAGE = 20  # garbage lines logged as warnings; later ones every 1000th


class SerialConfig(BaseModel):
    """The microcontroller link."""

    model_config = ConfigDict(extra="forbid")

    port: str = Field(min_length=1, description="device path, pty path, or pyserial URL such as loop://")
    baudrate: int = Field(default=115200, gt=0)
    read_timeout_s: float = Field(default=0.05, gt=0, le=1.0, description="reader poll; bounds close() latency")
    write_timeout_s: float = Field(default=1.0, gt=0)


class Port(Protocol):
    """The part of pyserial's ``Serial`` interface that SerialLink uses."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def close(self) -> None: ...


FrameHandler = Callable[[Frame], None]
GarbageHandler = Callable[[bytes, ProtocolError], None]


class SerialLink:
    """A started link reads until :meth:`close`; use it as a context manager."""

    def __init__(
        self, port: Port, on_frame: FrameHandler, *, on_garbage: GarbageHandler | None = None, name: str = "serial"
    ) -> None:
        self.name = name
        self.frames_in = 0
        self.frames_out = 0
        self.handler_errors = 0
        self.garbage: Counter[str] = Counter()
        self.error: str | None = None  # why the reader stopped, if it failed
        self._port = port
        self._on_frame = on_frame
        self._on_garbage = on_garbage
        self._lines = LineBuffer()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-reader", daemon=True)
        self._closed = False

    @classmethod
    def open(cls, config: SerialConfig, on_frame: FrameHandler, **kwargs) -> SerialLink:
        """Open ``config.port`` (not yet reading: call :meth:`start`)."""
        try:
            port = serial.serial_for_url(
                config.port,
                baudrate=config.baudrate,
                timeout=config.read_timeout_s,
                write_timeout=config.write_timeout_s,
            )
        except (serial.SerialException, ValueError, OSError) as exc:
            raise LinkError(f"cannot open serial port {config.port!r}: {exc}") from exc
        return cls(port, on_frame, **kwargs)

    @property
    def garbage_total(self) -> int:
        return sum(self.garbage.values())

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> SerialLink:
        self._thread.start()
        return self

    def send(self, frame: Frame) -> None:
        self.write_raw(format_frame(frame))
        self.frames_out += 1

    def write_raw(self, data: bytes) -> None:
        """Write bytes as they are (diagnostics and tests: this is how garbage is injected)."""
        try:
            with self._write_lock:
                self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"{self.name}: write failed: {exc}") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        cancel = getattr(self._port, "cancel_read", None)
        if cancel is not None and self._thread.is_alive():
            cancel()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        self._port.close()

    def __enter__(self) -> SerialLink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:  # boundary: the serial read
                data = self._port.read(max(1, self._port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                if not self._stop.is_set():
                    self.error = str(exc) or type(exc).__name__
                    log.error("%s: serial read failed, reader stops: %s", self.name, self.error)
                return
            if data:
                for item in self._lines.feed(data):
                    if isinstance(item, ProtocolError):
                        self._garbage(b"", item)
                    else:
                        self._line(item)

    def _line(self, line: bytes) -> None:
        try:
            frame = parse_line(line)
        except ProtocolError as err:
            self._garbage(line, err)
            return
        self.frames_in += 1
        try:  # boundary: one bad handler call must not stop the reader
            self._on_frame(frame)
        except Exception:
            self.handler_errors += 1
            log.exception("%s: frame handler failed on %s", self.name, frame)

    def _garbage(self, line: bytes, err: ProtocolError) -> None:
        self.garbage[err.reason] += 1
        n = self.garbage_total
        level = logging.WARNING if n <= _LOUD_GARBAGE or n % 1000 == 0 else logging.DEBUG
        log.log(level, "%s: garbage line #%s dropped (%s): %r", self.name, n, err, line[:40])
        if self._on_garbage is not None:
            try:
                self._on_garbage(line, err)
            except Exception:
                self.handler_errors += 1
                log.exception("%s: garbage handler failed", self.name)
