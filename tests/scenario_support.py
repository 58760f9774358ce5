"""Support of the scenario tests: a whole factory started for one test, and what to check after it.

    with running_factory("external", tmp_path) as f:      # "embedded" or "external" (Mosquitto, Redis, PostgreSQL)
        report = run_scenario(f)
    assert not alive(pids)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis

from demo.external import libpq_url
from demo.factory import Factory
from demo.options import DEFAULT_REDIS, FactoryOptions

MODES = ("embedded", "external")


def options(mode: str, workdir: Path, **kw: object) -> FactoryOptions:
    """A factory for CI: every port free, a high product rate so that history builds up fast."""
    base = FactoryOptions.external if mode == "external" else FactoryOptions
    return base(workdir=workdir, rate_hz=20.0, ready_timeout_s=240.0, **kw)


@contextlib.contextmanager
def running_factory(mode: str, workdir: Path, **kw: object) -> Iterator[Factory]:
    factory = Factory(options(mode, workdir, **kw))
    factory.start()
    try:
        yield factory
    finally:
        factory.stop()


def alive(pids: list[int]) -> list[int]:
    """The pids of ``pids`` that still exist (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (e.g. a work folder), other than this process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return alive(found)


def database_exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def redis_keys(name: str, url: str = DEFAULT_REDIS) -> list[bytes]:
    r = redis.Redis.from_url(url)
    try:
        return list(r.scan_iter(f"huey.*{name}*"))
    finally:
        r.close()
