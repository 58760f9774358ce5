"""Training from a registry model (``pretrained.source: base_model``): the edge fetches the base model from
the cloud when it does not have it, starts from its weights, and says so; a missing or unfitting base
model fails the task with the reason, before any data is collected."""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np
from edge_support import TF_WARNINGS
from node_support import BRAND, Cloud, Plant, edge_config, training_config

from edge_node.architectures import build_model
from edge_node.export import export_model
from edge_node.node import EdgeNode
from fabbus.messages import CollectionProgress, TrainCommand
from fabbus.model_bundle import read_bundle

pytestmark = TF_WARNINGS


def base_bundle(tmp: Path) -> tuple[Path, str, keras.Model]:
    """A model as another line's edge would have trained and uploaded it (its own seed, not the edge's 42)."""
    keras.utils.set_random_seed(7)
    cfg = training_config()
    model = build_model(cfg)
    exported = export_model(model, cfg, tmp / "base", brand=BRAND)
    return exported.path, exported.sha256, model


def kernels(model: keras.Model) -> list[np.ndarray]:
    return [w.numpy() for w in model.get_layer("base").weights if "kernel" in w.path]


def uploaded_model(path: Path) -> keras.Model:
    with tempfile.TemporaryDirectory() as tmp:
        return keras.models.load_model(read_bundle(path).extract_keras(Path(tmp) / "model.keras"), compile=False)


def collected(cloud: Cloud, task: str) -> list[CollectionProgress]:
    return [b for b in cloud.progress.bodies(task) if isinstance(b, CollectionProgress)]


def test_training_starts_from_a_registry_model_fetched_from_the_cloud(broker, tmp_path: Path, monkeypatch) -> None:
    base_path, sha, base = base_bundle(tmp_path)
    # a learning rate so small that one epoch leaves the kernels where they started: they must be the base's
    still = training_config(epochs=1, learning_rate=1e-9, pretrained={"source": "base_model"})
    with Plant(tmp_path, broker, monkeypatch) as plant:
        plant.add("d1", per_class=8)
        with Cloud(broker, tmp_path) as cloud, EdgeNode(edge_config(tmp_path, broker, plant.urls)) as edge:
            cloud.models = {sha: (base_path, BRAND)}
            cloud.send(TrainCommand(task="b1", brand=BRAND, detectors=["d1"], config=still, base_model=sha))
            done = cloud.wait_state("b1", "SUCCEEDED", "FAILED", timeout=180)
            assert done.state.value == "SUCCEEDED", done.reason
            assert done.details["started_from"] == {"source": "base_model", "sha256": sha, "fetched": True}
            assert (tmp_path / "edge" / "models" / f"{sha}.zip").is_file()  # fetched into the edge's model cache
            trained = uploaded_model(cloud.uploaded[done.details["model"]])
            for got, want in zip(kernels(trained), kernels(base), strict=True):
                np.testing.assert_allclose(got, want, atol=1e-5)
            fresh = kernels(build_model(training_config()))  # what a start without the base would have had
            assert not np.allclose(fresh[0], kernels(base)[0], atol=1e-3)

            # the next task from the same base takes it from the cache
            cloud.models = {}
            cloud.send(TrainCommand(task="b2", brand=BRAND, detectors=["d1"], config=still, base_model=sha))
            again = cloud.wait_state("b2", "SUCCEEDED", "FAILED", timeout=180)
            assert again.state.value == "SUCCEEDED", again.reason
            assert again.details["started_from"] == {"source": "base_model", "sha256": sha, "fetched": False}
            assert edge.runner.idle()


def test_a_missing_or_unfitting_base_model_fails_before_collecting(broker, tmp_path: Path, monkeypatch) -> None:
    base_path, sha, _ = base_bundle(tmp_path)
    unknown = "0" * 64
    with Plant(tmp_path, broker, monkeypatch) as plant:
        plant.add("d1", per_class=8)
        with Cloud(broker, tmp_path) as cloud, EdgeNode(edge_config(tmp_path, broker, plant.urls)) as edge:
            cloud.models = {sha: (base_path, BRAND)}
            cloud.send(TrainCommand(task="m1", brand=BRAND, detectors=["d1"], base_model=unknown,
                                    config=training_config(pretrained={"source": "base_model"})))
            failed = cloud.wait_state("m1", "FAILED", "SUCCEEDED", timeout=60)
            assert failed.reason == (f"base model {unknown[:12]}: the cloud has no model {unknown[:16]}...: "
                                     f"unknown model {unknown!r}: not in the registry"), failed.reason

            mobilenet = training_config(architecture="mobilenet_v2", alpha=0.35, pretrained={"source": "base_model"})
            cloud.send(TrainCommand(task="m2", brand=BRAND, detectors=["d1"], base_model=sha, config=mobilenet))
            failed = cloud.wait_state("m2", "FAILED", "SUCCEEDED", timeout=60)
            assert failed.reason == (f"invalid training configuration: base model {sha[:12]} is a small_cnn, the "
                                     "training config asks for mobilenet_v2"), failed.reason
            assert not collected(cloud, "m1") and not collected(cloud, "m2")  # no image was fetched for them
            assert edge.runner.idle() and edge.client.stats["handler_error"] == 0
