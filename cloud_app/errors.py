"""Errors of the cloud back end; each carries the HTTP status a view should answer with.

    try:
        backend.create_train_task(...)
    except CloudError as exc:          # NotFound 404, Invalid 422, Conflict 409
        return exc.status, exc.message, exc.fields
"""

from __future__ import annotations

from fabbus.errors import FabError


class CloudError(FabError):
    status = 400

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = dict(fields or {})


class NotFound(CloudError):
    """An unknown line, detector, brand, task or model version; ``kind`` and ``name`` say which."""

    status = 404

    def __init__(self, kind: str, name: object, field: str | None = None) -> None:
        message = f"unknown {kind} {name!r}"
        super().__init__(message, {field or kind: message})
        self.kind, self.name = kind, name


class Invalid(CloudError):
    """Field-level validation errors: ``fields`` maps a dotted field path to its message."""

    status = 422

    def __init__(self, fields: dict[str, str], message: str | None = None) -> None:
        n = len(fields)
        super().__init__(message or f"{n} field{'s are' if n != 1 else ' is'} invalid: "
                         + "; ".join(f"{k}: {v}" for k, v in fields.items()), fields)


class Conflict(CloudError):
    """The request does not fit the current state (cancel a finished task, a duplicate user)."""

    status = 409
