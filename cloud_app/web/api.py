"""The /api/v1 blueprint and its plumbing: operations that document themselves.

    @operation("POST", "/tasks/train", tag="tasks", summary="Start a training task",
               body=TrainTaskRequest, response=TaskDetailOut, status=201, role="engineer")
    def create_train(req: TrainTaskRequest) -> Any: ...

Each operation is recorded in OPERATIONS (the OpenAPI document is generated from them),
gets the role check, its JSON body parsed strictly (no NaN or Infinity, an object) and
validated with the pydantic model, and its query string validated with ``query``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ValidationError

from cloud_app.web.auth import require
from cloud_app.web.errors import ApiError, validation_error

bp = Blueprint("api", __name__, url_prefix="/api/v1")
MAX_BODY_BYTES = 1024 * 1024
MAX_DB_INT = 2**31 - 1      # INTEGER ids (32 bits on PostgreSQL)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID = re.compile(ID_PATTERN)


@dataclass
class Operation:
    method: str
    rule: str
    endpoint: str
    summary: str
    tag: str
    description: str = ""
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    role: str | None = "viewer"       # None: public
    query: type[BaseModel] | None = None
    stream: bool = False
    errors: tuple[int, ...] = field(default_factory=tuple)
    body_required: bool = True


OPERATIONS: list[Operation] = []
View = Callable[..., Any]


def operation(method: str, rule: str, *, summary: str, tag: str, body: type[BaseModel] | None = None,
              response: type[BaseModel] | None = None, status: int = 200, role: str | None = "viewer",
              query: type[BaseModel] | None = None, stream: bool = False,
              errors: tuple[int, ...] = (), body_required: bool = True) -> Callable[[View], View]:
    """Register an API view; ``body`` and ``query`` models are passed as keyword arguments ``req`` and ``q``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        op = Operation(method, rule, fn.__name__, summary, tag, (fn.__doc__ or "").strip(), body, response, status,
                       role, query, stream, errors, body_required)
        OPERATIONS.append(op)

        @functools.wraps(fn)
        def view(*args: Any, **kwargs: Any) -> Any:
            if query is not None:
                kwargs["q"] = parse_query(query)
            if body is not None:
                kwargs["req"] = parse_body(body, required=body_required)
            return fn(*args, **kwargs)

        guarded = require(role)(view) if role is not None else view
        bp.add_url_rule(rule, endpoint=fn.__name__, view_func=guarded, methods=[method])
        return fn

    return deco


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_body(model: type[BaseModel], required: bool = True) -> BaseModel:
    """The request's JSON object validated by ``model``; 400/413/415/422 otherwise."""
    if not required and not request.content_length and not request.get_data(cache=True):
        return model()
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    if not request.mimetype or request.mimetype != "application/json":
        raise ApiError(415, "send the body as JSON with Content-Type: application/json")
    raw = request.get_data(cache=True)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", error="bad_json") from None
    if not isinstance(data, dict):
        raise ApiError(422, "the body must be a JSON object", fields={"body": "must be a JSON object"})
    bad = _nul_paths(data, "")
    if bad:
        raise ApiError(422, "text must not contain NUL characters", error="validation_error",
                       fields={p: "must not contain NUL characters" for p in bad[:20]})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _nul_paths(value: Any, path: str) -> list[str]:
    """Dotted paths of the strings (keys included) that hold a NUL character (no database stores one)."""
    if isinstance(value, str):
        return [path or "body"] if "\x00" in value else []
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            out += [sub] if "\x00" in k else _nul_paths(v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _nul_paths(v, f"{path}.{i}" if path else str(i))
    return out


def reject_nul() -> None:
    """Before every request: NUL characters in the query string or a form are refused.

    The API answers 422 (a validation error, as documented for its query parameters);
    dashboard pages answer 400.
    """
    api = request.path.startswith("/api/")
    for source in (request.args, request.form if request.method == "POST" else {}):
        for key, value in source.items(multi=True) if source else ():
            if "\x00" in key or "\x00" in value:
                raise ApiError(422 if api else 400, f"{key[:40]!r} must not contain NUL characters",
                               error="validation_error" if api else "bad_request",
                               fields={key.replace("\x00", ""): "must not contain NUL characters"})


def parse_query(model: type[BaseModel]) -> BaseModel:
    args: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        args[key] = values[0] if len(values) == 1 else values
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise validation_error(exc, "query") from None


def check_id(value: str, kind: str) -> str:
    """A bus id from the URL (task id, site, line); 404 naming it if it cannot be one."""
    if not _ID.match(value):
        raise ApiError(404, f"unknown {kind} {value[:80]!r}", error="not_found", fields={kind: "no such id"})
    return value


def db_ref(value: int | str | None, kind: str, field: str) -> int | str | None:
    """A registry reference (row id or sha256) that the database can look up; 404 naming it otherwise."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not 0 < value <= MAX_DB_INT:
        raise ApiError(404, f"unknown {kind} {value!r}", error="not_found", fields={field: f"unknown {kind} {value!r}"})
    if isinstance(value, str) and (not value or "\x00" in value):
        raise ApiError(404, f"unknown {kind} {value[:80]!r}", error="not_found", fields={field: f"unknown {kind}"})
    return value


def reply(payload: Any, status: int = 200) -> Response:
    resp = jsonify(payload)
    resp.status_code = status
    return resp
