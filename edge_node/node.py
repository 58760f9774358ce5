"""One line's edge server: takes the line's tasks from the bus, runs them one at a time, reports every step.

    node = EdgeNode(load_config("config/edge.yaml")).start()
    ...
    node.close()          # the running task stops where it is and resumes at the next start

Commands arrive on the line's ``edge_command`` (its own site and line only). Each is
answered on its retained ``task_status``: ACCEPTED, or REJECTED with the reason
(unknown detector, brand or class, an invalid training configuration, busy). Accepted
tasks run on the TaskRunner's worker: IN_PROGRESS, then SUCCEEDED, FAILED with the
reason, or CANCELED. A command for a task id already known is never run again: the
same content is answered with the task's status as it stands (the cloud's retries and
QoS 1 redeliveries), other content is refused on ``edge_error``. Tasks that were
accepted or running when the edge stopped run again at start, resuming their work.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any, Self

from edge_node import architectures
from edge_node.bus_reporter import BusReporter
from edge_node.config import EdgeConfig
from edge_node.deploy_task import run_deploy
from edge_node.errors import InvalidTrainingConfig, TrainingCanceled, TrainingError
from edge_node.services import Services
from edge_node.task_store import TaskRecord
from edge_node.tasks import Job, TaskFailed, TaskRunner, TaskStopped
from edge_node.train_task import run_train
from fabbus.client import BrokerUnreachable, BusClient, InvalidMessage, ReceivedMessage
from fabbus.messages import (
    CancelCommand,
    DeployCommand,
    ErrorReport,
    TaskState,
    TaskStatus,
    TrainCommand,
)
from fabbus.topics import ID_RE
from fabbus.training_config import TrainingConfig

log = logging.getLogger(__name__)

VERSION = "edge_node 0.1"


class EdgeNode:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.client = BusClient(config.mqtt, "edge", config.ids.model_dump(), version=VERSION)
        self.services = Services.open(config, self.client)
        self.store = self.services.store
        self.runner = TaskRunner(self._run, config.limits.queue_size)
        self._lock = threading.Lock()  # one decision at a time about a task id
        self.reporter: BusReporter | None = None  # the latest task's (counters for tests and benchmarks)

    # ---- lifecycle

    def start(self) -> EdgeNode:
        s, c = self.services, self.client
        c.subscribe("edge_command", self.on_edge_command, on_invalid=self.on_invalid_edge_command)
        c.subscribe("model_upload_request", s.uploads.on_model_upload_request)
        c.subscribe("model_upload_result", s.uploads.on_model_upload_result)
        c.subscribe("model_fetch_manifest", s.fetches.on_model_fetch_manifest)
        c.subscribe("model_fetch_chunk", s.fetches.on_model_fetch_chunk)
        c.subscribe("delivery_request", s.deployer.on_delivery_request)
        c.subscribe("delivery_status", s.deployer.on_delivery_status)
        c.subscribe("detector_state", s.deployer.on_detector_state)
        c.connect(wait=False)
        try:
            c.wait_connected()
        except BrokerUnreachable as exc:
            log.warning("%s; still retrying, tasks resume meanwhile", exc)
        for record in self.store.unfinished():
            log.info("task %s (%s) was %s when the edge stopped: running it again", record.task, record.kind,
                     record.state.value)
            self.runner.submit(Job(record, _command(record), resumed=True), force=True)
        self.runner.start()
        log.info("edge %s serving detectors %s, brands %s", c.node, list(self.config.detectors),
                 list(self.config.brands))
        return self

    def close(self) -> None:
        self.runner.close()
        self.client.close()
        self.services.close()
        log.info("edge %s stopped", self.client.node)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the command handler (the bus client's dispatcher thread): decide, record, answer, queue

    def on_edge_command(self, msg: ReceivedMessage) -> None:
        body = msg.body
        with self._lock:
            if isinstance(body, CancelCommand):
                self._cancel(body)
            else:
                self._receive(body)  # type: ignore[arg-type]

    def on_invalid_edge_command(self, bad: InvalidMessage) -> None:
        """A command that failed validation: REJECTED with the reason when it names a new task, else reported."""
        kind = _KINDS.get(bad.type)
        task = bad.correlation_id
        with self._lock:
            if kind in ("train", "deploy") and task and ID_RE.match(task) and self.store.get(task) is None:
                reason = f"invalid {bad.type}: {bad.reason}"
                self._publish(TaskRecord(task, kind, None, TaskState.REJECTED, reason))  # not kept: may come back
            else:
                self._error("invalid_command", f"invalid {bad.type or 'message'} from {bad.sender!r}: {bad.reason}",
                            task=task)

    def _receive(self, cmd: TrainCommand | DeployCommand) -> None:
        kind = "train" if isinstance(cmd, TrainCommand) else "deploy"
        content = cmd.model_dump(mode="json")
        known = self.store.get(cmd.task)
        if known is not None and known.command is None:  # it was canceled before it arrived
            known.kind, known.command = kind, content
            self._publish(self.store.save(known))
        elif known is not None and known.command == content:
            log.info("task %s received again: reporting its state %s", cmd.task, known.state.value)
            self._publish(known)
        elif known is not None:
            self._error("duplicate_task", f"task id {cmd.task} is already used by another {known.kind} task "
                        f"({known.state.value}); the new command is ignored", task=cmd.task)
        elif reason := self._check(cmd):
            self._publish(self.store.save(TaskRecord(cmd.task, kind, content, TaskState.REJECTED, reason)))
        elif busy := self.runner.busy():
            self._publish(TaskRecord(cmd.task, kind, content, TaskState.REJECTED, busy))  # not kept: may come back
        else:
            record = self.store.save(TaskRecord(cmd.task, kind, content, TaskState.ACCEPTED))
            self._publish(record)
            self.runner.submit(Job(record, cmd))

    def _cancel(self, cmd: CancelCommand) -> None:
        why = f"canceled: {cmd.reason}" if cmd.reason else "canceled"
        known = self.store.get(cmd.task)
        if known is None:  # remembered, so that the task never runs if its command comes late
            self._publish(self.store.save(TaskRecord(cmd.task, "cancel", None, TaskState.CANCELED,
                                                     f"{why} before the edge received the task")))
        elif known.final:
            self._publish(known)  # the cloud waits for a final state: here it is again
        elif self.runner.cancel(cmd.task, why) == "running":
            log.info("task %s: cancel asked; it stops within one batch", cmd.task)
        else:
            self._publish(self.store.update(cmd.task, TaskState.CANCELED, why))

    def _check(self, cmd: TrainCommand | DeployCommand) -> str:
        """Why the command is refused at once, or ''."""
        line = f"{self.config.ids.site}/{self.config.ids.line}"
        unknown = [d for d in cmd.detectors if d not in self.config.detectors]
        if unknown:
            return f"unknown detector(s) {unknown}: line {line} has {list(self.config.detectors)}"
        if cmd.brand not in self.config.brands:
            return f"unknown brand {cmd.brand!r}: line {line} inspects {list(self.config.brands)}"
        if isinstance(cmd, TrainCommand):
            return self._check_training(cmd.config, cmd.brand)
        return ""

    def _check_training(self, config: TrainingConfig, brand: str) -> str:
        known = self.config.brands[brand].classes
        unknown = [c for c in config.classes if c not in known]
        if unknown:
            return f"unknown class(es) {unknown} for brand {brand}: its classes are {known}"
        try:
            architectures.check_input_size(config)
        except InvalidTrainingConfig as exc:
            return f"invalid training configuration: {exc}"
        pre = config.pretrained
        if pre.source == "file" and not Path(pre.path or "").is_file():
            return f"invalid training configuration: pretrained weights file {pre.path} not found on the edge"
        if pre.source == "deployed" and self.services.deployed_bundle(brand) is None:
            return (f"invalid training configuration: pretrained.source is 'deployed' but the edge has no "
                    f"deployed model of brand {brand}")
        return ""

    # ---- the worker thread: the task's boundary

    def _run(self, job: Job) -> None:
        task = job.task
        if job.cancel.is_set():  # stopped as it was taken from the queue (a queued cancel is reported at once)
            if job.stop_reason == "cancel":
                self._publish(self.store.update(task, TaskState.CANCELED, job.stop_detail or "canceled"))
            return
        reporter = self.reporter = BusReporter(self.client, task, self.config.progress_interval_s)
        resumed = {"resumed": True} if job.resumed else {}
        self._publish(self.store.update(task, TaskState.IN_PROGRESS,
                                        "resumed after a restart" if job.resumed else "", resumed))
        state, reason, details = TaskState.SUCCEEDED, "", {}
        try:
            run = run_train if isinstance(job.command, TrainCommand) else run_deploy
            details = run(self.services, job, reporter)
        except (TaskStopped, TrainingCanceled) as exc:
            if job.stop_reason == "shutdown":
                log.info("task %s interrupted by the shutdown (%s): it resumes at the next start", task, exc)
                return
            state, reason = TaskState.CANCELED, job.stop_detail or "canceled"
            details = {"stopped_at": str(exc)} if isinstance(exc, TrainingCanceled) else {}
        except TaskFailed as exc:
            state, reason, details = TaskState.FAILED, str(exc), exc.details
        except InvalidTrainingConfig as exc:
            state, reason = TaskState.FAILED, f"invalid training configuration: {exc}"
        except TrainingError as exc:
            state, reason = TaskState.FAILED, str(exc)
        except Exception as exc:  # boundary: one task's bug never stops the edge
            log.exception("task %s failed unexpectedly", task)
            state, reason = TaskState.FAILED, f"internal error: {type(exc).__name__}: {exc}"
        shutil.rmtree(self.store.folder(task) / "train", ignore_errors=True)  # checkpoints: the task is over
        self._publish(self.store.update(task, state, reason, details))
        log.info("task %s %s %s", task, state.value, reason)

    # ---- publishing

    def _publish(self, record: TaskRecord) -> None:
        kind = record.kind if record.kind in ("train", "deploy", "cancel") else "cancel"
        status = TaskStatus(task=record.task, kind=kind, state=record.state,  # type: ignore[arg-type]
                            reason=record.reason[:2000], details=record.details)
        log.info("task %s %s %s", record.task, record.state.value, record.reason)
        self.client.publish("task_status", status, task=record.task, correlation_id=record.task)

    def _error(self, code: str, message: str, **detail: Any) -> None:
        log.warning("%s: %s", code, message)
        self.client.publish("edge_error", ErrorReport(code=code, message=message[:1000], topic="edge_command",
                                                      detail=detail))


_KINDS = {"TrainCommand": "train", "DeployCommand": "deploy", "CancelCommand": "cancel"}


def _command(record: TaskRecord) -> TrainCommand | DeployCommand:
    assert record.command is not None
    return (TrainCommand if record.kind == "train" else DeployCommand).model_validate(record.command)
