"""A microcontroller simulator for the demo, the benchmark and the tests.

It plays the MCU's side of :mod:`detector_node.serial_protocol`: it sends ``TRIG``
at a product rate (brands cycled from a list) and ``HB`` heartbeats, and times the
PC's ``RES`` answers. A trigger not answered within ``deadline_s`` is *missed*; an
answer that comes after the deadline counts as *late* (and the trigger stays
missed); a ``RES`` for a sequence number never sent is *unexpected*.

By default it opens a pty pair and keeps the master side: the detector opens
``sim.device_path`` as its serial port. With ``port`` set it opens that port
instead (a pyserial URL or a device, e.g. one end of a null-modem cable)::

    with McuSimulator(McuSimConfig(rate_hz=20, brands=["a", "b"], max_triggers=100)) as sim:
        ...  # open the detector's serial port on sim.device_path first (opening flushes input)
        sim.start()
        sim.wait_until(lambda s: s.sent == 100 and s.pending == 0, timeout=10)
        print(sim.stats().missed, sim.stats().latency_p99)

Run alone: ``python -m detector_node.mcu_sim --rate 10 --brands a,b`` prints the pty path.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import select
import termios
import threading
import time
import tty
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import serial
from pydantic import BaseModel, ConfigDict, Field

from detector_node.errors import LinkError
from detector_node.serial_link import SerialConfig, SerialLink
from detector_node.serial_protocol import MAX_SEQ, Frame, Heartbeat, Light, Result, Trigger

log = logging.getLogger(__name__)


class McuSimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_hz: float = Field(default=10.0, ge=0, le=10_000, description="products per second; 0: only trigger()")
    brands: list[str] = Field(default_factory=lambda: ["brandA"], min_length=1, description="cycled, one per trigger")
    deadline_s: float = Field(default=0.2, gt=0, description="a RES later than this after its TRIG is a miss")
    heartbeat_s: float = Field(default=1.0, gt=0)
    max_triggers: int | None = Field(default=None, ge=0, description="stop triggering after this many")
    start_seq: int = Field(default=0, ge=0, le=MAX_SEQ)
    port: str | None = Field(default=None, description="None: open a pty pair (see device_path)")


class PtyPort:
    """The master side of a fresh pty pair, with the part of pyserial's interface SerialLink uses."""

    def __init__(self, timeout: float = 0.05, write_timeout: float = 1.0) -> None:
        self.timeout = timeout
        self.write_timeout = write_timeout
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing, before the detector opens it
        os.set_blocking(self._master, False)
        self.device_path = os.ttyname(self._slave)  # the slave stays open here: the pty outlives detector reconnects

    @property
    def in_waiting(self) -> int:
        return int.from_bytes(fcntl.ioctl(self._master, termios.FIONREAD, b"\0\0\0\0"), "little")

    def read(self, size: int = 1) -> bytes:
        ready, _, _ = select.select([self._master], [], [], self.timeout)
        return os.read(self._master, size) if ready else b""

    def write(self, data: bytes) -> int:
        view, end = memoryview(data), time.monotonic() + self.write_timeout
        while view:
            if not select.select([], [self._master], [], max(0.0, end - time.monotonic()))[1]:
                raise serial.SerialTimeoutException("pty write timeout: nobody reads the other end")
            view = view[os.write(self._master, view) :]
        return len(data)

    def close(self) -> None:
        os.close(self._master)
        os.close(self._slave)


@dataclass(frozen=True)
class McuStats:
    sent: int = 0
    answered: int = 0  # in time
    ok: int = 0
    ng: int = 0
    missed: int = 0  # not answered within the deadline (late ones included)
    late: int = 0
    unexpected: int = 0
    pending: int = 0
    pc_heartbeats: int = 0
    write_errors: int = 0
    garbage: int = 0
    light_on: bool | None = None
    latencies_s: tuple[float, ...] = field(default=(), repr=False)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else None

    @property
    def latency_p50(self) -> float | None:
        return self.percentile(50)

    @property
    def latency_p99(self) -> float | None:
        return self.percentile(99)


class McuSimulator:
    def __init__(self, config: McuSimConfig | None = None) -> None:
        self.config = config or McuSimConfig()
        self.device_path: str | None = None
        if self.config.port is None:
            pty = PtyPort()
            self.device_path = pty.device_path
            self.link = SerialLink(pty, self._on_frame, name="mcu-sim")
        else:
            self.link = SerialLink.open(SerialConfig(port=self.config.port), self._on_frame, name="mcu-sim")
        self._cond = threading.Condition()
        self._counts: Counter[str] = Counter()
        self._light_on: bool | None = None
        self._latencies: list[float] = []
        self._pending: OrderedDict[int, float] = OrderedDict()  # seq -> send time, oldest first
        self._expired: OrderedDict[int, None] = OrderedDict()  # recently missed seqs, to spot late answers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mcu-sim", daemon=True)

    def start(self) -> McuSimulator:
        self.link.start()
        self._thread.start()
        return self

    def stats(self, with_latencies: bool = True) -> McuStats:
        with self._cond:
            self._sweep(time.perf_counter())
            return McuStats(**self._counts, pending=len(self._pending), garbage=self.link.garbage_total,
                            light_on=self._light_on, latencies_s=tuple(self._latencies) if with_latencies else ())

    def wait_until(self, predicate: Callable[[McuStats], bool], timeout: float) -> bool:
        """Wait until ``predicate(stats)`` holds, re-checked on every event; False on timeout.

        The predicate sees the counters only (``latencies_s`` empty: copying them on every event would
        load the simulator at high rates); read latencies from :meth:`stats` afterwards.
        """
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.stats(with_latencies=False)):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, self.config.deadline_s / 2))
        return True

    def trigger(self, brand: str | None = None) -> int:
        """Send one TRIG now (brand: the next in the cycle) and return its sequence number."""
        with self._cond:
            n = self._counts["sent"]
            seq = (self.config.start_seq + n) & MAX_SEQ
            frame = Trigger(seq, brand or self.config.brands[n % len(self.config.brands)])
            self._pending[seq] = time.perf_counter()
            self._counts["sent"] += 1
        self.send(frame)
        return seq

    def send(self, frame: Frame) -> None:
        """Send any frame; a failed write is logged and counted (``write_errors``), not raised."""
        try:  # boundary: the serial write
            self.link.send(frame)
        except LinkError as exc:
            log.warning("mcu-sim: cannot send %s: %s", frame, exc)
            with self._cond:
                self._counts["write_errors"] += 1

    def _on_frame(self, frame: Frame) -> None:
        now = time.perf_counter()
        c = self._counts
        with self._cond:
            if isinstance(frame, Result):
                sent_at = self._pending.pop(frame.seq, None)
                if sent_at is None and frame.seq in self._expired:  # already counted missed
                    del self._expired[frame.seq]
                    c["late"] += 1
                elif sent_at is None:
                    c["unexpected"] += 1
                elif now - sent_at > self.config.deadline_s:
                    c["missed"] += 1
                    c["late"] += 1
                else:
                    self._latencies.append(now - sent_at)
                    c["answered"] += 1
                    c["ok" if frame.ok else "ng"] += 1
            elif isinstance(frame, Heartbeat):
                c["pc_heartbeats"] += 1
            elif isinstance(frame, Light):
                self._light_on = frame.on
            else:
                c["unexpected"] += 1
            self._cond.notify_all()

    def _sweep(self, now: float, force: bool = False) -> None:
        """Count pending triggers past their deadline as missed (caller holds the lock)."""
        missed = 0
        while self._pending:
            seq, sent_at = next(iter(self._pending.items()))
            if not force and now - sent_at <= self.config.deadline_s:
                break
            self._pending.popitem(last=False)
            self._expired[seq] = None
            missed += 1
        while len(self._expired) > 10_000:
            self._expired.popitem(last=False)
        if missed:
            self._counts["missed"] += missed
            self._cond.notify_all()

    def _run(self) -> None:
        cfg = self.config
        period = 1.0 / cfg.rate_hz if cfg.rate_hz > 0 and cfg.max_triggers != 0 else None
        next_trig = next_hb = time.perf_counter()
        hb = 0
        while not self._stop.is_set():
            now = time.perf_counter()
            if period is not None and now >= next_trig:
                self.trigger()
                next_trig += period
                if cfg.max_triggers is not None and self._counts["sent"] >= cfg.max_triggers:
                    period = None  # done triggering; heartbeats go on
            if now >= next_hb:
                self.send(Heartbeat(hb & MAX_SEQ))
                hb, next_hb = hb + 1, next_hb + cfg.heartbeat_s
            with self._cond:
                self._sweep(now)
                oldest = next(iter(self._pending.values()), None)
            wake = min(next_trig if period is not None else next_hb, next_hb)
            if oldest is not None:
                wake = min(wake, oldest + cfg.deadline_s)
            self._stop.wait(max(0.0, wake - time.perf_counter()))

    def stop(self) -> McuStats:
        """Stop triggering, give outstanding triggers their deadline, count the rest missed."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)
        with self._cond:
            self._cond.wait_for(lambda: not self._pending, timeout=self.config.deadline_s)
            self._sweep(time.perf_counter(), force=True)
        return self.stats()

    def close(self) -> None:
        self.stop()
        self.link.close()

    def __enter__(self) -> McuSimulator:
        return self  # open, not started: connect the detector, then start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detector_node.mcu_sim", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0, help="products per second")
    parser.add_argument("--brands", default="brandA", help="comma-separated, cycled")
    parser.add_argument("--deadline", type=float, default=0.2, help="seconds")
    parser.add_argument("--port", default=None, help="serial port or pyserial URL (default: a new pty)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many triggers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = McuSimConfig(rate_hz=args.rate, brands=args.brands.split(","), deadline_s=args.deadline,
                       port=args.port, max_triggers=args.count)
    with McuSimulator(cfg) as sim:
        print(f"MCU simulator on {sim.device_path or cfg.port}; Ctrl-C stops", flush=True)
        sim.start()
        done = (lambda s: s.sent >= args.count and s.pending == 0) if args.count is not None else (lambda s: False)
        try:
            while not sim.wait_until(done, timeout=1.0):
                print(sim.stats(), flush=True)
        except KeyboardInterrupt:
            pass
        print(sim.stop(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
