"""Shared fixtures: brokers on free ports (embedded and Mosquitto) with the standard users.

``broker`` runs each test against both brokers; ``broker_factory`` starts others
(other kinds, options or user sets); ``embedded_broker`` is the embedded one alone.
A missing Mosquitto fails the tests that need it: it never skips them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.harness import BrokerProcess
from helpers import CLOUD_USERS, STANDARD_USERNAMES


def standard_users() -> dict[str, str]:
    """The standard user set with fresh random passwords."""
    return {name: secrets.token_urlsafe(16) for name in STANDARD_USERNAMES}


BrokerFactory = Callable[..., BrokerProcess]


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """``factory(kind, users=None, cloud_users=None, **options)`` -> a started BrokerProcess.

    Each broker gets its own folder under tmp_path; all are stopped at teardown.
    """
    started: list[BrokerProcess] = []

    def factory(kind: str, users: dict[str, str] | None = None, cloud_users: list[str] | None = None,
                **options: object) -> BrokerProcess:
        b = BrokerProcess(kind, tmp_path / f"{kind}-{len(started)}", users or standard_users(),
                          CLOUD_USERS if cloud_users is None else cloud_users, **options)
        started.append(b)
        return b.start()

    yield factory
    for b in started:
        b.stop()


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request: pytest.FixtureRequest, broker_factory: BrokerFactory) -> BrokerProcess:
    """A started broker of each kind, with users from helpers.STANDARD_USERNAMES in ``broker.users``."""
    return broker_factory(request.param)


@pytest.fixture
def embedded_broker(broker_factory: BrokerFactory) -> BrokerProcess:
    """The embedded broker alone, with the standard users."""
    return broker_factory("embedded")
