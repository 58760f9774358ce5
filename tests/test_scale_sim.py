"""The scale bench's simulated plant, small and fast: every node connects and every message flows.

Runs the bench's own load code (bench.scale_load.measure: a node process, the cloud
monitor, commands) against each broker, with 3 lines x 2 detectors for a few seconds.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from bench.scale_load import Plan, measure, users_for
from bench.sim_nodes import LinePlan, Traffic, plant_nodes
from bench.sim_pool import NodePool

PLAN = Plan(lines=3, detectors=2, training=1, duration=3.0, warmup=0.5, command_rate=10.0, procs=1, batch=4,
            traffic=Traffic(status_period=0.5, progress_hz=10.0, batches=5))


@pytest.mark.parametrize("kind", ["embedded", "mosquitto"])
def test_simulated_plant_connects_and_messages_flow(kind: str, broker_factory, tmp_path: Path) -> None:
    broker = broker_factory(kind, users=users_for(PLAN, lambda: secrets.token_urlsafe(12)), cloud_users=["cloud"])
    raw = measure(broker, PLAN, tmp_path)

    assert (raw["ready"], raw["connected"], raw["nodes"]) == (9, 9, 9)
    assert raw["refused"] == 0 and raw["disconnects"] == 0
    sent = raw["sent"]
    assert sent["edge.birth"] == 3 and sent["detector.birth"] == 6
    assert sent["edge.offline"] == 3 and sent["detector.offline"] == 6
    assert sent["detector.status"] >= 6 * 2 and sent["edge.progress"] >= 10 and sent["edge.metrics"] >= 1
    # QoS 1: births, offline states, epoch metrics, command acks and the commands themselves, none lost
    assert raw["commands_sent"] >= 10
    assert raw["commands_received"] == raw["commands_sent"] == sent["edge.ack"]
    assert len(raw["cmd_latency"]) == len(raw["rtt"]) >= 10      # those sent in the measured window
    assert raw["settle_s"] is not None and raw["births_s"] is not None
    assert raw["qos1_received"] == raw["qos1_sent"]
    assert raw["duplicates"] == 0
    # QoS 0 on 127.0.0.1 at this rate: everything arrives, at the cloud and at each line's edge
    assert raw["qos0"]["detector_status"][1] == raw["qos0"]["detector_status"][0] > 0
    assert raw["qos0"]["task_progress"][1] == raw["qos0"]["task_progress"][0] > 0
    assert raw["fanout"][1] == raw["fanout"][0] > 0
    assert 0 < max(raw["cmd_latency"]) < 5.0
    assert raw["cpu_pct"]["broker"] >= 0 and raw["broker_rss"] > 0


def test_refused_login_is_counted_not_hung(embedded_broker, tmp_path: Path) -> None:
    """A node with a wrong password is refused and reported; the others still connect."""
    lines = [LinePlan("s1", "l1", ("d1",))]
    users = dict(embedded_broker.users)
    users["s1/l1/det/d1"] = "wrong password"
    pool = NodePool(embedded_broker.host, embedded_broker.port, plant_nodes(lines, users))
    try:
        ready = pool.connect_all(timeout=10.0)
    finally:
        pool.close(timeout=2.0)
    stats = pool.stats()
    assert ready == 1
    assert (stats["connected"], stats["refused"]) == (1, 1)
