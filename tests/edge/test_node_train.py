"""Training tasks end to end: real broker, real detector nodes serving simulator histories, a test cloud.

A train command goes from the cloud to the edge; the edge collects the detectors' images
over HTTP, trains, reports progress and metrics on the bus, uploads the bundle, and
SUCCEEDS with the version the cloud registered. A subscriber to everything under the
prefix proves that no image went over the broker.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
import time

from edge_support import TF_WARNINGS
from helpers import CLOUD, connect
from node_support import BRAND, CLASSES, Cloud, Plant, edge_config, training_config

from edge_node.config import LimitsConfig
from edge_node.node import EdgeNode
from fabbus.messages import (
    CancelCommand,
    CollectionProgress,
    EpochMetrics,
    TrainCommand,
    TrainingProgress,
)
from fabbus.model_bundle import read_bundle, sha256_file
from fabbus.topics import contract

pytestmark = TF_WARNINGS
PNG = b"\x89PNG\r\n\x1a\n"


def _image_free(payload: bytes) -> bool:
    """No PNG in the payload, nor in a chunk's base64 data."""
    if PNG in payload:
        return False
    try:
        data = json.loads(payload)["body"].get("data")
    except (ValueError, KeyError, AttributeError, TypeError):
        return True
    return not (isinstance(data, str) and PNG in base64.b64decode(data))


def test_a_train_task_collects_trains_reports_and_uploads(broker, tmp_path: Path, monkeypatch) -> None:
    with Plant(tmp_path, broker, monkeypatch) as plant, connect(broker, CLOUD) as spy:
        plant.add("d1", per_class=10)
        plant.add("d2", per_class=6, seed=1, first=100)
        spy.subscribe("fab/v1/#", qos=1)
        with Cloud(broker, tmp_path) as cloud, EdgeNode(edge_config(tmp_path, broker, plant.urls)) as edge:
            cloud.send(TrainCommand(task="t1", brand=BRAND, detectors=["d1", "d2"], config=training_config()))
            done = cloud.wait_state("t1", "SUCCEEDED", "FAILED", timeout=180)
            assert done.state.value == "SUCCEEDED", done.reason
            assert cloud.states("t1") == ["ACCEPTED", "IN_PROGRESS", "SUCCEEDED"]

            model = done.details["model"]
            uploaded = cloud.uploaded[model]
            assert sha256_file(uploaded) == model == done.details["sha256"] and done.details["version"] == 1
            bundle = read_bundle(uploaded)
            assert bundle.meta.classes == CLASSES and bundle.meta.brand == BRAND
            assert done.details["data_snapshot"].startswith("snap-")
            assert done.details["samples"]["test"] == 9 and "test_accuracy" in done.details["metrics"]

            collection = [b for b in cloud.progress.bodies("t1") if isinstance(b, CollectionProgress)]
            final = {c.detector: c for c in collection if c.percent == 100}
            assert final["d1"].samples_fetched == 30 and final["d2"].samples_fetched == 18
            assert final["d1"].bytes_fetched == plant.raw_bytes["d1"]
            progress = [b for b in cloud.progress.bodies("t1") if isinstance(b, TrainingProgress)]
            assert progress and progress[-1].percent == 100 and {p.epoch for p in progress} == {1, 2}
            assert all(p.epochs == 2 and p.batches == 4 for p in progress)
            assert all(p.loss is not None and p.accuracy is not None and p.learning_rate for p in progress if p.batch > 1)
            assert progress[-2].eta_s is not None and progress[-1].images_per_s
            metrics = cloud.metrics.wait(lambda bodies: [b for b in bodies if isinstance(b, EpochMetrics)][1:])
            assert [m.epoch for m in metrics] == [2] and edge.reporter.sent["metrics"] == 2
            assert (tmp_path / "edge" / "models" / f"{model}.zip").is_file()  # kept for deployments

        seen = []
        while not spy.messages.empty():
            seen.append(spy.messages.get())
    raw = sum(plant.raw_bytes.values())
    assert all(_image_free(m.payload) for m in seen), "an image went over the broker"
    not_model = sum(len(m.payload) for m in seen if "/upload/" not in m.topic)
    assert 0 < not_model < raw / 5, (not_model, raw)


def _progress_at(cloud: Cloud, task: str, epoch: int) -> None:
    cloud.progress.wait(lambda bodies: [b for b in bodies if isinstance(b, TrainingProgress) and b.task == task
                                        and b.epoch >= epoch], timeout=120, what=f"{task} in epoch {epoch}")


def test_cancel_stops_training_within_a_batch_and_drops_a_queued_task(broker, tmp_path: Path,
                                                                      monkeypatch) -> None:
    with Plant(tmp_path, broker, monkeypatch) as plant:
        plant.add("d1", per_class=10)
        with Cloud(broker, tmp_path) as cloud, EdgeNode(edge_config(tmp_path, broker, plant.urls)) as edge:
            cloud.send(TrainCommand(task="long", brand=BRAND, detectors=["d1"], config=training_config(epochs=200)))
            cloud.send(TrainCommand(task="queued", brand=BRAND, detectors=["d1"], config=training_config()))
            assert cloud.wait_state("queued", "ACCEPTED")
            _progress_at(cloud, "long", 2)
            cloud.send(CancelCommand(task="queued", reason="not needed"))
            assert cloud.wait_state("queued", "CANCELED").reason == "canceled: not needed"
            cloud.send(CancelCommand(task="long", reason="operator"))
            canceled = cloud.wait_state("long", "CANCELED", "SUCCEEDED", "FAILED", timeout=30)
            assert canceled.state.value == "CANCELED" and canceled.reason == "canceled: operator"
            assert canceled.details["stopped_at"].startswith("canceled in phase head, epoch ")
            last = [b for b in cloud.progress.bodies("long") if isinstance(b, TrainingProgress)][-1]
            assert last.epoch < 200
            assert cloud.states("queued") == ["ACCEPTED", "CANCELED"]  # it never ran
            assert not (tmp_path / "edge" / "tasks" / "long" / "train").exists()  # checkpoints removed
            cloud.send(CancelCommand(task="long"))  # a cancel of a finished task: its final state again
            cloud.status.wait(lambda bodies: [b for b in bodies if getattr(b, "task", "") == "long"][3:])
            assert cloud.states("long") == ["ACCEPTED", "IN_PROGRESS", "CANCELED", "CANCELED"]
            cloud.send(CancelCommand(task="early"))  # before its command: remembered, never runs
            cloud.wait_state("early", "CANCELED")
            cloud.send(TrainCommand(task="early", brand=BRAND, detectors=["d1"], config=training_config()))
            cloud.status.wait(lambda bodies: [b for b in bodies if getattr(b, "task", "") == "early"][1:])
            assert cloud.states("early") == ["CANCELED", "CANCELED"] and edge.runner.idle()


def test_a_command_received_twice_runs_once_and_a_full_queue_is_busy(broker, tmp_path: Path,
                                                                     monkeypatch) -> None:
    from fabbus.messages import ErrorReport

    with Plant(tmp_path, broker, monkeypatch) as plant:
        plant.add("d1", per_class=10)
        cfg = edge_config(tmp_path, broker, plant.urls, limits=LimitsConfig(queue_size=1))
        with Cloud(broker, tmp_path) as cloud, EdgeNode(cfg) as edge:
            long = TrainCommand(task="a", brand=BRAND, detectors=["d1"], config=training_config(epochs=200))
            cloud.send(long)
            _progress_at(cloud, "a", 1)
            cloud.send(long)  # the cloud's retry: reported again, not run again
            cloud.status.wait(lambda bodies: [b for b in bodies if getattr(b, "task", "") == "a"][2:])
            assert cloud.states("a") == ["ACCEPTED", "IN_PROGRESS", "IN_PROGRESS"]
            cloud.send(long.model_copy(update={"brand": "brandA"}))  # the same id, other content
            error = cloud.errors.wait(lambda bodies: [b for b in bodies if isinstance(b, ErrorReport)])[0]
            assert error.code == "duplicate_task" and "task id a is already used" in error.message
            cloud.send(TrainCommand(task="b", brand=BRAND, detectors=["d1"], config=training_config()))
            cloud.wait_state("b", "ACCEPTED")
            cloud.send(TrainCommand(task="c", brand=BRAND, detectors=["d1"], config=training_config()))
            busy = cloud.wait_state("c", "REJECTED")
            assert busy.reason == "busy: task a is running and 1 task(s) are queued (queue_size 1)"
            cloud.send(CancelCommand(task="a"))
            cloud.wait_state("a", "CANCELED", timeout=30)
            assert cloud.wait_state("b", "SUCCEEDED", "FAILED", timeout=120).state.value == "SUCCEEDED"
            assert cloud.states("b") == ["ACCEPTED", "IN_PROGRESS", "SUCCEEDED"] and edge.runner.idle()
            assert cloud.states("a").count("IN_PROGRESS") == 2 and len(cloud.uploaded) == 1


def test_bad_input_is_refused_with_a_precise_reason_and_the_edge_keeps_serving(broker, tmp_path: Path,
                                                                               monkeypatch) -> None:
    import keras
    from node_support import TOKEN

    from broker.harness import free_port
    from edge_node.config import DetectorLink

    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    other.save_weights(tmp_path / "other.weights.h5")

    def train(task: str, detectors: list[str] | None = None, brand: str = BRAND, **config: object) -> TrainCommand:
        return TrainCommand(task=task, brand=brand, detectors=detectors or ["d1"], config=training_config(**config))

    with Plant(tmp_path, broker, monkeypatch) as plant:
        plant.add("d1", per_class=8)
        plant.add("d2", per_class=8, classes=["good", "scratch"])  # no "spot" on this station
        urls = {**plant.urls, "d3": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
        cfg = edge_config(tmp_path, broker, urls, transfer={"upload_timeout_s": 2})
        assert cfg.detectors["d3"] == DetectorLink(url=urls["d3"], token=TOKEN)
        with Cloud(broker, tmp_path) as cloud, EdgeNode(cfg) as edge:
            rejected = {
                "r1": (train("r1", classes=["good", "crack"]),
                       "unknown class(es) ['crack'] for brand brandB: its classes are ['good', 'scratch', 'spot']"),
                "r2": (train("r2", detectors=["d1", "d9"]), ("unknown detector(s) ['d9']: line s1/l1 has ['d1', "
                                                             "'d2', 'd3']")),
                "r3": (train("r3", brand="brandZ"), "unknown brand 'brandZ': line s1/l1 inspects ['brandB', 'brandA']"),
                "r4": (train("r4", pretrained={"source": "file", "path": str(tmp_path / "nope.h5")}),
                       (f"invalid training configuration: pretrained weights file {tmp_path / 'nope.h5'} not found "
                        "on the edge")),
                "r5": (train("r5", pretrained={"source": "deployed"}),
                       ("invalid training configuration: pretrained.source is 'deployed' but the edge has no deployed "
                        "model of brand brandB")),
            }
            for task, (cmd, _) in rejected.items():
                cloud.send(cmd)
            for task, (_, reason) in rejected.items():
                status = cloud.wait_state(task, "REJECTED")
                assert status.reason == reason and status.kind == "train"

            # a command whose body fails the schema (epochs 0, as a hand-written script might send) is REJECTED too
            bad = train("r6").model_dump(mode="json")
            bad["config"]["epochs"] = 0
            envelope = {"schema": 1, "type": "TrainCommand", "id": "bad-r6", "correlation_id": "r6",
                        "ts": time.time(), "sender": "integrator", "body": bad}
            with connect(broker, CLOUD) as raw:
                raw.publish(contract().topic("edge_command").format(site="s1", line="l1"), json.dumps(envelope), qos=1)
            status = cloud.wait_state("r6", "REJECTED")
            assert status.kind == "train" and status.reason == (
                "invalid TrainCommand: bad TrainCommand body: config.epochs: Input should be greater than or equal to 1")

            failing = [
                (train("f1", detectors=["d1", "d3"]), f"detector d3 at {urls['d3']} is unreachable: "),
                (train("f2", detectors=["d2"]), ("invalid training configuration: class(es) ['spot'] have no samples "
                                                 "(samples per class: {'good': 8, 'scratch': 8})")),
                (train("f3", pretrained={"source": "file", "path": str(tmp_path / "other.weights.h5")}),
                 f"invalid training configuration: weights file {tmp_path / 'other.weights.h5'} does not fit "),
            ]
            for cmd, reason in failing:
                cloud.send(cmd)
                failed = cloud.wait_state(cmd.task, "FAILED", "SUCCEEDED", timeout=120)
                assert failed.state.value == "FAILED" and failed.reason.startswith(reason), failed.reason

            cloud.answer = "reject"
            cloud.send(train("u1"))
            failed = cloud.wait_state("u1", "FAILED", "SUCCEEDED", timeout=120)
            assert failed.reason.startswith("the cloud rejected model ") and failed.reason.endswith(
                "...: evaluation gate: accuracy 0.31 < 0.9")
            cloud.answer = "silent"
            cloud.send(train("u2", epochs=1))
            failed = cloud.wait_state("u2", "FAILED", "SUCCEEDED", timeout=120)
            assert failed.reason.startswith("the cloud did not answer the upload of model ") and failed.reason.endswith(
                " within 2 s"), failed.reason

            cloud.answer = "accept"
            cloud.send(train("ok", epochs=1))
            assert cloud.wait_state("ok", "SUCCEEDED", "FAILED", timeout=120).state.value == "SUCCEEDED"
            assert edge.runner.idle() and edge.client.stats["handler_error"] == 0
