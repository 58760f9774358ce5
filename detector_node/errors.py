"""The detector's exception hierarchy (under the project's :class:`fabbus.errors.FabError`)."""

from __future__ import annotations

from fabbus.errors import FabError


class DetectorError(FabError):
    """Base class of the errors the detector raises on purpose."""


class ProtocolError(DetectorError):
    """A serial line is not a valid frame; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LinkError(DetectorError):
    """The serial port cannot be opened or has failed."""


class HistoryError(DetectorError):
    """A history request is invalid (bad name, bad parameter)."""


class SampleNotFound(HistoryError):
    """No sample with this id (never stored, or already cleaned up)."""
