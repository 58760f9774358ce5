"""Dashboard forms: start a training, deploy a version, cancel a task.

A form that does not validate is shown again with what was typed and a message under
each bad field (status 422); a good one creates the task and opens its live page.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import flash, g, redirect, render_template, request, url_for
from pydantic import ValidationError
from werkzeug.wrappers import Response

from fabbus.training_config import TrainingConfig

from cloud_app import queries, services
from cloud_app.errors import CloudError
from cloud_app.web.api import check_id, db_ref
from cloud_app.web.api_tasks import cancel_and_notify, submit
from cloud_app.web.auth import require
from cloud_app.web.errors import ApiError, field_errors
from cloud_app.web.forms import FormInputError, all_fields, config_from_form, form_groups, form_values
from cloud_app.web.pages import bp
from cloud_app.web.state import db

log = logging.getLogger(__name__)

TRAIN_CONTROLS = {"line", "brand", "detectors", "base_model", *(f.name for f in all_fields())}
DEPLOY_CONTROLS = {"line", "brand", "detectors", "model_version", "canary", "override"}


def _choices() -> dict[str, Any]:
    s = db()
    lines = [ln for site in queries.fleet(s) for ln in site["lines"]]
    return {"lines": lines, "brands": queries.brands(s), "versions": queries.registry(s, limit=500)}


def _form_field(path: str) -> str:
    """The form control an error path names: config.* are the configuration's controls; lists by name."""
    if path.startswith("config."):
        path = path[len("config."):]
    parts = path.split(".")
    if parts[0] in ("detectors",):
        return parts[0]
    return path


def _placed(errors: dict[str, str], controls: set[str]) -> dict[str, str]:
    """Errors of controls stay; the others are said in the form's summary."""
    out = {k: v for k, v in errors.items() if k in controls}
    rest = [f"{k}: {v}" if k != "form" else v for k, v in errors.items() if k not in controls]
    if rest:
        out["form"] = "; ".join(rest)
    return out


def _render_train(values: dict[str, Any], errors: dict[str, str], status: int = 200) -> tuple[str, int]:
    return render_template("train.html", groups=form_groups(), values=values, errors=errors,
                           **_choices()), status


@bp.route("/train", methods=["GET", "POST"])
@require("engineer")
def train() -> Any:
    if request.method == "GET":
        values: dict[str, Any] = {**form_values(None), "line": request.args.get("line", ""),
                                  "brand": request.args.get("brand", ""), "detectors": [], "base_model": ""}
        return _render_train(values, {})
    form = request.form
    values = {**{k: form.get(k, "") for k in form}, "detectors": form.getlist("detectors")}
    for f in (f for grp in form_groups() for f in grp.fields if f.kind == "checkbox"):
        values[f.name] = f.name in form
    line, brand = form.get("line", ""), form.get("brand", "")
    detectors = [d.split("|", 1)[1] for d in form.getlist("detectors") if d.startswith(line + "|")]
    errors: dict[str, str] = {}
    try:
        config = config_from_form(form)
    except FormInputError as exc:
        config, errors = {}, dict(exc.fields)
    if not config.get("classes"):   # blank: the brand's classes
        known = {b["name"]: b["classes"] for b in queries.brands(db())}
        config["classes"] = known.get(brand, [])
    if not errors:
        try:
            TrainingConfig.model_validate(config)   # our messages land on the field a model-level rule names
            task = services.create_train_task(db(), line=line, brand=brand, detectors=detectors, config=config,
                                              user=g.user.username,
                                              base_model=db_ref(form.get("base_model") or None, "model version",
                                                                "base_model"))
            submit(task)
            flash(f"Training task {task.id} queued.", "info")
            return redirect(url_for("pages.task", task_id=task.id))
        except (CloudError, ApiError) as exc:
            db().rollback()
            errors = {_form_field(k): v for k, v in exc.fields.items()} or {"form": exc.message}
        except ValidationError as exc:
            db().rollback()
            errors = {_form_field(k): v for k, v in field_errors(exc).items()}
    if "detectors" not in errors and not detectors and "line" not in errors:
        errors["detectors"] = "choose at least one detector of the line"
    return _render_train(values, _placed(errors, TRAIN_CONTROLS), 422)


@bp.route("/deploy", methods=["GET", "POST"])
@require("engineer")
def deploy() -> Any:
    choices = _choices()
    if request.method == "GET":
        version = request.args.get("version", "")
        pre = next((v for v in choices["versions"] if str(v["id"]) == version), None)
        values: dict[str, Any] = {"line": pre["line"] if pre else request.args.get("line", ""),
                                  "brand": pre["brand"] if pre else "", "model_version": version,
                                  "detectors": [], "canary": False, "override": False}
        return render_template("deploy.html", values=values, errors={}, **choices)
    form = request.form
    line = form.get("line", "")
    detectors = [d.split("|", 1)[1] for d in form.getlist("detectors") if d.startswith(line + "|")]
    values = {"line": line, "brand": form.get("brand", ""), "model_version": form.get("model_version", ""),
              "detectors": form.getlist("detectors"), "canary": "canary" in form, "override": "override" in form}
    try:
        task = services.create_deploy_task(db(), line=line, brand=values["brand"], detectors=detectors,
                                           model_version=db_ref(values["model_version"], "model version",
                                                                "model_version"), user=g.user.username,
                                           canary=values["canary"], override=values["override"])
        submit(task)
        flash(f"Deployment task {task.id} queued.", "info")
        return redirect(url_for("pages.task", task_id=task.id))
    except (CloudError, ApiError) as exc:
        db().rollback()
        errors = {_form_field(k): v for k, v in exc.fields.items()} or {"form": exc.message}
    if "detectors" not in errors and not detectors and "line" not in errors:
        errors["detectors"] = "choose at least one detector of the line"
    return render_template("deploy.html", values=values, errors=_placed(errors, DEPLOY_CONTROLS), **choices), 422


@bp.post("/tasks/<task_id>/cancel")
@require("engineer")
def cancel(task_id: str) -> Response:
    try:
        cancel_and_notify(check_id(task_id, "task"), request.form.get("reason", ""))
        flash("Cancel requested.", "info")
    except CloudError as exc:
        db().rollback()
        flash(f"Cannot cancel: {exc.message}", "error")
    return redirect(url_for("pages.task", task_id=task_id))
