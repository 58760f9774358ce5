"""Model registry endpoints: versions per line and brand, metrics, gate result, lineage, placement."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud_app import queries
from cloud_app.web.api import MAX_DB_INT, operation, reply
from cloud_app.web.errors import not_found
from cloud_app.web.schemas import ModelDetailOut, ModelListOut
from cloud_app.web.state import db


class ModelQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line: str | None = Field(default=None, max_length=130, description="'site/line'")
    brand: str | None = Field(default=None, max_length=64)
    gate: Literal["pending", "approved", "rejected"] | None = None
    limit: int = Field(default=200, ge=1, le=1000)


@operation("GET", "/models", tag="models", summary="Registry versions, newest first", response=ModelListOut,
           query=ModelQuery, errors=(422,))
def list_models(q: ModelQuery) -> Any:
    """Filter by line, brand and gate result. Each version carries its metrics, confusion matrix, gate
    result, lineage (task, data snapshot, base model) and the detectors where it is active now."""
    rows = queries.registry(db(), line=q.line, brand=q.brand, gate_state=q.gate, limit=q.limit)
    return reply({"models": rows})


@operation("GET", "/models/<int:version_id>", tag="models", summary="One registry version",
           response=ModelDetailOut, errors=(404,))
def get_model(version_id: int) -> Any:
    """The version with its evaluation, manifest, ancestors and deployments."""
    if version_id > MAX_DB_INT:
        raise not_found("model version", version_id)
    return reply(queries.model_detail(db(), version_id))
