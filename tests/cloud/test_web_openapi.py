"""The OpenAPI document: complete, valid, and true (fuzzed with schemathesis: no 500s, answers as documented)."""

from __future__ import annotations

import re
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from web_support import (add_users, add_version, app, bearer, client, cloud_config, db_kind)  # noqa: F401 (fixtures)


def test_document_lists_every_api_route(app: Flask, client: FlaskClient) -> None:
    doc = client.get("/api/v1/openapi.json").get_json()            # public: no token needed
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            routes |= {(m, path) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    assert routes == documented
    train = doc["paths"]["/api/v1/tasks/train"]["post"]
    assert set(train["responses"]) >= {"201", "401", "403", "404", "422"}
    schema = doc["components"]["schemas"]
    assert {"TrainingConfig", "GeneratorConfig", "FineTuneConfig", "TrainTaskRequest", "ErrorOut"} <= set(schema)
    assert doc["paths"]["/api/v1/tasks/{task_id}/events"]["get"]["responses"]["200"]["content"] == {
        "text/event-stream": {"schema": {"type": "string"}}}


CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]


@pytest.mark.parametrize("db_kind", ["sqlite", "postgres"])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_fuzz(app: Flask, mode: GenerationMode) -> None:
    """Every operation (event streams aside: test_web_sse), valid and invalid inputs, as an admin."""
    token = add_users(app)["admin"]
    add_version(app)                       # something to find, deploy and fetch
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app).exclude(tag="events")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=bearer(token), checks=CHECKS)

        run()
