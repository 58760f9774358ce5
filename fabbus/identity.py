"""Who a process is on the bus: its role, its ids and what the contract lets it do.

    me = NodeIdentity.create("edge", {"site": "s1", "line": "l1"})
    me.node                       # "s1/l1": its scope below the prefix, also its broker username
    me.state_topic.name           # "edge_state"
    me.topic_ids(topic, {"task": "t1"})   # {"site": "s1", "line": "l1", "task": "t1"}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fabbus.acl import username_for
from fabbus.errors import ContractError
from fabbus.messages import NodeState
from fabbus.topics import Contract, Topic, check_id, contract


@dataclass(frozen=True)
class NodeIdentity:
    role: str
    ids: dict[str, str]
    node: str                                   # "s1/l1" for an edge, the node id for a cloud process
    state_topic: Topic                          # <role>_state: birth, last will and offline state
    scope_ids: dict[str, str] = field(default_factory=dict)  # the ids that fix the role's scope
    contract: Contract = field(default_factory=contract, repr=False)

    @classmethod
    def create(cls, role: str, ids: dict[str, str], c: Contract | None = None) -> NodeIdentity:
        """Validate a role and its ids: exactly the placeholders of the role's state topic."""
        c = c or contract()
        if role not in c.roles:
            raise ContractError(f"unknown role {role!r} (known: {sorted(c.roles)})")
        state_topic = c.topic(f"{role}_state")
        ids = {k: check_id(k, v) for k, v in ids.items()}
        state_topic.format(**ids)  # ContractError naming missing or unknown ids
        scope = c.roles[role].scope or ""
        keys = [lvl[1:-1] for lvl in scope.split("/") if lvl.startswith("{") and lvl.endswith("}")]
        scope_ids = {k: ids[k] for k in keys}
        node = username_for(role, c, **ids) if scope_ids else ids["node"]
        return cls(role, ids, node, state_topic, scope_ids, c)

    @property
    def default_client_id(self) -> str:
        """Stable per node, so that a restarted process takes over its own session."""
        return f"fab-{self.role}-{self.node.replace('/', '.')}"

    @property
    def state_mqtt_topic(self) -> str:
        return self.state_topic.format(**self.ids)

    def state(self, online: bool, reason: str = "", version: str = "") -> NodeState:
        return NodeState(online=online, role=self.role, node=self.node, version=version,  # type: ignore[arg-type]
                         since=time.time(), reason=reason)

    def check(self, topic: Topic, action: str) -> None:
        """ContractError unless this role may ``publish`` or ``subscribe`` to the topic."""
        allowed = topic.publishers if action == "publish" else topic.subscribers
        if self.role not in allowed:
            raise ContractError(f"role {self.role!r} may not {action} {topic.name} (allowed: {list(allowed)})")

    def topic_ids(self, topic: Topic, ids: dict[str, str]) -> dict[str, str]:
        """``ids`` completed with this node's scope ids; ContractError if one points outside the scope."""
        for key, own in self.scope_ids.items():
            if key in ids and ids[key] != own:
                raise ContractError(f"{self.role} {self.node} may not use {key}={ids[key]!r} (outside its scope)")
        return {**{k: v for k, v in self.scope_ids.items() if k in topic.placeholders}, **ids}
