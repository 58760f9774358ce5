"""Deployment tasks end to end: the edge fetches the model from the cloud and delivers it to real detectors.

Detectors are in-process DetectorNodes (LiteRT loads the delivered bundle and swaps it
in); the cloud is a BusClient serving fetches with fabbus' Sender.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_support import TF_WARNINGS
from node_support import BRAND, Cloud, Plant, edge_config, make_bundle

from edge_node.node import EdgeNode
from fabbus.messages import DeployCommand, DeploymentProgress
from fabbus.model_bundle import sha256_file

pytestmark = TF_WARNINGS


def deploy(task: str, bundle: Path, detectors: list[str], **kw: Any) -> DeployCommand:
    sha = sha256_file(bundle)
    return DeployCommand(task=task, brand=BRAND, detectors=detectors, model=sha, version=kw.pop("version", 1),
                         sha256=sha, **kw)


def progress(cloud: Cloud, task: str) -> list[DeploymentProgress]:
    return [b for b in cloud.progress.bodies(task) if isinstance(b, DeploymentProgress)]


def active_sha(plant: Plant, det: str) -> str | None:
    store = plant.nodes[det].store
    entry = store.active(BRAND)
    return entry.sha256 if entry is not None else None


def test_a_model_reaches_two_detectors_and_a_canary_goes_first(broker, tmp_path: Path,
                                                              monkeypatch) -> None:
    m1, m2 = make_bundle(tmp_path / "m1.zip", tag=1.0), make_bundle(tmp_path / "m2.zip", tag=2.0)
    with Plant(tmp_path, broker, monkeypatch) as plant:
        plant.add("d1")
        plant.add("d2")
        with Cloud(broker, tmp_path) as cloud, EdgeNode(edge_config(tmp_path, broker, plant.urls)):
            cloud.models = {sha256_file(m): (m, BRAND) for m in (m1, m2)}
            cloud.send(deploy("p1", m1, ["d1", "d2"]))
            done = cloud.wait_state("p1", "SUCCEEDED", "FAILED")
            assert done.state.value == "SUCCEEDED", done.reason
            assert cloud.states("p1") == ["ACCEPTED", "IN_PROGRESS", "SUCCEEDED"]
            assert {det: d["state"] for det, d in done.details["detectors"].items()} == {"d1": "ACTIVE",
                                                                                        "d2": "ACTIVE"}
            assert active_sha(plant, "d1") == active_sha(plant, "d2") == sha256_file(m1)
            last = progress(cloud, "p1")[-1]
            assert last.percent == 100 and all(d.state == "ACTIVE" for d in last.detectors.values())
            assert any(d.state == "DOWNLOADING" for p in progress(cloud, "p1") for d in p.detectors.values())
            assert (tmp_path / "edge" / "models" / f"{sha256_file(m1)}.zip").is_file()  # fetched once, cached

            cloud.send(deploy("p2", m2, ["d1", "d2"], version=2, canary=True))
            assert cloud.wait_state("p2", "SUCCEEDED", "FAILED").state.value == "SUCCEEDED"
            steps = [(p.detectors["d1"].state, p.detectors["d2"].state) for p in progress(cloud, "p2")]
            assert ("ACTIVE", "PENDING") in steps  # the canary was ACTIVE before the second one started
            assert all(d1 == "ACTIVE" for d1, d2 in steps if d2 != "PENDING"), steps
            assert active_sha(plant, "d1") == active_sha(plant, "d2") == sha256_file(m2)


def test_failed_deployments_name_the_detectors_and_why(broker, tmp_path: Path, monkeypatch) -> None:
    good = make_bundle(tmp_path / "good.zip", tag=3.0)
    bad = make_bundle(tmp_path / "bad.zip", classes=["good", "scratch"], tag=4.0)  # not the brand's classes
    missing = make_bundle(tmp_path / "missing.zip", tag=5.0)
    with Plant(tmp_path, broker, monkeypatch) as plant:
        plant.add("d1")
        plant.add("d2")
        urls = {**plant.urls, "d3": "http://127.0.0.1:9"}  # configured, never started: it answers nothing
        cfg = edge_config(tmp_path, broker, urls, transfer={"delivery_timeout_s": 3})
        with Cloud(broker, tmp_path) as cloud, EdgeNode(cfg) as edge:
            cloud.models = {sha256_file(m): (m, BRAND) for m in (good, bad)}

            cloud.send(deploy("canary", bad, ["d1", "d2"], canary=True))
            failed = cloud.wait_state("canary", "FAILED", "SUCCEEDED")
            assert failed.reason.startswith("2 of 2 detector(s) failed: d1 FAILED: ") and failed.reason.endswith(
                "; d2 not deployed: canary d1 did not become ACTIVE"), failed.reason
            assert "classes" in failed.details["detectors"]["d1"]["reason"]
            assert failed.details["detectors"]["d2"]["state"] == "PENDING"
            assert active_sha(plant, "d1") is None and active_sha(plant, "d2") is None

            cloud.send(deploy("nomodel", missing, ["d1"]))
            failed = cloud.wait_state("nomodel", "FAILED", "SUCCEEDED")
            assert failed.reason == (f"the cloud has no model {sha256_file(missing)[:16]}...: unknown model "
                                     f"'{sha256_file(missing)}': not in the registry")

            cloud.send(deploy("nodet", good, ["d1", "d7"]))
            assert cloud.wait_state("nodet", "REJECTED").reason == "unknown detector(s) ['d7']: line s1/l1 has " \
                                                                   "['d1', 'd2', 'd3']"

            plant.nodes["d2"].close()  # its offline state is on the bus (retained)
            cloud.send(deploy("offline", good, ["d1", "d2"]))
            failed = cloud.wait_state("offline", "FAILED", "SUCCEEDED")
            assert failed.reason == "1 of 2 detector(s) failed: d2 FAILED: offline (shutdown)"
            assert failed.details["detectors"]["d1"]["state"] == "ACTIVE"
            assert active_sha(plant, "d1") == sha256_file(good)

            cloud.send(deploy("silent", good, ["d3"]))
            failed = cloud.wait_state("silent", "FAILED", "SUCCEEDED")
            assert failed.reason == ("1 of 1 detector(s) failed: d3 FAILED: timeout: not ACTIVE within 3 s "
                                     "(last state DOWNLOADING at 0%)")

            cloud.send(deploy("again", good, ["d1"]))  # the edge keeps serving (and the model is cached)
            assert cloud.wait_state("again", "SUCCEEDED", "FAILED").state.value == "SUCCEEDED"
            assert edge.runner.idle() and edge.client.stats["handler_error"] == 0
