"""The MCU simulator against a detector-side SerialLink over a real pty pair."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from detector_node.mcu_sim import McuSimConfig, McuSimulator, main
from detector_node.serial_link import SerialConfig, SerialLink
from detector_node.serial_protocol import Frame, Light, Result, Trigger


class FakeDetector:
    """Answers each trigger with ``answer(trigger)`` (a verdict, or None to stay silent)."""

    def __init__(self, port: str, answer: Callable[[Trigger], str | None]) -> None:
        self.triggers: list[Trigger] = []
        self.times: list[float] = []
        self.other: list[Frame] = []
        self.answer = answer
        self.link = SerialLink.open(SerialConfig(port=port), self.on_frame, name="detector").start()

    def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Trigger):
            self.triggers.append(frame)
            self.times.append(time.perf_counter())
            verdict = self.answer(frame)
            if verdict is not None:
                self.link.send(Result(frame.seq, verdict))
        else:
            self.other.append(frame)


@pytest.fixture
def rig():
    made = []

    def make(answer: Callable[[Trigger], str | None], **cfg) -> tuple[McuSimulator, FakeDetector]:
        sim = McuSimulator(McuSimConfig(**cfg))
        det = FakeDetector(sim.device_path, answer)  # open the detector end before the first trigger
        made.append((sim, det))
        return sim, det

    yield make
    for sim, det in made:
        det.link.close()
        sim.close()


def test_pty_answers_in_time_are_timed_and_counted(rig):
    sim, det = rig(lambda t: "NG" if t.seq % 4 == 0 else "OK", rate_hz=100, brands=["a", "b", "c"],
                   max_triggers=30, deadline_s=0.5, heartbeat_s=0.05)
    assert os.path.exists(sim.device_path)
    sim.start()
    assert sim.wait_until(lambda s: s.sent == 30 and s.pending == 0, timeout=10)
    stats = sim.stats()
    assert (stats.answered, stats.missed, stats.late, stats.unexpected) == (30, 0, 0, 0)
    assert (stats.ok, stats.ng) == (22, 8)
    assert len(stats.latencies_s) == 30 and 0 < stats.latency_p50 <= stats.latency_p99 < 0.5
    assert [t.seq for t in det.triggers] == list(range(30))
    assert [t.brand for t in det.triggers[:4]] == ["a", "b", "c", "a"]
    assert det.link.garbage_total == 0 and stats.garbage == 0
    assert len(det.other) >= 1  # heartbeats from the MCU


def test_unanswered_and_late_triggers_are_missed(rig, wait_for):
    sim, det = rig(lambda t: None if t.seq in (2, 3) else "OK", rate_hz=0, deadline_s=0.05)
    sim.start()
    for _ in range(5):
        sim.trigger()
    assert sim.wait_until(lambda s: s.answered == 3 and s.missed == 2, timeout=5)
    det.link.send(Result(3, "OK"))  # after its deadline
    assert sim.wait_until(lambda s: s.late == 1, timeout=5)
    det.link.send(Result(99, "OK"))  # never triggered
    assert sim.wait_until(lambda s: s.unexpected == 1, timeout=5)
    stats = sim.stop()
    assert (stats.sent, stats.answered, stats.missed, stats.late, stats.pending) == (5, 3, 2, 1, 0)


def test_stop_counts_outstanding_triggers_missed(rig):
    sim, _ = rig(lambda t: None, rate_hz=0, deadline_s=0.05)
    sim.start()
    sim.trigger("x")
    stats = sim.stop()
    assert (stats.sent, stats.missed, stats.pending) == (1, 1, 0)


def test_pc_frames_and_garbage_are_recorded(rig):
    sim, det = rig(lambda t: "OK", rate_hz=0)
    sim.start()
    det.link.send(Light(True))
    det.link.write_raw(b"$RES 1 OK*00\r\n")
    assert sim.wait_until(lambda s: s.light_on is True and s.garbage == 1, timeout=5)
    det.link.send(Light(False))
    assert sim.wait_until(lambda s: s.light_on is False, timeout=5)


def test_rate_is_kept(rig):
    sim, det = rig(lambda t: "OK", rate_hz=200, max_triggers=40, deadline_s=1.0)
    sim.start()
    assert sim.wait_until(lambda s: s.sent == 40 and s.pending == 0, timeout=10)
    assert sim.stats().answered == 40
    assert 0.15 < det.times[-1] - det.times[0] < 0.6  # 39 periods of 5 ms, some slack for a busy machine


def test_simulator_over_a_pyserial_url():
    with McuSimulator(McuSimConfig(port="loop://", rate_hz=0, deadline_s=1.0)) as sim:  # the MCU hears itself
        sim.start()
        seq = sim.trigger()
        sim.send(Result(seq, "NG"))
        assert sim.wait_until(lambda s: s.answered == 1 and s.ng == 1, timeout=5)
        assert sim.stats().unexpected == 1  # its own TRIG came back


def test_cli_runs_a_counted_session(capsys):
    assert main(["--rate", "200", "--count", "3", "--deadline", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "MCU simulator on /dev/" in out
    assert "sent=3" in out and "missed=3" in out
