"""Typed messages: the envelope round trip, every decode failure, deduplication, chunk data
and training-config validation."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from typing import Any

import pytest
from pydantic import ValidationError

from fabbus.errors import MessageError
from fabbus.examples import CHUNK_DATA, example_body, example_envelope
from fabbus.messages import (
    MAX_PAYLOAD_BYTES, MESSAGE_TYPES, Deduplicator, EpochMetrics, ErrorReport, ModelChunk, TaskStatus, TrainCommand,
    decode, encode,
)
from fabbus.training_config import TrainingConfig

ENVELOPE_FIELDS = {"schema", "type", "id", "correlation_id", "ts", "sender", "body"}


def _payload(**changes: Any) -> bytes:
    """An example TaskStatus message with envelope fields replaced (None removes a field)."""
    env = example_envelope("TaskStatus")
    for key, value in changes.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    return json.dumps(env).encode()


def _body(**changes: Any) -> dict[str, Any]:
    return {**example_envelope("TaskStatus")["body"], **changes}


# ---- round trip -----------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", sorted(MESSAGE_TYPES))
def test_round_trip_of_every_type(type_name: str) -> None:
    body = example_body(type_name)
    before = time.time()
    payload = encode(body, sender="s1/l1", correlation_id="task-1")
    raw = json.loads(payload)
    assert set(raw) == ENVELOPE_FIELDS
    assert raw["schema"] == 1 and raw["type"] == type_name and raw["sender"] == "s1/l1"
    assert raw["correlation_id"] == "task-1" and len(raw["id"]) >= 16
    assert before <= raw["ts"] <= time.time()
    msg = decode(payload, allowed=(type_name,))
    assert msg.body == body and type(msg.body) is MESSAGE_TYPES[type_name]
    assert (msg.type, msg.id, msg.correlation_id, msg.ts, msg.sender) == (
        type_name, raw["id"], "task-1", raw["ts"], "s1/l1")


@pytest.mark.parametrize("type_name", sorted(MESSAGE_TYPES))
def test_documented_examples_decode(type_name: str) -> None:
    env = example_envelope(type_name)
    assert set(env) == ENVELOPE_FIELDS
    assert decode(json.dumps(env).encode()).body == example_body(type_name)


def test_message_ids_are_unique_unless_given() -> None:
    body = example_body("CancelCommand")
    ids = {json.loads(encode(body, sender="c"))["id"] for _ in range(50)}
    assert len(ids) == 50
    assert decode(encode(body, sender="c", msg_id="fixed-1")).id == "fixed-1"
    assert decode(encode(body, sender="c")).correlation_id is None


# ---- decode failures ------------------------------------------------------------------------------

DEEP = b"[" * 200_000 + b"]" * 200_000
BAD_PAYLOADS = {
    "not JSON": (b"hello", None, "not JSON"),
    "truncated JSON": (_payload()[:-5], None, "not JSON"),
    "not UTF-8": (b'{"type": "\xff\xfe"}', None, "not UTF-8"),
    "UTF-16 JSON": (_payload().decode().encode("utf-16"), None, "not UTF-8"),
    "NaN": (_payload(body=_body()).replace(b'"reason": ""', b'"reason": NaN'), None, "NaN is not a JSON value"),
    "nested too deeply": (DEEP, None, "nested too deeply"),
    "not an object": (b"[1, 2]", None, "bad envelope"),
    "missing id": (_payload(id=None), None, "bad envelope: id: Field required"),
    "empty sender": (_payload(sender=""), None, "bad envelope: sender"),
    "other schema version": (_payload(schema=2), None, "bad envelope: schema"),
    "extra envelope field": (_payload(priority=1), None, "bad envelope: priority: Extra inputs are not permitted"),
    "bad timestamp": (_payload(ts="noon"), None, "bad envelope: ts"),
    "unknown type": (_payload(type="Bogus"), None, "unknown message type 'Bogus'"),
    "disallowed type": (_payload(), ("NodeState",), "type 'TaskStatus' not allowed here"),
    "invalid body": (_payload(body=_body(state="DONE")), None, "bad TaskStatus body: state"),
    "missing body field": (_payload(body={"task": "t"}), None, "bad TaskStatus body: kind: Field required"),
    "body not an object": (_payload(body=[1]), None, "bad TaskStatus body"),
    "extra body field": (_payload(body=_body(colour="red")), None,
                         "bad TaskStatus body: colour: Extra inputs are not permitted"),
    "bad nested field": (json.dumps({**example_envelope("TrainCommand"), "body": {
        **example_envelope("TrainCommand")["body"], "config": {"classes": ["ok"]}}}).encode(), None,
        "bad TrainCommand body: config.classes"),
    "bad base64": (json.dumps({**example_envelope("ModelChunk"), "body": {
        **example_envelope("ModelChunk")["body"], "data": "AA=A!"}}).encode(), None,
        "bad ModelChunk body: data"),
}


@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
def test_decode_errors_are_clear(case: str) -> None:
    payload, allowed, reason = BAD_PAYLOADS[case]
    assert len(payload) <= MAX_PAYLOAD_BYTES
    with pytest.raises(MessageError) as exc:
        decode(payload, allowed)
    assert reason in str(exc.value)


def test_oversized_payload() -> None:
    payload = encode(example_body("ErrorReport"), sender="s")
    assert decode(payload, max_bytes=len(payload)).type == "ErrorReport"
    with pytest.raises(MessageError, match=f"payload of {len(payload)} bytes exceeds the limit of {len(payload) - 1}"):
        decode(payload, max_bytes=len(payload) - 1)
    huge = encode(ErrorReport(code="big", message="x" * MAX_PAYLOAD_BYTES), sender="s")
    with pytest.raises(MessageError, match="exceeds the limit"):
        decode(huge)


def test_non_finite_numbers_are_refused_where_made() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        EpochMetrics(task="t", epoch=1, epochs=1, loss=float("nan"), accuracy=0.5, duration_s=1)
    payload = encode(ErrorReport(code="c", message="m", detail={"x": float("inf")}), sender="s")
    assert b"Infinity" not in payload and json.loads(payload)["body"]["detail"] == {"x": None}


def test_bodies_are_frozen() -> None:
    body = example_body("TaskStatus")
    with pytest.raises(ValidationError):
        body.reason = "changed"  # type: ignore[misc]
    assert isinstance(body, TaskStatus)


# ---- deduplication --------------------------------------------------------------------------------

def test_deduplicator_drops_repeats() -> None:
    d = Deduplicator()
    assert [d.seen(i) for i in ("a", "b", "a", "b", "c")] == [False, False, True, True, False]


def test_deduplicator_forgets_beyond_its_size() -> None:
    d = Deduplicator(size=3)
    for i in ("a", "b", "c"):
        assert not d.seen(i)
    assert d.seen("a")            # refreshes "a": "b" is now the oldest
    assert not d.seen("d")        # forgets "b"
    assert d.seen("a") and d.seen("c") and d.seen("d")
    assert not d.seen("b")        # forgotten, so new again


def test_duplicate_deliveries_are_recognised_by_id() -> None:
    payload = encode(example_body("TaskStatus"), sender="s1/l1")
    d = Deduplicator()
    assert [d.seen(decode(payload).id) for _ in range(3)] == [False, True, True]


# ---- model chunks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [CHUNK_DATA, bytes(range(256)), random.Random(7).randbytes(300_000), b"\x00"])
def test_chunk_data_round_trip(data: bytes) -> None:
    chunk = ModelChunk(model="m1", index=4, sha256=hashlib.sha256(data).hexdigest(), data=data)
    assert chunk.data == data
    payload = encode(chunk, sender="s1/l1")
    wire = json.loads(payload)["body"]["data"]
    assert wire == base64.b64encode(data).decode()  # standard base64, no line breaks
    got = decode(payload, allowed=("ModelChunk",)).body
    assert isinstance(got, ModelChunk)
    assert got.data == data and hashlib.sha256(got.data).hexdigest() == chunk.sha256
    assert ModelChunk.model_validate({**chunk.model_dump(mode="json")}).data == data


def test_chunk_data_must_be_bytes_or_base64() -> None:
    with pytest.raises(ValidationError, match="expected base64 text or bytes"):
        ModelChunk(model="m", index=0, sha256="0" * 64, data=12)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="invalid base64"):
        ModelChunk.model_validate({"model": "m", "index": 0, "sha256": "0" * 64, "data": "AAAA\nAAAA"})


# ---- training configuration -----------------------------------------------------------------------

@pytest.mark.parametrize("config, reason", [
    ({"classes": ["ok", "ng", "ok"]}, "classes must be unique"),
    ({"classes": ["ok"]}, "at least 2"),
    ({"classes": ["ok", "ng"], "generators": {"class_weights": {"ok": 1.0, "dent": 2.0}}},
     "class_weights name unknown classes ['dent']"),
    ({"classes": ["ok", "ng"], "fine_tune": {"enabled": True}}, "fine_tune needs a pretrained base"),
    ({"classes": ["ok", "ng"], "pretrained": {"source": "file"}}, "path is required when source is 'file'"),
    ({"classes": ["ok", "ng"], "epochs": 0}, "epochs"),
    ({"classes": ["ok", "ng"], "learning_rate": 1.5}, "learning_rate"),
    ({"classes": ["ok", "ng"], "optimiser": "adam"}, "Extra inputs are not permitted"),
    ({"classes": ["ok", "ng"], "architecture": "resnet"}, "architecture"),
])
def test_training_config_validation(config: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError) as exc:
        TrainingConfig.model_validate(config)
    assert reason in str(exc.value)


def test_valid_training_configs() -> None:
    TrainingConfig(classes=["ok", "ng"])
    TrainingConfig.model_validate({"classes": ["ok", "ng"], "generators": {"class_weights": {"ng": 3.0}}})
    TrainingConfig.model_validate({"classes": ["ok", "ng"], "architecture": "efficientnet_b0",
                                   "fine_tune": {"enabled": True}, "pretrained": {"source": "file", "path": "w.h5"}})


def test_invalid_config_inside_a_command_is_a_message_error() -> None:
    env = example_envelope("TrainCommand")
    env["body"]["config"]["fine_tune"] = {"enabled": True}
    env["body"]["config"]["architecture"] = "small_cnn"
    with pytest.raises(MessageError, match="bad TrainCommand body: config: Value error, fine_tune needs"):
        decode(json.dumps(env).encode(), allowed=("TrainCommand",))
    assert isinstance(example_body("TrainCommand"), TrainCommand)


@pytest.mark.parametrize("base_model", [None, "", "v3", "A" * 64])
def test_a_command_starting_from_a_base_model_names_its_sha256(base_model: str | None) -> None:
    env = example_envelope("TrainCommand")
    env["body"]["config"]["pretrained"] = {"source": "base_model"}
    env["body"]["base_model"] = base_model
    with pytest.raises(MessageError, match="pretrained.source 'base_model' needs base_model: the sha256 of the "
                                           "registry model to start from"):
        decode(json.dumps(env).encode(), allowed=("TrainCommand",))
    env["body"]["base_model"] = "ab" * 32
    assert decode(json.dumps(env).encode(), allowed=("TrainCommand",)).body.base_model == "ab" * 32
