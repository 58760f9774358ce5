"""The dashboard in headless Chromium, on the whole cloud: embedded broker, huey workers, listener,
and a simulated line edge (a real bus client) that accepts commands and reports progress.

An engineer logs in, starts a training on line s1/l1 from the form, watches the progress bar and the
charts move as the edge publishes (no reload), gets the model into the registry (a real upload over
the bus, evaluated by the gate), and deploys it from the registry page, watching per-detector progress.
Screenshots go to /tmp/fabedge-*.png.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from backend_support import Stack, make_bundle, metrics, no_handler_errors, wait_until  # noqa: F401
from browser_support import CHROMIUM, CHROMIUM_ARGS, PASSWORD, Live, live_cloud
from cloud_app import queries
from fabbus.messages import DeploymentProgress, DetectorDeployment, EpochMetrics, TrainingProgress

SHOTS = Path(os.environ.get("FAB_SCREENSHOTS", "/tmp"))
# Debian's chromium is installed by `make setup`; without it this test fails loudly (never skips).
assert Path(CHROMIUM).exists(), f"Debian's chromium is required at {CHROMIUM} (make setup installs it)"


@pytest.fixture
def live(broker_factory: Any, tmp_path: Path) -> Iterator[Live]:
    stack = Stack.create("sqlite", tmp_path)
    try:
        with live_cloud(broker_factory("embedded"), stack, tmp_path) as live:
            yield live
    finally:
        stack.drop()


@pytest.fixture
def page(live: Live) -> Iterator[Page]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(base_url=live.url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def percent(page: Page, selector: str) -> float:
    return float(page.locator(selector).get_attribute("data-percent") or 0)


def points(page: Page, canvas: str) -> int:
    return int(page.locator(canvas).get_attribute("data-points") or 0)


def progress(task: str, epoch: int, batch: int, batches: int = 4, epochs: int = 2) -> TrainingProgress:
    done = (epoch - 1) * batches + batch
    return TrainingProgress(task=task, epoch=epoch, epochs=epochs, batch=batch, batches=batches,
                            percent=100 * done / (epochs * batches), accuracy=0.4 + 0.06 * done, loss=1.2 / done,
                            eta_s=2.0 * (epochs * batches - done))


def test_train_watch_and_deploy(live: Live, page: Page, tmp_path: Path) -> None:
    edge = live.edge
    page.goto("/fleet")                                              # redirected to the login form
    page.fill("#username", "erin")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Fleet")
    expect(page.locator('[data-node-key="s1/l1"] .node-state')).to_have_text("online")   # the edge's birth
    page.screenshot(path=str(SHOTS / "fabedge-fleet.png"), full_page=True)

    # the training form: a bad value first, then a good form
    page.goto("/train")
    page.select_option("#f-line", "s1/l1")
    page.select_option("#f-brand", "brandA")
    expect(page.locator("#f-classes")).to_have_value("good, scratch, spot")                 # from the brand
    expect(page.locator('[data-detectors-of="s1/l2"]')).to_be_hidden()
    page.check('input[value="s1/l1|d1"]')
    page.fill("#f-epochs", "0")
    page.fill("#f-generators\\.batch_size", "8")
    page.click("#start-training")
    expect(page.locator("#error-epochs")).to_contain_text("greater than or equal to 1")
    page.screenshot(path=str(SHOTS / "fabedge-train-form.png"), full_page=True)
    page.fill("#f-epochs", "2")
    page.click("#start-training")
    expect(page.locator("h1")).to_contain_text("Training")
    task = page.url.rsplit("/", 1)[1]
    expect(page.locator("#task-state")).to_have_text("ACCEPTED")       # huey -> bus -> edge -> listener -> SSE
    assert edge.commands_of(task)[0].body.config.generators.batch_size == 8

    page.evaluate("window.__sameDocument = true")                      # proves there is no reload below
    tasks_page = page.context.new_page()
    tasks_page.goto("/tasks")
    edge.status(task, "IN_PROGRESS", "training")
    seen = []
    for batch in range(1, 5):
        edge.publish("task_progress", progress(task, 1, batch), task=task)
        page.wait_for_function(f"document.querySelector('#chart-batch').dataset.points >= {2 * batch}")
        seen.append(percent(page, "#task-progress .bar"))
    assert seen == sorted(seen) and seen[-1] == 50.0, seen               # the bar moved with each batch
    edge.publish("task_metrics", EpochMetrics(task=task, epoch=1, epochs=2, loss=0.5, accuracy=0.8, val_loss=0.6,
                                              val_accuracy=0.75, duration_s=3.2), task=task)
    expect(page.locator("#epoch-rows tr")).to_have_count(1)
    expect(page.locator("#epoch-rows")).to_contain_text("0.7500")
    expect(page.locator("#task-epoch")).to_have_text("1 / 2")
    edge.publish("task_progress", progress(task, 2, 2), task=task)
    tasks_page.wait_for_function(
        f"document.querySelector('[data-task-id=\"{task}\"] .bar').dataset.percent >= 75")   # the list is live too
    expect(tasks_page.locator(f'[data-task-id="{task}"] .badge')).to_have_text("IN_PROGRESS")
    tasks_page.screenshot(path=str(SHOTS / "fabedge-tasks.png"), full_page=True)
    tasks_page.close()
    edge.publish("task_metrics", EpochMetrics(task=task, epoch=2, epochs=2, loss=0.3, accuracy=0.9, val_loss=0.4,
                                              val_accuracy=0.85, duration_s=3.0), task=task)
    expect(page.locator("#epoch-rows tr")).to_have_count(2)
    assert points(page, "#chart-epoch") >= 8 and points(page, "#chart-batch") >= 10
    page.screenshot(path=str(SHOTS / "fabedge-task-training.png"), full_page=True)

    # the edge uploads the trained model; the gate evaluates it; the task ends
    result = live.uploader.upload(make_bundle(tmp_path / "m.bundle"), "m-1", task=task, data_snapshot="snap-7",
                                  metrics=metrics(0.9), confusion_matrix=[[9, 1, 0], [1, 9, 0], [0, 1, 9]],
                                  training_config={"epochs": 2})
    assert result.state == "ACCEPTED", result
    edge.status(task, "SUCCEEDED", "model uploaded")
    expect(page.locator("#task-state")).to_have_text("SUCCEEDED")
    expect(page.locator("#task-root")).to_have_attribute("data-ended", "SUCCEEDED")
    expect(page.locator("#produced-models a")).to_have_text("brandA v1")           # fetched when it ended
    assert page.evaluate("window.__sameDocument") is True
    with live.cloud.db.session(readonly=True) as s:
        version_id = queries.registry(s, line="s1/l1")[0]["id"]
    wait_until(lambda: _gate(live, version_id) != "pending", what="the gate")

    # the registry page, then deploy from it
    page.goto("/models")
    row = page.locator(f'[data-model-id="{version_id}"]')
    expect(row.locator(".badge").first).to_have_text("approved")
    expect(row).to_contain_text(task)
    page.screenshot(path=str(SHOTS / "fabedge-models.png"), full_page=True)
    page.click(f'[data-model-id="{version_id}"] [data-deploy]')
    expect(page.locator("#f-model_version")).to_have_value(str(version_id))
    expect(page.locator("#f-line")).to_have_value("s1/l1")
    page.check('input[value="s1/l1|d1"]')
    page.check('input[value="s1/l1|d2"]')
    page.check("#f-canary")
    page.click("#start-deploy")
    expect(page.locator("h1")).to_contain_text("Deployment")
    deploy = page.url.rsplit("/", 1)[1]
    expect(page.locator("#task-state")).to_have_text("ACCEPTED")
    assert edge.commands_of(deploy)[0].body.canary is True
    edge.publish("task_progress", DeploymentProgress(task=deploy, percent=25, detectors={
        "d1": DetectorDeployment(state="DOWNLOADING", percent=50),
        "d2": DetectorDeployment(state="PENDING", percent=0)}),
        task=deploy)
    expect(page.locator('[data-detector="d1"] .badge')).to_have_text("DOWNLOADING")
    assert percent(page, '[data-detector="d1"] .bar') == 50
    time.sleep(0.2)
    edge.publish("task_progress", DeploymentProgress(task=deploy, percent=75, detectors={
        "d1": DetectorDeployment(state="ACTIVE", percent=100), "d2": DetectorDeployment(state="LOADING", percent=50)}),
        task=deploy)
    expect(page.locator('[data-detector="d1"] .badge')).to_have_text("ACTIVE")
    expect(page.locator('[data-detector="d2"] .badge')).to_have_text("LOADING")
    page.screenshot(path=str(SHOTS / "fabedge-deploy.png"), full_page=True)
    edge.publish("task_progress", DeploymentProgress(task=deploy, percent=100, detectors={
        "d1": DetectorDeployment(state="ACTIVE", percent=100), "d2": DetectorDeployment(state="ACTIVE", percent=100)}),
        task=deploy)
    edge.status(deploy, "SUCCEEDED", "deployed", kind="deploy")
    expect(page.locator("#task-state")).to_have_text("SUCCEEDED")
    expect(page.locator('[data-detector="d2"] .badge')).to_have_text("ACTIVE")
    page.goto(f"/models/{version_id}")
    expect(page.locator("h1")).to_contain_text("brandA v1")
    expect(page.locator("table.cm")).to_be_visible()
    page.screenshot(path=str(SHOTS / "fabedge-model.png"), full_page=True)


def _gate(live: Live, version_id: int) -> str:
    with live.cloud.db.session(readonly=True) as s:
        return str(queries.model_detail(s, version_id)["gate_state"])
