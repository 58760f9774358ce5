"""Loading a process's YAML config file into its pydantic model, with one line per bad key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from fabbus.errors import ConfigError


class _Resolvable(Protocol):
    def resolve(self, base: Path) -> Any: ...


M = TypeVar("M", bound=BaseModel)


def format_errors(path: Path | str, exc: ValidationError) -> str:
    """One line per bad key: ``file: key.path: what is wrong``."""
    return "\n".join(f"{path}: {'.'.join(str(p) for p in e['loc']) or '<root>'}: "
                     f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())


def load_config_file(path: str | Path, model: type[M]) -> M:
    """Read, validate and resolve a config file; ConfigError naming the file and each bad key path.

    When the model has ``resolve(base)``, relative paths are made absolute against
    the config file's folder.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: <root>: expected a mapping")
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(p, exc)) from None
    resolve = getattr(cfg, "resolve", None)
    return resolve(p.resolve().parent) if callable(resolve) else cfg
