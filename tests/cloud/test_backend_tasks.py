"""Tasks end to end: the back end (huey workers, listener) against a simulated edge over real brokers.

The edge is a real BusClient with role edge. Stores: SQLite + SqliteHuey, or PostgreSQL + RedisHuey.
"""

from __future__ import annotations

import pytest

from backend_support import (ALL, HALF, TRAIN_CONFIG, Cloud, Env, SimEdge, env, ids, no_handler_errors,  # noqa: F401
                             running_cloud, state_is, task_of, wait_until)
from cloud_app import queries
from cloud_app.listener import Listener
from fabbus.client import ReceivedMessage
from fabbus.messages import (CancelCommand, CollectionProgress, EpochMetrics, NodeState, TaskStatus, TrainCommand,
                             TrainingProgress, encode)
from helpers import EDGE_L1, connect



def edge_reason(cloud: Cloud) -> str:
    with cloud.db.session(readonly=True) as s:
        return str(queries.fleet(s)[0]["lines"][0]["edge"]["reason"])


def train(cloud: Cloud, line: str = "s1/l1") -> str:
    return cloud.backend.create_train_task(line=line, brand="brandA", detectors=["d1"], config=TRAIN_CONFIG,
                                           user="alice")["id"]


@pytest.mark.parametrize("env", ALL, indirect=True, ids=ids(ALL))
def test_train_task_is_dispatched_accepted_followed_and_succeeds(env: Env) -> None:
    with running_cloud(env.config) as cloud, SimEdge(env.broker) as edge:
        tid = train(cloud)
        wait_until(lambda: state_is(cloud, tid, "ACCEPTED"), what="ACCEPTED")
        cmd = edge.commands_of(tid)[0]
        assert isinstance(cmd.body, TrainCommand) and cmd.body.config.epochs == 2 and cmd.body.detectors == ["d1"]
        edge.status(tid, "IN_PROGRESS", "collecting data")
        edge.publish("task_progress", CollectionProgress(task=tid, detector="d1", samples_total=60, samples_fetched=60,
                                                         samples_cached=0, bytes_fetched=9000, percent=100), task=tid)
        for batch in (1, 2, 3):
            edge.publish("task_progress", TrainingProgress(task=tid, epoch=1, epochs=2, batch=batch, batches=3,
                                                           percent=batch * 100 / 6, accuracy=round(0.3 * batch, 2),
                                                           loss=1.0 / batch), task=tid)
        metric = EpochMetrics(task=tid, epoch=1, epochs=2, loss=0.5, accuracy=0.9, val_loss=0.6, val_accuracy=0.85,
                              duration_s=1.5)
        edge.publish("task_metrics", metric, task=tid)
        edge.publish("task_metrics", metric, task=tid)  # a repeat (new message id): still one row
        wait_until(lambda: len(task_of(cloud, tid)["points"]) == 3 and task_of(cloud, tid)["epochs"], what="points")
        edge.status(tid, "SUCCEEDED", "model uploaded")
        wait_until(lambda: state_is(cloud, tid, "SUCCEEDED"), what="SUCCEEDED")
        detail = task_of(cloud, tid)
        states = [e["state"] for e in detail["events"]]
        assert states == ["QUEUED", "DISPATCHED", "ACCEPTED", "IN_PROGRESS", "SUCCEEDED"], states
        assert detail["percent"] == 100 and detail["progress"]["type"] == "TrainingProgress"
        assert detail["progress"]["collection"]["d1"]["samples_total"] == 60
        assert [(p["batch"], p["accuracy"]) for p in detail["points"]] == [(1, 0.3), (2, 0.6), (3, 0.9)]
        assert [(m["epoch"], m["val_accuracy"]) for m in detail["epochs"]] == [(1, 0.85)]
        assert detail["dispatch_attempts"] == 1 and detail["finished_at"] is not None
        with cloud.db.session(readonly=True) as s:
            fleet = queries.fleet(s)[0]["lines"][0]["edge"]
            assert fleet["online"] is True and fleet["last_seen"] is not None
        # a listener that starts again gets the retained status and progress replayed: nothing changes
        with Listener(cloud.backend, node=f"{env.config.node}-again") as again:
            wait_until(lambda: again.stats["persisted"] >= 2, what="retained replay")
        assert task_of(cloud, tid)["events"] == detail["events"]


@pytest.mark.parametrize("env", HALF, indirect=True, ids=ids(HALF))
def test_rejected_task_keeps_the_edges_reason(env: Env) -> None:
    def reject(edge: SimEdge, rm: ReceivedMessage) -> None:
        edge.status(rm.body.task, "REJECTED", "detector d1 has no images for class spot")  # type: ignore[attr-defined]

    with running_cloud(env.config) as cloud, SimEdge(env.broker, answer=reject):
        tid = train(cloud)
        wait_until(lambda: state_is(cloud, tid, "REJECTED"), what="REJECTED")
        detail = task_of(cloud, tid)
        assert detail["reason"] == "detector d1 has no images for class spot"
        assert detail["events"][-1]["source"] == "edge" and detail["accepted_at"] is None


@pytest.mark.parametrize("env", HALF, indirect=True, ids=ids(HALF))
def test_unanswered_command_is_retried_then_timed_out(env: Env) -> None:
    with running_cloud(env.config) as cloud, SimEdge(env.broker, answer=None) as edge:
        tid = train(cloud)
        wait_until(lambda: state_is(cloud, tid, "TIMED_OUT"), timeout=20, what="TIMED_OUT")
        assert len(edge.commands_of(tid)) == 2  # ack_retries=1: sent twice
        detail = task_of(cloud, tid)
        assert [e["state"] for e in detail["events"]] == ["QUEUED", "DISPATCHED", "DISPATCHED", "TIMED_OUT"]
        assert "no acknowledgement from edge s1/l1 after 2 attempt(s)" in detail["reason"]
        # a late acknowledgement still counts: the edge's word wins over the cloud's timeout
        edge.status(tid, "ACCEPTED")
        wait_until(lambda: state_is(cloud, tid, "ACCEPTED"), what="late ACCEPTED")


@pytest.mark.parametrize("env", HALF, indirect=True, ids=ids(HALF))
def test_edge_last_will_interrupts_its_running_task_and_a_resumed_edge_continues(env: Env) -> None:
    with running_cloud(env.config) as cloud:
        edge = SimEdge(env.broker, close_timeout=0.2).__enter__()
        try:
            tid = train(cloud)
            wait_until(lambda: state_is(cloud, tid, "ACCEPTED"), what="ACCEPTED")
            edge.status(tid, "IN_PROGRESS")
            wait_until(lambda: state_is(cloud, tid, "IN_PROGRESS"), what="IN_PROGRESS")
            edge.sever()  # the broker publishes the edge's last will; the follower (every 1 s) notices
            wait_until(lambda: state_is(cloud, tid, "INTERRUPTED"), timeout=20, what="INTERRUPTED")
        finally:
            edge.__exit__()
        detail = task_of(cloud, tid)
        assert "edge s1/l1 went offline (connection lost)" in detail["reason"]
        with SimEdge(env.broker, answer=None) as back:
            back.status(tid, "IN_PROGRESS", "resumed from checkpoint")
            wait_until(lambda: state_is(cloud, tid, "IN_PROGRESS"), what="resumed")
        wait_until(lambda: edge_reason(cloud) == "shutdown", what="offline state after a clean close")


@pytest.mark.parametrize("env", HALF, indirect=True, ids=ids(HALF))
def test_cancel_of_a_running_and_of_a_queued_task(env: Env) -> None:
    with running_cloud(env.config) as cloud, SimEdge(env.broker) as edge:
        tid = train(cloud)
        wait_until(lambda: state_is(cloud, tid, "ACCEPTED"), what="ACCEPTED")
        task = cloud.backend.cancel_task(tid, user="carol", reason="wrong brand")
        assert task["state"] == "ACCEPTED" and task["cancel_requested_by"] == "carol"
        wait_until(lambda: state_is(cloud, tid, "CANCELED"), what="CANCELED")
        cancel = [c for c in edge.commands_of(tid) if isinstance(c.body, CancelCommand)]
        assert cancel and cancel[0].body.reason == "wrong brand"  # type: ignore[attr-defined]
        states = [e["state"] for e in task_of(cloud, tid)["events"]]
        assert states[-2:] == ["CANCEL_REQUESTED", "CANCELED"]
    with running_cloud(env.config, consumer=False) as cloud:  # no worker: the task stays queued
        tid = train(cloud, "s1/l2")
        assert cloud.backend.cancel_task(tid, user="carol")["state"] == "CANCELED"


@pytest.mark.parametrize("env", HALF, indirect=True, ids=ids(HALF))
def test_bad_messages_do_not_stop_the_listener(env: Env) -> None:
    with running_cloud(env.config) as cloud, SimEdge(env.broker) as edge:
        tid = train(cloud)
        wait_until(lambda: state_is(cloud, tid, "ACCEPTED"), what="ACCEPTED")
        topic = edge.client.contract.topic("task_status").format(site="s1", line="l1", task=tid)
        other = {"task": "train-unknown", "kind": "train", "state": "FAILED"}
        with connect(env.broker, EDGE_L1) as raw:
            for payload in (b"\xff\xfe not utf-8", b"{not json", b'{"schema": 1, "type": "TaskStatus"}',
                            encode(NodeState(online=True, role="edge", node="x", since=0), sender="s1/l1"),
                            encode(TaskStatus.model_validate(other), sender="s1/l1"),
                            encode(TaskStatus(task=tid, kind="train", state="FAILED"), sender="s1/l1", msg_id="dup"),
                            encode(TaskStatus(task=tid, kind="train", state="FAILED"), sender="s1/l1", msg_id="dup")):
                raw.publish(topic, payload, qos=1)
        wait_until(lambda: state_is(cloud, tid, "FAILED"), what="FAILED after the bad ones")
        # the repeat is dropped on the dispatcher thread after the first one set FAILED: wait for it to be counted
        wait_until(lambda: cloud.listener.bus.stats["duplicate"] >= 1, what="the repeated message id dropped")
        stats = cloud.listener.bus.stats
        assert stats["malformed"] >= 2 and stats["invalid"] >= 1 and stats["wrong_type"] >= 1
        assert stats["duplicate"] >= 1
        assert [e["state"] for e in task_of(cloud, tid)["events"]].count("FAILED") == 1
        edge.status(tid, "SUCCEEDED")  # after a final state, later news is recorded, not applied
        wait_until(lambda: task_of(cloud, tid)["events"][-1]["state"] == "SUCCEEDED", what="recorded")
        assert state_is(cloud, tid, "FAILED") and cloud.listener.stats["errors"] == 0
