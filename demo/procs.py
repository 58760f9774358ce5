"""The factory's child processes: one ``Child`` per process, its output in a log file.

    child = Child("edge-line1", [sys.executable, "-m", "edge_node", "--config", cfg], env, logs / "edge-line1.log")
    child.start()
    child.wait_ready(lambda: node_online(...), timeout=120)
    child.stop()           # SIGTERM, then SIGKILL after the grace period
    child.kill()           # SIGKILL (a crash: nothing saved)

Children run in their own session, so a Ctrl-C in the terminal reaches the factory
alone, which then stops them in order. Started from the main thread, a child also
gets SIGTERM from the kernel if the factory dies without stopping it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from broker.harness import BrokerProcess

log = logging.getLogger(__name__)

STOP_TIMEOUT = 20.0
_PR_SET_PDEATHSIG = 1
_REPO = Path(__file__).resolve().parents[1]


class ProcessError(RuntimeError):
    """A child could not be started, exited early, or did not become ready in time."""


def _libc_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _libc_prctl()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Child:
    """One long-running subprocess with a name, a command, an environment and a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.started_at = 0.0
        self._log_offset = 0
        self._term_sent = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def start(self) -> Child:
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in _reap)
        self._log_offset = self._log.tell()
        self._term_sent = False
        self._log.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} start {' '.join(self.argv)}\n".encode())
        self._log.flush()
        main = threading.current_thread() is threading.main_thread()
        self.started_at = time.time()
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                      env=self.env, cwd=_REPO, start_new_session=True,
                                      preexec_fn=_die_with_parent if main else None)  # noqa: PLW1509
        log.info("%s started (pid %s)", self.name, self._proc.pid)
        return self

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready()`` until true; ProcessError if the child exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running:
                raise ProcessError(f"{self.name} exited with code {self.returncode} while starting; "
                                   f"its log {self.log_path} ends with:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ProcessError(f"{self.name} not ready after {timeout:.0f} s; its log {self.log_path} "
                                   f"ends with:\n{self.log_tail()}")
            time.sleep(0.2)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; the exit code."""
        assert self._proc is not None, f"{self.name} was never started"
        return self._proc.wait(timeout)

    def signal(self, sig: signal.Signals) -> None:
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(sig)

    def signal_stop(self) -> None:
        """SIGTERM without waiting (stop() waits): stops a group of children at once."""
        if not self._term_sent:
            self.signal(signal.SIGTERM)
            self._term_sent = True

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code, None if it was not running."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL and wait: a crash."""
        return self._end(signal.SIGKILL, STOP_TIMEOUT)

    def _end(self, sig: signal.Signals, timeout: float) -> int | None:
        if self._proc is None:
            return None
        if sig == signal.SIGTERM:
            self.signal_stop()  # once: a second SIGTERM could hit a Python already finalizing
        else:
            self.signal(sig)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored %s for %.0f s; killing it", self.name, sig.name, timeout)
            self._proc.kill()
            self._proc.wait()
        rc = self._proc.returncode
        self._reap()
        log.info("%s ended with code %s", self.name, rc)
        return rc

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
        if self._proc is None and self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_since_start(self) -> str:
        """What the child wrote since its latest start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "<empty>"

    def __repr__(self) -> str:
        return f"Child({self.name!r}, pid={self.pid}, running={self.running})"


class BrokerChild(Child):
    """The broker the factory starts (broker.harness.BrokerProcess), behind the same interface."""

    def __init__(self, broker: BrokerProcess) -> None:
        super().__init__("broker", [], {}, broker.log_path)
        self.broker = broker

    @property
    def pid(self) -> int | None:
        return self.broker.pid

    @property
    def running(self) -> bool:
        return self.broker.running

    @property
    def returncode(self) -> int | None:
        return None

    def start(self) -> Child:
        if self.running:
            raise ProcessError(f"broker is already running (pid {self.pid})")
        self.broker.stop()  # reaps a broker that died on its own (closes its log file); no-op otherwise
        self.started_at = time.time()
        self.broker.start()
        log.info("broker started (%s, pid %s, port %s)", self.broker.kind, self.pid, self.broker.port)
        return self

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        pass  # BrokerProcess.start returns once the port accepts connections

    def signal(self, sig: signal.Signals) -> None:
        raise ProcessError("use stop() or kill() on the broker: BrokerProcess reaps its own process")

    def signal_stop(self) -> None:
        pass  # stop() does it

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        return self.broker.stop(timeout)

    def kill(self) -> int | None:
        return self.broker.kill()
