from __future__ import annotations

import queue

import pytest
from pydantic import ValidationError

from detector_node.errors import LinkError
from detector_node.serial_link import SerialConfig, SerialLink
from detector_node.serial_protocol import Garbage, Heartbeat, Light, Result, Trigger, checksum, format_frame


@pytest.fixture
def loop_link():
    frames: queue.Queue = queue.Queue()
    link = SerialLink.open(SerialConfig(port="loop://"), frames.put, name="loop")
    with link:
        link.start()
        yield link, frames


def test_frames_travel_over_loop(loop_link):
    link, frames = loop_link
    sent = [Trigger(1, "brandA"), Result(1, "NG"), Light(True), Heartbeat(5)]
    for frame in sent:
        link.send(frame)
    assert [frames.get(timeout=2) for _ in sent] == sent
    assert link.frames_in == link.frames_out == 4
    assert link.garbage_total == 0


def test_garbage_is_counted_by_reason_and_the_next_line_still_parsed(loop_link):
    link, frames = loop_link
    garbage = [
        bytes(range(128, 160)) + b"\n",  # random bytes
        b"$TRIG 1 brandA*00\r\n",  # bad checksum
        b"$BOOM 1*%02X\r\n" % checksum(b"BOOM 1"),  # unknown command
        b"$" + b"A" * 300 + b"\r\n",  # overlong
        b"hello\r\n",  # no start
    ]
    for chunk in garbage:
        link.write_raw(chunk)
    link.send(Trigger(7, "brandB"))
    assert frames.get(timeout=2) == Trigger(7, "brandB")
    assert frames.empty()
    assert link.garbage == {
        Garbage.NOT_ASCII: 1, Garbage.BAD_CHECKSUM: 1, Garbage.UNKNOWN_COMMAND: 1,
        Garbage.TOO_LONG: 1, Garbage.NO_START: 1,
    }
    assert link.frames_in == 1


def test_a_failing_handler_does_not_stop_the_reader(wait_for, caplog):
    got = []

    def handler(frame):
        if frame == Heartbeat(1):
            raise RuntimeError("boom")
        got.append(frame)

    with SerialLink.open(SerialConfig(port="loop://"), handler) as link:
        link.start()
        link.send(Heartbeat(1))
        link.send(Heartbeat(2))
        wait_for(lambda: got == [Heartbeat(2)])
        assert link.handler_errors == 1 and link.alive
    assert "frame handler failed" in caplog.text


def test_garbage_callback_sees_line_and_reason(wait_for):
    seen = []
    def on_garbage(line, err):
        seen.append((line, err.reason))

    with SerialLink.open(SerialConfig(port="loop://"), lambda f: None, on_garbage=on_garbage) as link:
        link.start()
        link.write_raw(b"$HB 1*00\n")
        wait_for(lambda: seen)
    assert seen == [(b"$HB 1*00", Garbage.BAD_CHECKSUM)]


def test_close_stops_the_reader_and_is_idempotent():
    link = SerialLink.open(SerialConfig(port="loop://"), lambda f: None).start()
    assert link.alive
    link.close()
    link.close()
    assert not link.alive
    assert link.error is None


def test_unopenable_port_is_a_link_error(tmp_path):
    with pytest.raises(LinkError, match="cannot open serial port"):
        SerialLink.open(SerialConfig(port=str(tmp_path / "no-such-tty")), lambda f: None)
    with pytest.raises(LinkError):
        SerialLink.open(SerialConfig(port="nosuchscheme://x"), lambda f: None)


def test_serial_config_is_strict():
    with pytest.raises(ValidationError):
        SerialConfig(port="loop://", baud=9600)
    with pytest.raises(ValidationError):
        SerialConfig(port="")


def test_write_raw_sends_bytes_verbatim(loop_link):
    link, frames = loop_link
    link.write_raw(format_frame(Light(False)))
    assert frames.get(timeout=2) == Light(False)
    assert link.frames_out == 0  # raw writes are not frames
