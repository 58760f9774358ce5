"""Broker access control generated from topics.yaml, in Mosquitto's acl_file format.

One file serves both brokers: Mosquitto reads it with ``acl_file``, and the
embedded broker parses and evaluates it with :class:`AclFile`, so both enforce the
same rules. Scoped roles become ``pattern`` lines with ``%u`` standing for the
role's scope (the username is the scope, see topics.yaml); cloud users get
``user`` blocks with readwrite on the whole prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fabbus.errors import ConfigError
from fabbus.topics import ID_RE, Contract, Role, Topic, contract

READ, WRITE = "read", "write"
_ACCESS = {"read": {READ}, "write": {WRITE}, "readwrite": {READ, WRITE}, "deny": set()}
_PLACEHOLDER_RE = re.compile(r"^\{[a-z_]+\}$")


def _pattern_for(topic: Topic, role: Role, c: Contract) -> str:
    """The ACL topic for a role: the scope below the prefix becomes %u, other placeholders '+'."""
    rest = topic.levels[len(role.scope_levels):]
    return "/".join([c.prefix, "%u", *("+" if _PLACEHOLDER_RE.match(lvl) else lvl for lvl in rest)])


def generate(cloud_users: list[str], c: Contract | None = None) -> str:
    """The Mosquitto ACL file text for the contract and these cloud usernames."""
    c = c or contract()
    lines = [
        "# Generated from topics.yaml by `fab-contract acl`; do not edit.",
        "# Scoped roles authenticate with their scope as username, so %u expands to",
        "# e.g. fab/v1/<site>/<line> for an edge or fab/v1/<site>/<line>/det/<det> for a detector.",
        "",
    ]
    for user in sorted(set(cloud_users)):
        lines += [f"user {user}", f"topic readwrite {c.prefix}/#", ""]
    for role in c.roles.values():
        if role.scope is None:
            continue
        lines.append(f"# role {role.name}: {role.description}")
        rules: dict[str, set[str]] = {}
        for action, access in (("publish", WRITE), ("subscribe", READ)):
            for t in c.topics_for(role.name, action):
                rules.setdefault(_pattern_for(t, role, c), set()).add(access)
        for pat, acc in sorted(rules.items()):
            kind = "readwrite" if acc == {READ, WRITE} else next(iter(acc))
            lines.append(f"pattern {kind} {pat}")
        lines.append("")
    return "\n".join(lines)


def username_for(role: str, c: Contract | None = None, **ids: str) -> str:
    """The username a scoped node authenticates with: its scope below the prefix."""
    c = c or contract()
    r = c.roles.get(role)
    if r is None:
        raise ConfigError(f"unknown role {role!r} (known: {sorted(c.roles)})")
    if r.scope is None:
        raise ConfigError(f"role {role!r} has no scope; cloud usernames are configured")
    prefix_len = len(c.prefix.split("/"))
    out = []
    for lvl in r.scope_levels[prefix_len:]:
        if _PLACEHOLDER_RE.match(lvl):
            key = lvl[1:-1]
            if key not in ids:
                raise ConfigError(f"username for role {role!r} needs id {key!r}")
            if not isinstance(ids[key], str) or not ID_RE.match(ids[key]):
                # an id with '/' would move the node into another scope, '+'/'#' would void its grants
                raise ConfigError(f"username for role {role!r}: {key}={ids[key]!r} is not a valid id")
            out.append(ids[key])
        else:
            out.append(lvl)
    return "/".join(out)


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT 3.1.1 topic filter matching, including the '$' rule."""
    if topic.startswith("$") and filter_[:1] in ("+", "#"):
        return False
    f_levels = filter_.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def filter_covers(acl: str, sub: str) -> bool:
    """True when every topic matched by subscription filter ``sub`` is matched by ``acl``."""
    a_levels = acl.split("/")
    s_levels = sub.split("/")
    for i, a in enumerate(a_levels):
        if a == "#":
            return True
        if i >= len(s_levels):
            return False
        s = s_levels[i]
        if s == "#":
            return False
        if a == "+":
            continue
        if s == "+" or a != s:
            return False
    return len(a_levels) == len(s_levels)


@dataclass
class _Rule:
    access: set[str]
    topic: str
    deny: bool = False


@dataclass
class AclFile:
    """A parsed Mosquitto acl_file: general topics, per-user topics and patterns."""

    general: list[_Rule] = field(default_factory=list)
    users: dict[str, list[_Rule]] = field(default_factory=dict)
    patterns: list[_Rule] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, source: str = "<acl>") -> AclFile:
        acl = cls()
        current: list[_Rule] = acl.general
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            rest = rest.strip()
            if word == "user":
                if not rest:
                    raise ConfigError(f"{source}:{n}: 'user' needs a username")
                current = acl.users.setdefault(rest, [])
            elif word in ("topic", "pattern"):
                access_word, _, topic = rest.partition(" ")
                if access_word in _ACCESS:  # as Mosquitto: "topic read" is an empty topic, not topic "read"
                    access, topic = access_word, topic.strip()
                else:
                    access, topic = "readwrite", rest
                if not topic:
                    raise ConfigError(f"{source}:{n}: '{word}' needs a topic")
                rule = _Rule(_ACCESS[access], topic, deny=access == "deny")
                (acl.patterns if word == "pattern" else current).append(rule)
            else:
                raise ConfigError(f"{source}:{n}: unknown ACL keyword {word!r} (expected user, topic or pattern)")
        return acl

    @classmethod
    def load(cls, path: str | Path) -> AclFile:
        p = Path(path)
        try:
            return cls.parse(p.read_text(encoding="utf-8"), str(p))
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read ACL file: {exc.strerror}") from None

    def _rules(self, username: str | None, client_id: str) -> list[_Rule]:
        rules = list(self.general) if username is None else list(self.users.get(username, []))
        if any(ch in (username or "") or ch in client_id for ch in "+#"):
            return rules  # Mosquitto refuses every pattern to a username or client id with '+' or '#'
        for r in self.patterns:
            topic = r.topic
            if "%u" in topic:
                if username is None:
                    continue
                topic = "/".join(username if lvl == "%u" else lvl for lvl in topic.split("/"))
            if "%c" in topic:
                topic = "/".join(client_id if lvl == "%c" else lvl for lvl in topic.split("/"))
            rules.append(_Rule(r.access, topic, r.deny))
        return rules

    def can_publish(self, username: str | None, client_id: str, topic: str) -> bool:
        return self._check(username, client_id, topic, WRITE, topic_matches)

    def can_read(self, username: str | None, client_id: str, topic: str) -> bool:
        return self._check(username, client_id, topic, READ, topic_matches)

    def can_subscribe(self, username: str | None, client_id: str, filter_: str) -> bool:
        return self._check(username, client_id, filter_, READ, filter_covers)

    def _check(self, username: str | None, client_id: str, topic: str, access: str, match) -> bool:  # noqa: ANN001
        rules = self._rules(username, client_id)
        if any(r.deny and (match(r.topic, topic) or topic_matches(topic, r.topic)) for r in rules):
            return False
        return any(access in r.access and match(r.topic, topic) for r in rules)
