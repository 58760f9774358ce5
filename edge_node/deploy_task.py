"""A deployment task: the model from the edge's cache or the cloud, then to the named detectors.

    details = run_deploy(services, job, reporter)     # SUCCEEDED with these details; raises otherwise
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edge_node.bus_reporter import BusReporter
from edge_node.services import Services
from edge_node.tasks import Job, TaskFailed
from fabbus.messages import DeployCommand

log = logging.getLogger(__name__)


def run_deploy(s: Services, job: Job, reporter: BusReporter) -> dict[str, Any]:
    cmd: DeployCommand = job.command  # type: ignore[assignment]
    t = s.config.transfer
    bundle = s.fetches.fetch(cmd.model, cmd.sha256, task=job.task, timeout_s=t.fetch_timeout_s, check=job.check)
    job.check()
    outcome = s.deployer.deploy(cmd, bundle, chunk_size=t.chunk_size, timeout_s=t.delivery_timeout_s,
                                check=job.check, report=reporter.publish)
    details = {"model": cmd.model, "version": cmd.version, "brand": cmd.brand, "canary": cmd.canary,
               "detectors": {det: d.model_dump(mode="json") for det, d in outcome.detectors.items()}}
    if not outcome.ok:
        raise TaskFailed(outcome.reason, details)
    s.deployed.record(cmd.brand, model=cmd.model, sha256=cmd.sha256, version=cmd.version,
                      detectors=list(outcome.detectors), task=job.task, at=time.time())
    log.info("task %s: %s v%s ACTIVE on %s", job.task, cmd.model[:12], cmd.version, list(outcome.detectors))
    return details
