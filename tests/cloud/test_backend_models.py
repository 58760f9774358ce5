"""Models end to end: uploads into the registry, the evaluation gate, deployment reports and fetches.

A simulated edge uploads real tiny LiteRT bundles with fabbus' Sender over real brokers; a
detector client reports delivery and status; the edge fetches a registered model with a Receiver.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend_support import (ALL, HALF, TRAIN_CONFIG, Cloud, Env, SimEdge, Uploader, env, ids, make_bundle,  # noqa: F401
                             metrics, mqtt_for, no_handler_errors, running_cloud, state_is, wait_until)
from cloud_app import queries
from cloud_app.models import ModelVersion, Task
from fabbus.client import BusClient, ReceivedMessage
from fabbus.messages import (ActiveModel, ChunkRequest, DeliveryStatus, DeployCommand, DeploymentProgress,
                             DetectorDeployment, DetectorStatus, ModelManifest, TransferResult)
from fabbus.model_bundle import sha256_file
from fabbus.transfer import Receiver, make_manifest
from helpers import DET_L1_D1


@pytest.fixture
def parts(env: Env) -> Iterator[tuple[Cloud, SimEdge, Uploader]]:
    with running_cloud(env.config) as cloud, SimEdge(env.broker) as edge:
        uploader = Uploader(edge)
        try:
            yield cloud, edge, uploader
        finally:
            uploader.close()


def version(cloud: Cloud, version_id: int) -> dict[str, Any]:
    with cloud.db.session(readonly=True) as s:
        return queries.model_detail(s, version_id)


def version_id(cloud: Cloud, number: int) -> int:
    with cloud.db.session(readonly=True) as s:
        return next(r["id"] for r in queries.registry(s, line="s1/l1", brand="brandA") if r["version"] == number)


def evaluated(cloud: Cloud, vid: int) -> dict[str, Any]:
    return wait_until(lambda: (v := version(cloud, vid))["gate_state"] != "pending" and v, what=f"gate of {vid}")


@pytest.mark.parametrize("env", ALL, indirect=True, ids=ids(ALL))
def test_upload_gate_deploy_and_a_worse_model_rejected(env: Env, parts: Any, tmp_path: Path) -> None:
    cloud, edge, uploader = parts
    tid = cloud.backend.create_train_task(line="s1/l1", brand="brandA", detectors=["d1"], config=TRAIN_CONFIG,
                                          user="alice")["id"]
    wait_until(lambda: state_is(cloud, tid, "ACCEPTED"), what="ACCEPTED")
    good = make_bundle(tmp_path / "good.bundle", tag=1.0)
    result = uploader.upload(good, "up-1", task=tid, data_snapshot="snap-1", metrics=metrics(0.9),
                             confusion_matrix=[[9, 1, 0], [1, 9, 0], [0, 1, 9]], training_config=TRAIN_CONFIG)
    assert (result.state, result.version) == ("ACCEPTED", 1), result
    v1 = evaluated(cloud, version_id(cloud, 1))
    assert v1["gate_state"] == "approved", v1["gate_reasons"]
    assert v1["lineage"]["task"] == tid and v1["lineage"]["data_snapshot"] == "snap-1"
    assert v1["sha256"] == sha256_file(good) and v1["confusion_matrix"][0] == [9, 1, 0]
    assert {c["name"] for c in v1["evaluation"]["checks"]} >= {"integrity", "signature", "latency", "recall"}
    assert v1["evaluation"]["latency_ms"]["p50"] > 0
    assert cloud.backend.store.path_for(v1["sha256"]).is_file()
    # the same upload again is the same version
    assert uploader.upload(good, "up-1-again", task=tid).version == 1

    # deploy v1 to d1: the edge accepts, reports progress; the detector reports ACTIVE
    dep = cloud.backend.create_deploy_task(line="s1/l1", brand="brandA", detectors=["d1"], model_version=v1["id"],
                                           user="alice")["id"]
    wait_until(lambda: state_is(cloud, dep, "ACCEPTED"), what="deploy ACCEPTED")
    cmd = edge.commands_of(dep)[0].body
    assert isinstance(cmd, DeployCommand) and (cmd.model, cmd.version) == (v1["sha256"], 1)
    edge.publish("task_progress", DeploymentProgress(task=dep, percent=50, detectors={
        "d1": DetectorDeployment(state="DOWNLOADING", percent=50)}), task=dep)
    wait_until(lambda: version(cloud, v1["id"])["deployments"][0]["state"] == "DOWNLOADING", what="progress")
    det = BusClient(mqtt_for(env.broker, DET_L1_D1), "detector", {"site": "s1", "line": "l1", "det": "d1"})
    with det:
        det.publish("delivery_status", DeliveryStatus(model=v1["sha256"], brand="brandA", version=1, state="ACTIVE",
                                                      percent=100, sha256=v1["sha256"]), brand="brandA",
                    correlation_id=dep).wait(5)  # a detector names the deploy task it answers
        det.publish("detector_status", DetectorStatus(inspected=10, ng=2, missed=0, latency_ms_p50=0.2,
                                                      active_models={"brandA": ActiveModel(
                                                          model=v1["sha256"], version=1, sha256=v1["sha256"])}))
        wait_until(lambda: version(cloud, v1["id"])["active_on"] == ["s1/l1/det/d1"], what="active on d1")
        edge.status(dep, "SUCCEEDED", kind="deploy")
        wait_until(lambda: state_is(cloud, dep, "SUCCEEDED"), what="deploy SUCCEEDED")
        assert version(cloud, v1["id"])["deployments"][0]["state"] == "ACTIVE"
        with cloud.db.session(readonly=True) as s:
            d1 = queries.fleet(s)[0]["lines"][0]["detectors"][0]
            assert d1["online"] and d1["models"]["brandA"]["version"] == 1 and d1["status"]["inspected"] == 10

    # a worse model (accuracy 0.80 vs the deployed 0.90) from v1: registered as v2, rejected by the gate
    worse = make_bundle(tmp_path / "worse.bundle", tag=2.0)
    result = uploader.upload(worse, "up-2", task=tid, base_model=v1["sha256"], metrics=metrics(0.8))
    assert (result.state, result.version) == ("ACCEPTED", 2)
    v2 = evaluated(cloud, version_id(cloud, 2))
    assert v2["gate_state"] == "rejected" and v2["lineage"]["parent"]["version"] == 1
    assert any(r.startswith("baseline: accuracy 0.8000 vs deployed v1 0.9000") for r in v2["gate_reasons"])
    assert v2["evaluation"]["baseline"]["version"] == 1


@pytest.mark.parametrize("env", HALF, indirect=True, ids=ids(HALF))
def test_bad_uploads_are_rejected_and_reported_to_the_edge(env: Env, parts: Any, tmp_path: Path) -> None:
    cloud, edge, uploader = parts
    good = make_bundle(tmp_path / "m.bundle", tag=3.0)
    wrong = make_manifest(good, model="up-bad-hash", brand="brandA", chunk_size=4096).model_copy(
        update={"sha256": "0" * 64})
    result = uploader.send(good, wrong)  # every chunk is fine, the whole file never matches
    assert result.state == "REJECTED" and "does not match the manifest" in result.reason, result
    weak = uploader.upload(make_bundle(tmp_path / "weak.bundle", tag=4.0), "up-weak",
                           metrics=metrics(0.9, {"good": 0.99, "scratch": 0.2, "spot": 0.9}))
    assert weak.state == "ACCEPTED"
    gate = evaluated(cloud, version_id(cloud, weak.version or 0))
    assert gate["gate_state"] == "rejected" and gate["gate_reasons"] == ["recall: recall too low: scratch 0.200 < 0.5"]
    two_classes = make_bundle(tmp_path / "b.bundle", brand="brandA", classes=["good", "bad"], tag=5.0)
    sig = uploader.upload(two_classes, "up-classes", metrics=metrics(0.99))
    gate = evaluated(cloud, version_id(cloud, sig.version or 0))
    assert gate["gate_reasons"][0].startswith("signature: model classes ['good', 'bad']")
    other_brand = make_bundle(tmp_path / "z.bundle", brand="brandZ", tag=6.0)
    manifest = make_manifest(other_brand, model="up-z", brand="brandZ", chunk_size=4096)
    assert uploader.send(other_brand, manifest).reason == "unknown brand 'brandZ'"
    assert cloud.listener.stats["errors"] == 0 and cloud.listener.uploads.stats["rejected"] == 2


@pytest.mark.parametrize("env", HALF, indirect=True, ids=ids(HALF))
def test_edge_fetches_a_registered_model_and_is_refused_an_unknown_one(env: Env, parts: Any, tmp_path: Path) -> None:
    cloud, edge, uploader = parts
    bundle = make_bundle(tmp_path / "f.bundle", tag=7.0)
    assert uploader.upload(bundle, "up-f", metrics=metrics(0.9)).version == 1
    sha = sha256_file(bundle)
    refusals: list[TransferResult] = []

    def request(model: str) -> None:
        edge.client.publish("model_fetch_request", ChunkRequest(model=model), model=model).wait(5)

    rx = Receiver(tmp_path / "fetched.bundle", quiet_s=0.5, request=lambda req: edge.client.publish(
        "model_fetch_request", req, model=req.model))

    def on_manifest(rm: ReceivedMessage) -> None:
        if isinstance(rm.body, TransferResult):
            refusals.append(rm.body)
        else:
            rx.on_manifest(rm)

    with rx:
        edge.client.subscribe("model_fetch_manifest", on_manifest).wait(5)
        edge.client.subscribe("model_fetch_chunk", rx.on_chunk).wait(5)
        request(sha)
        status = rx.wait(20, model=sha)
        assert status.state == "COMPLETE" and sha256_file(tmp_path / "fetched.bundle") == sha
        assert status.manifest is not None and status.manifest.version == 1 and status.manifest.brand == "brandA"
        request("f" * 64)
        wait_until(lambda: refusals, what="refusal")
    assert refusals[0].state == "REJECTED" and "unknown model" in refusals[0].reason
    with cloud.db.session(readonly=True) as s:
        assert s.query(Task).count() == 0 and s.query(ModelVersion).count() == 1


@pytest.mark.parametrize("env", HALF, indirect=True, ids=ids(HALF))
def test_another_lines_model_is_fetched_only_when_a_task_of_the_line_names_it(env: Env, parts: Any,
                                                                               tmp_path: Path) -> None:
    cloud, _, uploader = parts
    bundle = make_bundle(tmp_path / "l1.bundle", tag=8.0)
    assert uploader.upload(bundle, "up-l1", metrics=metrics(0.9), training_config=TRAIN_CONFIG).version == 1
    sha, vid = sha256_file(bundle), version_id(cloud, 1)
    answers: list[Any] = []
    with SimEdge(env.broker, line="l2", answer=None) as l2:
        l2.client.subscribe("model_fetch_manifest", lambda rm: answers.append(rm.body)).wait(5)
        l2.client.publish("model_fetch_request", ChunkRequest(model=sha), model=sha).wait(5)
        wait_until(lambda: answers, what="an answer to line 2's fetch")
        assert isinstance(answers[0], TransferResult) and answers[0].state == "REJECTED"
        assert answers[0].reason == f"model {sha!r} is not line s1/l2's: no task of that line names it"

        # a training task of line 2 that starts from it: now line 2's edge may fetch it
        cloud.backend.create_train_task(line="s1/l2", brand="brandA", detectors=["d1"], config=TRAIN_CONFIG,
                                        user="alice", base_model=vid)
        answers.clear()
        l2.client.publish("model_fetch_request", ChunkRequest(model=sha), model=sha).wait(5)
        manifest = wait_until(lambda: next((a for a in answers if isinstance(a, ModelManifest)), None),
                              what="the manifest")
        assert manifest.sha256 == sha and manifest.version == 1
