"""The OpenAPI 3.1 document of /api/v1, generated from the registered operations and their pydantic models.

    GET /api/v1/openapi.json
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from cloud_app.web.api import ID_PATTERN, MAX_DB_INT, OPERATIONS, Operation, operation, reply
from cloud_app.web.schemas import ErrorOut

REF = "#/components/schemas/{model}"
_RULE_ARG = re.compile(r"<(?:(\w+):)?(\w+)>")
_STATUS_TEXT = {400: "Bad request (not JSON)", 401: "Not authenticated", 403: "Role too low", 404: "Unknown name",
                405: "Method not allowed", 409: "Conflict with the current state", 413: "Body too large",
                415: "Body is not JSON", 422: "Invalid fields"}


def _path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params = []
    for conv, name in _RULE_ARG.findall(rule):
        schema: dict[str, Any] = ({"type": "integer", "minimum": 0, "maximum": MAX_DB_INT} if conv == "int"
                                  else {"type": "string", "pattern": ID_PATTERN})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return "/api/v1" + _RULE_ARG.sub(r"{\2}", rule), params


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()]


def _json(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


def _operation(op: Operation, refs: dict[tuple[type[BaseModel], str], dict[str, Any]]) -> dict[str, Any]:
    _, path_params = _path(op.rule)
    out: dict[str, Any] = {"operationId": op.endpoint, "summary": op.summary, "tags": [op.tag],
                           "parameters": path_params + (_query(op.query) if op.query else [])}
    if op.description:
        out["description"] = op.description
    if op.role is None:
        out["security"] = []
    elif op.role != "viewer":
        out["description"] = (out.get("description", "") + f"\n\nNeeds the {op.role} role.").strip()
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": _json(refs[(op.body, "validation")])}
    responses: dict[str, Any] = {}
    if op.stream:
        responses[str(op.status)] = {"description": "an event stream",
                                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    elif op.status == 204:
        responses["204"] = {"description": "done"}
    else:
        ok: dict[str, Any] = {"description": "success"}
        if op.response is not None:
            ok["content"] = _json(refs[(op.response, "serialization")])
        responses[str(op.status)] = ok
    codes = set(op.errors)
    if op.role is not None:
        codes.add(401)
        if op.role != "viewer":
            codes.add(403)
    if op.body is not None:
        codes |= {400, 413, 415, 422}
    if op.query is not None:
        codes.add(422)
    error_ref = refs[(ErrorOut, "serialization")]
    for code in sorted(codes):
        responses[str(code)] = {"description": _STATUS_TEXT.get(code, "error"), "content": _json(error_ref)}
    out["responses"] = responses
    return out


@functools.cache
def document() -> dict[str, Any]:
    wanted: list[tuple[type[BaseModel], str]] = [(ErrorOut, "serialization")]
    for op in OPERATIONS:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        if op.response is not None:
            wanted.append((op.response, "serialization"))
    wanted = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(wanted, ref_template=REF)   # type: ignore[arg-type]
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        path, _ = _path(op.rule)
        paths.setdefault(path, {})[op.method.lower()] = _operation(op, refs)  # type: ignore[arg-type]
    return {
        "openapi": "3.1.0",
        "info": {"title": "fabedge cloud API", "version": "1",
                 "description": "Train and deploy inspection models on production lines. Errors are JSON "
                                "{error, message, fields?}; fields maps dotted paths to messages."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "an API token (fab_...)"},
                "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "session",
                               "description": "the dashboard's login session (state changes need X-CSRFToken)"},
            },
        },
        "security": [{"bearerAuth": []}, {"cookieAuth": []}],
    }


@operation("GET", "/openapi.json", tag="meta", summary="This document", role=None)
def openapi_json() -> Any:
    return reply(document())
