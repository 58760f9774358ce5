"""Sending tasks to the edges and following them; the bodies of the huey tasks (cloud_app.tasks).

dispatch(db, bus, cfg, task_id)
    Publishes the task's command on its line's ``edge_command`` topic (QoS 1) and waits
    for the edge's acknowledgement: the listener records the edge's TaskStatus, so the
    wait polls the task row. No answer within ``ack_timeout_s``: publish again, up to
    ``ack_retries`` times, then TIMED_OUT. Every attempt is a TaskEvent (DISPATCHED).
    An edge must treat a repeated command for a task it knows as a request to report
    that task's status again (commands are at-least-once).
send_cancel(db, bus, cfg, task_id, reason)
    Publishes a CancelCommand and waits (as above) for the edge to report a final state.
follow(db, cfg, enqueue)
    The periodic check: QUEUED tasks whose dispatch was lost are enqueued again (safe:
    never accepted), or TIMED_OUT once their attempts are spent; ACCEPTED/IN_PROGRESS
    tasks become INTERRUPTED when their edge went offline (its last will) or fell silent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fabbus.client import BusClient
from fabbus.errors import DeliveryTimeout, NotConnectedError
from fabbus.messages import Body, CancelCommand, DeployCommand, TrainCommand
from fabbus.training_config import TrainingConfig

from cloud_app.config import CloudConfig
from cloud_app.db import Database
from cloud_app.fleet import edge_of
from cloud_app.models import ACTIVE_TASK_STATES, Change, Task, now
from cloud_app.services import record, set_state

log = logging.getLogger(__name__)


def command_for(task: Task) -> Body:
    if task.kind == "train":
        return TrainCommand(task=task.id, brand=task.brand, detectors=list(task.detectors),
                            config=TrainingConfig.model_validate(task.config), base_model=task.base_model)
    if task.kind == "deploy":
        mv = task.model_version
        if mv is None:
            raise ValueError(f"deploy task {task.id} has no model version")
        return DeployCommand(task=task.id, brand=task.brand, detectors=list(task.detectors), model=mv.sha256,
                             version=mv.version, sha256=mv.sha256, canary=bool(task.config.get("canary")))
    raise ValueError(f"task {task.id} of kind {task.kind!r} has no command")


def _publish(bus: BusClient, body: Body, task_id: str, ids: dict[str, str], timeout: float) -> str:
    """Publish QoS 1 and wait for the broker's PUBACK; '' or why it failed."""
    try:
        bus.publish("edge_command", body, correlation_id=task_id, **ids).wait(timeout)
    except (DeliveryTimeout, NotConnectedError) as exc:
        return f"broker did not acknowledge the command: {exc}"
    return ""


def _wait(db: Database, task_id: str, until: float, done: Callable[[Task], bool], poll: float) -> bool:
    while True:
        with db.session(readonly=True) as s:
            task = s.get(Task, task_id)
            if task is None or done(task):
                return True
        if time.monotonic() >= until:
            return False
        time.sleep(poll)


def dispatch(db: Database, bus: BusClient, cfg: CloudConfig, task_id: str) -> str:
    """Send a QUEUED task to its edge until acknowledged; the task's state afterwards."""
    d = cfg.dispatch
    attempts = d.ack_retries + 1
    holding = False  # this call holds the dispatch lease (after its first attempt)
    while True:
        with db.session() as s:
            task = s.get(Task, task_id)
            if task is None:
                log.warning("dispatch: no task %s", task_id)
                return "MISSING"
            if task.state != "QUEUED" or task.accepted_at is not None:
                return task.state
            if not holding and task.dispatch_lease is not None and task.dispatch_lease > now():
                log.info("dispatch of %s skipped: another worker holds it until %.1f", task_id, task.dispatch_lease)
                return task.state
            if task.dispatch_attempts >= attempts:
                edge = task.line.key
                set_state(s, task, "TIMED_OUT", f"no acknowledgement from edge {edge} after {task.dispatch_attempts} "
                                                f"attempt(s), {d.ack_timeout_s:g} s each")
                return task.state
            body, ids = command_for(task), {"site": task.line.site.name, "line": task.line.name}
            holding = True
            task.dispatch_attempts += 1
            task.dispatched_at = now()
            task.dispatch_lease = task.dispatched_at + d.ack_timeout_s + 2 * d.poll_interval_s
            record(s, task, "DISPATCHED", f"attempt {task.dispatch_attempts} of {attempts}",
                   details={"attempt": task.dispatch_attempts, "topic": "edge_command", "edge": task.line.key})
        deadline = time.monotonic() + d.ack_timeout_s
        error = _publish(bus, body, task_id, ids, d.ack_timeout_s)
        if error:
            log.warning("dispatch of %s: %s", task_id, error)
            with db.session() as s:
                task = s.get(Task, task_id)
                if task is not None:
                    record(s, task, "DISPATCH_FAILED", error)
        if _wait(db, task_id, deadline, lambda t: t.state != "QUEUED" or t.accepted_at is not None,
                 d.poll_interval_s):
            with db.session(readonly=True) as s:
                task = s.get(Task, task_id)
                return task.state if task else "MISSING"
        log.info("no acknowledgement of %s within %.1f s", task_id, d.ack_timeout_s)


def send_cancel(db: Database, bus: BusClient, cfg: CloudConfig, task_id: str, reason: str = "") -> bool:
    """Ask the edge to cancel a task; True once the edge reported a final state for it."""
    d = cfg.dispatch
    with db.session(readonly=True) as s:
        task = s.get(Task, task_id)
        if task is None:
            return False
        ids = {"site": task.line.site.name, "line": task.line.name}
    body = CancelCommand(task=task_id, reason=reason[:500])
    for attempt in range(1, d.ack_retries + 2):
        deadline = time.monotonic() + d.ack_timeout_s
        error = _publish(bus, body, task_id, ids, d.ack_timeout_s)
        if error:
            log.warning("cancel of %s: %s", task_id, error)
        if _wait(db, task_id, deadline, lambda t: t.state in ("REJECTED", "SUCCEEDED", "FAILED", "CANCELED")
                 and t.edge_status_ts is not None and t.edge_status_ts >= (t.cancel_requested_at or 0) - 60,
                 d.poll_interval_s):
            return True
        log.info("cancel of %s not confirmed (attempt %s)", task_id, attempt)
    with db.session() as s:
        task = s.get(Task, task_id)
        if task is not None:
            record(s, task, "CANCEL_UNCONFIRMED", f"edge {task.line.key} did not confirm the cancel")
    return False


def follow(db: Database, cfg: CloudConfig, enqueue: Callable[[str], object],
           at: float | None = None) -> dict[str, list[str]]:
    """One pass of the task follower; what it did, by action."""
    d, t = cfg.dispatch, at or now()
    done: dict[str, list[str]] = {"redispatched": [], "timed_out": [], "interrupted": []}
    with db.session() as s:
        for task in s.scalars(select(Task).where(Task.state.in_(ACTIVE_TASK_STATES)).order_by(Task.created_at)):
            if task.state == "QUEUED" and task.accepted_at is None:
                _follow_queued(s, task, cfg, t, done)
            else:
                _follow_running(s, task, d.silence_timeout_s, t, done)
        s.execute(delete(Change).where(Change.ts < t - cfg.change_retention_s))
    for task_id in done["redispatched"]:
        enqueue(task_id)
    if any(done.values()):
        log.info("follower: %s", {k: v for k, v in done.items() if v})
    return done


def _follow_queued(s: Session, task: Task, cfg: CloudConfig, t: float, done: dict[str, list[str]]) -> None:
    d = cfg.dispatch
    if task.dispatch_lease is not None and task.dispatch_lease > t:
        return  # a worker is waiting for the ack
    if task.dispatch_attempts >= d.ack_retries + 1:
        set_state(s, task, "TIMED_OUT", f"no acknowledgement from edge {task.line.key} after "
                                        f"{task.dispatch_attempts} attempt(s)")
        done["timed_out"].append(task.id)
        return
    last = max(task.created_at, task.dispatched_at or 0, task.dispatch_lease or 0)
    if t - last >= d.redispatch_after_s:
        task.dispatch_lease = None
        task.dispatched_at = t  # not sent yet; keeps the next pass from enqueueing it again
        record(s, task, "REDISPATCH", f"not acknowledged after {t - last:.0f} s; dispatching again")
        done["redispatched"].append(task.id)


def _follow_running(s: Session, task: Task, silence_s: float, t: float, done: dict[str, list[str]]) -> None:
    edge = edge_of(s, task.line)
    heard = task.last_heard_at or task.accepted_at or task.dispatched_at or task.created_at
    if edge is not None and not edge.online and edge.state_ts is not None and edge.state_ts >= heard - 1:
        why = f"edge {edge.key} went offline" + (f" ({edge.reason})" if edge.reason else "")
        set_state(s, task, "INTERRUPTED", why, details={"edge_state_ts": edge.state_ts})
        done["interrupted"].append(task.id)
    elif t - heard > silence_s:
        set_state(s, task, "INTERRUPTED", f"no news from edge {task.line.key} for {t - heard:.0f} s "
                                          f"(limit {silence_s:g} s)")
        done["interrupted"].append(task.id)
