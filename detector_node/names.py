"""Names that become path components or protocol fields (brands, labels) and their check."""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe name (letters, digits, ``_.-``; no leading dot), else raise ValueError."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(f"invalid {kind} {value!r}: expected {NAME_PATTERN}")
    return value
