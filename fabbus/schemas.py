"""JSON Schemas of the envelope and of every message body, as published in docs/schemas/."""

from __future__ import annotations

import copy
from typing import Any

from pydantic.json_schema import models_json_schema

from fabbus.messages import MAX_PAYLOAD_BYTES, MESSAGE_TYPES, Envelope

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def body_schema(type_name: str) -> dict[str, Any]:
    """The standalone JSON Schema of one message body (nested models under $defs)."""
    schema = MESSAGE_TYPES[type_name].model_json_schema(by_alias=True)
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def envelope_schema(body_description: str | None = None) -> dict[str, Any]:
    """The envelope's JSON Schema; ``type`` lists the known types, ``body`` points at the bodies."""
    schema = copy.deepcopy(Envelope.model_json_schema(by_alias=True))
    props = schema["properties"]
    props["schema"]["description"] = "Envelope schema version."
    props["type"] = {"title": "Type", "type": "string", "enum": sorted(MESSAGE_TYPES),
                     "description": "The body's message type; receivers accept only the types of the topic."}
    props["id"]["description"] = "Message id; QoS 1 is at-least-once, so receivers drop ids they have seen."
    props["correlation_id"]["description"] = "The task this message belongs to, when there is one."
    props["ts"]["description"] = "Send time, seconds since the Unix epoch (UTC)."
    props["sender"]["description"] = "The sender's username (its scope below the prefix) or cloud process id."
    props["body"] = {"title": "Body", "type": "object",
                     "description": body_description or "The typed body: docs/schemas/<type>.json, chosen by `type`."}
    schema["description"] = (f"The envelope every message travels in: UTF-8 JSON, at most {MAX_PAYLOAD_BYTES} "
                             "bytes, no NaN or Infinity.")
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def schema_files() -> dict[str, dict[str, Any]]:
    """file name -> schema for docs/schemas/: one per body type plus Envelope.json."""
    files = {f"{name}.json": body_schema(name) for name in sorted(MESSAGE_TYPES)}
    files["Envelope.json"] = envelope_schema()
    return files


def component_schemas() -> dict[str, dict[str, Any]]:
    """Every body, nested model and the envelope, with refs into AsyncAPI's #/components/schemas."""
    _, top = models_json_schema(
        [(cls, "validation") for _, cls in sorted(MESSAGE_TYPES.items())],
        by_alias=True, ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, dict[str, Any]] = dict(sorted(top["$defs"].items()))
    envelope = envelope_schema("The typed body; see the message's payload.")
    envelope.pop("$schema")
    schemas["Envelope"] = envelope
    return schemas
