"""Errors of the web layer: one JSON shape for the API, a page for the dashboard.

    {"error": "validation_error", "message": "2 fields are invalid", "fields": {"config.epochs": "..."}}

Every exception that reaches a view boundary ends here: HTTP errors keep their status,
pydantic validation errors become 422 with field paths, anything else is logged and
answered 500 without details.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from cloud_app.errors import CloudError

log = logging.getLogger(__name__)

_ERROR_NAMES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "validation_error",
    429: "too_many_requests", 500: "internal_error",
}

# model-level messages of the training configuration that belong to one field of the form
_ROOT_HINTS = (
    ("class_weights", "generators.class_weights"),
    ("alpha", "alpha"),
    ("fine_tune", "fine_tune.enabled"),
    ("classes must be unique", "classes"),
    ("path is required", "pretrained.path"),
)


class ApiError(Exception):
    """An error with a status, a machine name, a clear message and optional field errors."""

    def __init__(self, status: int, message: str, *, error: str | None = None,
                 fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error = error or _ERROR_NAMES.get(status, "error")
        self.fields = fields or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.fields:
            out["fields"] = self.fields
        return out


def not_found(kind: str, name: object) -> ApiError:
    return ApiError(404, f"unknown {kind} {name!r}", error="not_found", fields={kind: f"unknown {kind} {name!r}"})


def _clean(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def field_errors(exc: ValidationError, prefix: str = "") -> dict[str, str]:
    """pydantic errors as {"a.b.0": "message"}; model-level errors go to the field they name."""
    out: dict[str, str] = {}
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        msg = _clean(err["msg"])
        if err["type"] == "value_error":
            loc = _hinted(loc, msg)
        key = ".".join(p for p in [prefix, *loc] if p) or "body"
        out.setdefault(key, msg)
    return out


def _hinted(loc: list[str], msg: str) -> list[str]:
    """Move a model-level error of the training configuration onto the field it is about."""
    for needle, rel in _ROOT_HINTS:
        if needle in msg:
            parts = rel.split(".")
            if loc and len(parts) > 1 and parts[0] == loc[-1]:
                return loc[:-1] + parts
            return loc + parts
    return loc


def _is_union_tag(part: object) -> bool:
    """pydantic names the union member it tried in the location ("dict[str,float]", "literal['balanced']")."""
    return isinstance(part, str) and ("[" in part or part in ("function-after", "function-before"))


def validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    fields = field_errors(exc, prefix)
    n = len(fields)
    return ApiError(422, f"{n} field{'s are' if n != 1 else ' is'} invalid", error="validation_error", fields=fields)


def wants_json() -> bool:
    return request.path.startswith("/api/")


def json_error(err: ApiError) -> Response:
    resp = jsonify(err.body())
    resp.status_code = err.status
    if err.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="fabedge"'
    return resp


def _page_error(status: int, message: str) -> tuple[str, int]:
    return render_template("error.html", status=status, message=message), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Any:
        if wants_json():
            return json_error(err)
        return _page_error(err.status, err.message)

    @app.errorhandler(CloudError)
    def _cloud_error(exc: CloudError) -> Any:
        return _api_error(ApiError(exc.status, exc.message, fields=exc.fields))

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Any:
        return _api_error(validation_error(exc))

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> Any:
        return _api_error(ApiError(400, f"CSRF check failed: {exc.description}", error="csrf_failed"))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        status = exc.code or 500
        err = ApiError(status, exc.description or exc.name, error=_ERROR_NAMES.get(status, exc.name.lower()))
        resp = _api_error(err)
        if status == 405 and wants_json():
            allowed = exc.get_headers()
            for name, value in allowed:
                if name.lower() == "allow":
                    resp.headers["Allow"] = value
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _api_error(ApiError(500, "internal error; see the server log", error="internal_error"))
