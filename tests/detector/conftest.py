"""Fixtures of the detector tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest


def _wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.005) -> None:
    """Return once ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {timeout} s: {getattr(predicate, '__name__', predicate)}")
        pause.wait(interval)


@pytest.fixture
def wait_for() -> Callable[..., None]:
    return _wait_for
