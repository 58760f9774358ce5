"""The topic contract: load and validate topics.yaml, build and match topics.

Nothing outside this module spells a topic string. Code asks for a topic by its
name in topics.yaml (``contract().topic("task_status").format(site=..., ...)``)
or matches a received topic back to its name and ids (``contract().match(t)``).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fabbus.errors import ContractError

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "topics.yaml"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PLACEHOLDER_RE = re.compile(r"^\{([a-z_]+)\}$")
_LITERAL_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class _RoleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str
    scope: str | None


class _TopicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str
    publishers: list[str] = Field(min_length=1)
    subscribers: list[str] = Field(min_length=1)
    qos: int = Field(ge=0, le=2)
    retain: bool
    payload: list[str] = Field(min_length=1)
    description: str


class _ContractSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int
    prefix: str
    placeholders: dict[str, str]
    roles: dict[str, _RoleSpec]
    topics: dict[str, _TopicSpec]


def check_id(name: str, value: Any) -> str:
    """Validate one id that goes into a topic level."""
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ContractError(f"{name}: {value!r} is not a valid id (letters, digits, '_', '.', '-'; 1-64 chars)")
    return value


@dataclass(frozen=True)
class Topic:
    """One topic of the contract."""

    name: str
    pattern: str
    publishers: tuple[str, ...]
    subscribers: tuple[str, ...]
    qos: int
    retain: bool
    payload: tuple[str, ...]
    description: str
    levels: tuple[str, ...] = field(repr=False)

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(m.group(1) for lvl in self.levels if (m := _PLACEHOLDER_RE.match(lvl)))

    def format(self, **ids: str) -> str:
        """The concrete topic for these ids; every placeholder is required."""
        missing = [p for p in self.placeholders if p not in ids]
        unknown = [k for k in ids if k not in self.placeholders]
        if missing or unknown:
            raise ContractError(f"topic {self.name}: missing ids {missing}, unknown ids {unknown}")
        return "/".join(self._level(lvl, ids, wildcard=False) for lvl in self.levels)

    def filter(self, **ids: str) -> str:
        """A subscription filter; placeholders not given become '+'."""
        unknown = [k for k in ids if k not in self.placeholders]
        if unknown:
            raise ContractError(f"topic {self.name}: unknown ids {unknown}")
        return "/".join(self._level(lvl, ids, wildcard=True) for lvl in self.levels)

    def match(self, topic: str) -> dict[str, str] | None:
        """The ids of a concrete topic, or None when it is not this topic."""
        parts = topic.split("/")
        if len(parts) != len(self.levels):
            return None
        ids: dict[str, str] = {}
        for lvl, part in zip(self.levels, parts):
            m = _PLACEHOLDER_RE.match(lvl)
            if m:
                if not ID_RE.match(part):
                    return None
                ids[m.group(1)] = part
            elif lvl != part:
                return None
        return ids

    def _level(self, lvl: str, ids: dict[str, str], *, wildcard: bool) -> str:
        m = _PLACEHOLDER_RE.match(lvl)
        if not m:
            return lvl
        key = m.group(1)
        if key not in ids and wildcard:
            return "+"
        return check_id(key, ids[key])


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    scope: str | None

    @property
    def scope_levels(self) -> tuple[str, ...]:
        return tuple(self.scope.split("/")) if self.scope else ()


@dataclass(frozen=True)
class Contract:
    version: int
    prefix: str
    placeholders: dict[str, str]
    roles: dict[str, Role]
    topics: dict[str, Topic]
    path: Path

    def topic(self, name: str) -> Topic:
        try:
            return self.topics[name]
        except KeyError:
            raise ContractError(f"unknown topic name {name!r}") from None

    def match(self, topic: str) -> tuple[Topic, dict[str, str]] | None:
        """The contract topic a concrete topic belongs to, with its ids."""
        for t in self.topics.values():
            ids = t.match(topic)
            if ids is not None:
                return t, ids
        return None

    def topics_for(self, role: str, action: str) -> list[Topic]:
        """Topics a role publishes (action='publish') or subscribes to ('subscribe')."""
        attr = "publishers" if action == "publish" else "subscribers"
        return [t for t in self.topics.values() if role in getattr(t, attr)]


def _err(errors: list[str], where: str, what: str) -> None:
    errors.append(f"{where}: {what}")


def _check_pattern(errors: list[str], where: str, pattern: str, placeholders: dict[str, str]) -> tuple[str, ...]:
    if not pattern or pattern.startswith("/") or pattern.endswith("/") or "//" in pattern:
        _err(errors, where, f"{pattern!r} is not a well-formed topic (empty level)")
        return ()
    levels = tuple(pattern.split("/"))
    seen: set[str] = set()
    for lvl in levels:
        if "+" in lvl or "#" in lvl:
            _err(errors, where, f"wildcard in publish topic {pattern!r}: topics are published, so no '+' or '#'")
            continue
        m = _PLACEHOLDER_RE.match(lvl)
        if m:
            key = m.group(1)
            if key not in placeholders:
                _err(errors, where, f"unknown placeholder {{{key}}} (known: {sorted(placeholders)})")
            if key in seen:
                _err(errors, where, f"placeholder {{{key}}} used twice")
            seen.add(key)
        elif not _LITERAL_RE.match(lvl):
            _err(errors, where, f"level {lvl!r} must be a literal [A-Za-z0-9_.-] or a whole {{placeholder}}")
    return levels


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if len(a) != len(b):
        return False
    return all(x == y or x.startswith("{") or y.startswith("{") for x, y in zip(a, b))


def _in_scope(levels: tuple[str, ...], scope: tuple[str, ...]) -> bool:
    return len(levels) > len(scope) and levels[: len(scope)] == scope


def parse(data: Any, path: Path, message_types: set[str] | None = None) -> Contract:
    """Validate a loaded topics.yaml document; raise ContractError listing every problem."""
    try:
        spec = _ContractSpec.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()]
        raise ContractError(f"{path}: invalid contract:\n  " + "\n  ".join(lines)) from None
    if message_types is None:
        from fabbus.messages import MESSAGE_TYPES

        message_types = set(MESSAGE_TYPES)
    errors: list[str] = []
    roles: dict[str, Role] = {}
    for name, r in spec.roles.items():
        if r.scope is not None:
            _check_pattern(errors, f"roles.{name}.scope", r.scope, spec.placeholders)
            if not r.scope.startswith(spec.prefix + "/"):
                _err(errors, f"roles.{name}.scope", f"must start with the prefix {spec.prefix + '/'!r}")
        roles[name] = Role(name, r.description, r.scope)
    topics: dict[str, Topic] = {}
    for name, t in spec.topics.items():
        where = f"topics.{name}"
        levels = _check_pattern(errors, f"{where}.pattern", t.pattern, spec.placeholders)
        if levels and not t.pattern.startswith(spec.prefix + "/"):
            _err(errors, f"{where}.pattern", f"must start with the prefix {spec.prefix + '/'!r}")
        for field_name in ("publishers", "subscribers"):
            for role in getattr(t, field_name):
                if role not in roles:
                    _err(errors, f"{where}.{field_name}", f"unknown role {role!r} (known: {sorted(roles)})")
                elif roles[role].scope and levels and not _in_scope(levels, roles[role].scope_levels):
                    _err(errors, f"{where}.{field_name}", f"role {role!r} is scoped to {roles[role].scope!r}")
        for ptype in t.payload:
            if ptype not in message_types:
                _err(errors, f"{where}.payload", f"unknown payload type {ptype!r}")
        topics[name] = Topic(name, t.pattern, tuple(t.publishers), tuple(t.subscribers), t.qos, t.retain,
                             tuple(t.payload), t.description, levels)
    names = list(topics)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if topics[a].levels and _overlap(topics[a].levels, topics[b].levels):
                _err(errors, f"topics.{b}.pattern", f"overlaps topics.{a} ({topics[a].pattern})")
    if errors:
        raise ContractError(f"{path}: invalid contract:\n  " + "\n  ".join(errors))
    return Contract(spec.version, spec.prefix, dict(spec.placeholders), roles, topics, path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}",
                    key_node.start_mark)
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(path: str | os.PathLike[str] | None = None) -> Contract:
    """Load and validate a topics.yaml file."""
    p = Path(path) if path else Path(os.environ.get("FAB_TOPICS", DEFAULT_PATH))
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except OSError as exc:
        raise ContractError(f"{p}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ContractError(f"{p}: not valid YAML: {exc}") from None
    return parse(data, p)


@functools.cache
def contract() -> Contract:
    """The process-wide contract, loaded once."""
    return load()
