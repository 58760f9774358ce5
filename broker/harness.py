"""Run a broker (the embedded one or Mosquitto) as a subprocess, for tests and benchmarks.

``BrokerProcess`` writes a password file and an ACL file generated from topics.yaml
into a working folder, a config for the chosen broker, picks a free port on
127.0.0.1 and runs the broker there. Both kinds get the same files, so the same
tests show that they behave alike::

    with BrokerProcess("mosquitto", tmp_path, {"cloud": "pw"}, ["cloud"]) as b:
        client.connect(b.host, b.port)

The system Mosquitto on 127.0.0.1:1883 is never used: each process gets its own
free port, config and persistence folder.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import yaml

from fabbus import acl, passwords

log = logging.getLogger(__name__)

KINDS = ("embedded", "mosquitto")
HOST = "127.0.0.1"
MOSQUITTO = os.environ.get("FAB_MOSQUITTO", "/usr/sbin/mosquitto")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_REPO = Path(__file__).resolve().parents[1]


class BrokerError(RuntimeError):
    """The broker process could not be started or exited unexpectedly."""


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (binding as a broker would, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def mosquitto_path() -> str:
    """The Mosquitto executable; BrokerError (never a skip) when it is missing."""
    path = shutil.which(MOSQUITTO) or (MOSQUITTO if os.access(MOSQUITTO, os.X_OK) else None)
    if not path:
        raise BrokerError(f"Mosquitto not found at {MOSQUITTO} (set FAB_MOSQUITTO or install mosquitto)")
    return path


class BrokerProcess:
    """One broker subprocess on a free port of 127.0.0.1, with its files in ``workdir``."""

    def __init__(
        self,
        kind: str,
        workdir: str | os.PathLike[str],
        users: dict[str, str],
        cloud_users: list[str],
        *,
        keepalive_factor: float = 1.5,
        persistence: bool = True,
        tls: None = None,
        port: int | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown broker kind {kind!r} (expected one of {KINDS})")
        if tls is not None:
            raise NotImplementedError("TLS is not supported by the harness yet")
        self.kind = kind
        self.workdir = Path(workdir).resolve()
        self.users = dict(users)
        self.cloud_users = list(cloud_users)
        self.keepalive_factor = keepalive_factor
        self.persistence = persistence
        self.host = HOST
        self.port = port or free_port(HOST)
        self.log_path = self.workdir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.password_file = self.workdir / "passwd"
        self.acl_file = self.workdir / "acl"
        passwords.write_password_file(self.password_file, self.users)
        self.acl_file.write_text(acl.generate(self.cloud_users), encoding="utf-8")
        self.config_path = self._write_embedded_config() if kind == "embedded" else self._write_mosquitto_config()

    # ---- config files

    def _write_embedded_config(self) -> Path:
        cfg = {
            "listener": {"host": self.host, "port": self.port, "tls": None},
            "password_file": str(self.password_file),
            "acl_file": str(self.acl_file),
            "allow_anonymous": False,
            "persistence_file": str(self.workdir / "state.db") if self.persistence else None,
            "keepalive_factor": self.keepalive_factor,
        }
        path = self.workdir / "broker.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        return path

    def _write_mosquitto_config(self) -> Path:
        data_dir = self.workdir / "mosquitto-data"
        data_dir.mkdir(exist_ok=True)
        lines = [
            "# written by broker.harness for one test or benchmark run",
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            f"acl_file {self.acl_file}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {data_dir}/",
            "autosave_interval 1",
            "set_tcp_nodelay true",  # as asyncio does for the embedded broker: no Nagle delays
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if os.geteuid() == 0:
            # as root Mosquitto would switch to user "mosquitto", which cannot read our 0600 files
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _command(self) -> list[str]:
        if self.kind == "embedded":
            return [sys.executable, "-m", "broker", "--config", str(self.config_path)]
        return [mosquitto_path(), "-c", str(self.config_path)]

    # ---- lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = START_TIMEOUT) -> BrokerProcess:
        """Start the broker and wait until its port accepts connections."""
        if self.running:
            raise BrokerError(f"{self.kind} broker already running on port {self.port}")
        cmd = self._command()
        busy = not port_free(self.host, self.port)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in _reap)
        self._log_file.write(f"---- start {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        log.info("starting %s broker on %s:%s", self.kind, self.host, self.port)
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=_REPO
        )
        deadline = time.monotonic() + timeout
        if busy:
            self._fail_on_busy_port(deadline)
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._reap()
                raise BrokerError(f"{self.kind} broker exited with code {rc} during start:\n{self.log_tail()}")
            if self._accepts():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(f"{self.kind} broker not listening on port {self.port} after {timeout:.0f} s:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.05)

    def _fail_on_busy_port(self, deadline: float) -> None:
        """Another socket listens on our port: the broker must exit with an error; report it."""
        try:
            rc = self._proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise BrokerError(f"port {self.port} is in use, yet the {self.kind} broker kept running:\n"
                              f"{self.log_tail()}") from None
        self._reap()
        raise BrokerError(f"port {self.port} is in use; {self.kind} broker exited with code {rc}:\n{self.log_tail()}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code, None if not started."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL and wait: a crash, nothing saved at exit."""
        return self._end(signal.SIGKILL, STOP_TIMEOUT)

    def restart(self, timeout: float = START_TIMEOUT) -> BrokerProcess:
        """Stop, then start again on the same port with the same files."""
        self.stop()
        return self.start(timeout)

    def _end(self, sig: signal.Signals, timeout: float) -> int | None:
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s broker ignored %s for %.0f s; killing it", self.kind, sig.name, timeout)
                self._proc.kill()
                self._proc.wait()
        rc = self._proc.returncode
        self._reap()
        return rc

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's stdout/stderr."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BrokerProcess({self.kind!r}, port={self.port}, running={self.running})"
