"""The training form, derived from :class:`fabbus.training_config.TrainingConfig`.

Every field of the configuration becomes one form control named by its dotted path
(``generators.batch_size``), so a new field in the configuration appears in the form
by itself, and pydantic's error locations name the control to mark.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from werkzeug.datastructures import MultiDict

from fabbus.training_config import TrainingConfig

GROUP_TITLES = {
    "": "Model",
    "generators": "Data generators",
    "preprocessing": "Preprocessing",
    "augmentation": "Augmentation",
    "pretrained": "Pretrained weights",
    "callbacks": "Callbacks",
    "callbacks.early_stopping": "Callbacks: early stopping",
    "callbacks.learning_rate": "Callbacks: learning-rate schedule",
    "fine_tune": "Fine-tuning",
}

_HELP = {
    "classes": "comma-separated; the first is the good (OK) class",
    "generators.class_weights": "empty for none, 'balanced', or pairs like ok=1, scratch=2.5",
    "input_size": "square input, in pixels",
    "pretrained.path": "weights file on the edge server (when source is 'file')",
}


@dataclass
class FormField:
    name: str
    label: str
    kind: str  # number | checkbox | select | text | list | weights
    default: Any = None
    options: list[str] = field(default_factory=list)
    min: float | None = None
    max: float | None = None
    step: str = "any"
    help: str = ""


@dataclass
class FormGroup:
    key: str
    title: str
    fields: list[FormField] = field(default_factory=list)


def _label(name: str) -> str:
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def _field_for(name: str, annotation: Any, info: Any) -> FormField:
    label = _label(name.rsplit(".", 1)[-1])
    help_text = _HELP.get(name) or (info.description or "")
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if name == "generators.class_weights":
        return FormField(name, label, "weights", default, help=help_text)
    if annotation is bool:
        return FormField(name, label, "checkbox", default, help=help_text)
    if origin is Literal:
        return FormField(name, label, "select", default, options=[str(a) for a in args], help=help_text)
    if origin is list:
        return FormField(name, label, "list", default, help=help_text)
    if annotation in (int, float):
        f = FormField(name, label, "number", default, step="1" if annotation is int else "any", help=help_text)
        for meta in info.metadata:
            if isinstance(meta, (annotated_types.Ge, annotated_types.Gt)):
                f.min = meta.ge if isinstance(meta, annotated_types.Ge) else meta.gt
            if isinstance(meta, (annotated_types.Le, annotated_types.Lt)):
                f.max = meta.le if isinstance(meta, annotated_types.Le) else meta.lt
        return f
    return FormField(name, label, "text", default, help=help_text)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def form_groups(model: type[BaseModel] = TrainingConfig) -> list[FormGroup]:
    """The controls of the form, grouped by nested configuration section."""
    groups: dict[str, FormGroup] = {}

    def walk(cls: type[BaseModel], prefix: str) -> None:
        group = groups.setdefault(prefix, FormGroup(prefix, GROUP_TITLES.get(prefix, _label(prefix))))
        for name, info in cls.model_fields.items():
            path = f"{prefix}.{name}" if prefix else name
            if _is_model(info.annotation):
                walk(info.annotation, path)
            else:
                group.fields.append(_field_for(path, info.annotation, info))

    walk(model, "")
    return [g for g in groups.values() if g.fields]


def all_fields(model: type[BaseModel] = TrainingConfig) -> list[FormField]:
    return [f for g in form_groups(model) for f in g.fields]


class FormInputError(ValueError):
    """A control whose text cannot even be turned into the shape pydantic expects."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def _weights(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    if text == "balanced":
        return "balanced"
    out: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"write class=weight pairs separated by commas, not {item.strip()!r}")
        out[name.strip()] = value.strip()
    return out


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
    tree[parts[-1]] = value


def config_from_form(form: MultiDict[str, str], prefix: str = "") -> dict[str, Any]:
    """The nested dict of the training configuration that the form describes (not yet validated).

    Empty controls are left out so that the configuration's defaults apply; checkboxes
    are false when absent. Raises FormInputError for text that has no shape at all.
    """
    tree: dict[str, Any] = {}
    bad: dict[str, str] = {}
    for f in all_fields():
        key = prefix + f.name
        if f.kind == "checkbox":
            _set(tree, f.name, key in form)
            continue
        raw = form.get(key, "").strip()
        if f.kind == "list":
            _set(tree, f.name, [p.strip() for p in raw.split(",") if p.strip()])
        elif f.kind == "weights":
            try:
                _set(tree, f.name, _weights(raw))
            except ValueError as exc:
                bad[f.name] = str(exc)
        elif raw:
            _set(tree, f.name, raw)
    if bad:
        raise FormInputError(bad)
    return tree


def form_values(config: dict[str, Any] | None) -> dict[str, str | bool]:
    """Flat control values from a (possibly partial) configuration dict, defaults filled in."""
    out: dict[str, str | bool] = {}
    for f in all_fields():
        value: Any = config
        for part in f.name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            value = f.default
        out[f.name] = _as_text(f, value)
    return out


def _as_text(f: FormField, value: Any) -> str | bool:
    if f.kind == "checkbox":
        return bool(value)
    if value is None:
        return ""
    if f.kind == "list" and isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if f.kind == "weights" and isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)

