"""The topic filters subscribed to, as a tree of levels: which filters match a topic, in O(levels).

    trie = FilterTrie()
    trie.add("fab/v1/+/+/status")
    trie.matching("fab/v1/s1/l1/status")      # ["fab/v1/+/+/status"]
    trie.remove("fab/v1/+/+/status")

MQTT 3.1.1 matching: ``+`` is one level, ``#`` (last) is the parent level and everything
below it, and wildcards in the first level do not match topics starting with ``$``.
Walking the tree visits only the branches a topic can take (its literal level, ``+`` and
``#`` at each level), however many filters there are, instead of testing every
wildcard filter against the topic.
"""

from __future__ import annotations


class _Node:
    __slots__ = ("children", "filter")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.filter: str | None = None   # the filter ending at this node, when one is subscribed


class FilterTrie:
    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, filter_: str) -> None:
        node = self._root
        for level in filter_.split("/"):
            node = node.children.setdefault(level, _Node())
        if node.filter is None:
            node.filter = filter_
            self._count += 1

    def remove(self, filter_: str) -> None:
        """Forget ``filter_`` and prune the branches left empty (a no-op for an unknown filter)."""
        path = [self._root]
        for level in filter_.split("/"):
            child = path[-1].children.get(level)
            if child is None:
                return
            path.append(child)
        if path[-1].filter is None:
            return
        path[-1].filter = None
        self._count -= 1
        levels = filter_.split("/")
        for i in range(len(levels), 0, -1):
            node = path[i]
            if node.filter is not None or node.children:
                break
            del path[i - 1].children[levels[i - 1]]

    def matching(self, topic: str) -> list[str]:
        """The subscribed filters that match ``topic``."""
        levels = topic.split("/")
        found: list[str] = []
        self._walk(self._root, levels, 0, topic.startswith("$"), found)
        return found

    def _walk(self, node: _Node, levels: list[str], i: int, dollar: bool, found: list[str]) -> None:
        wild = not (dollar and i == 0)
        if wild:
            rest = node.children.get("#")
            if rest is not None and rest.filter is not None:
                found.append(rest.filter)      # "a/#" matches "a", "a/b", "a/b/c"
        if i == len(levels):
            if node.filter is not None:
                found.append(node.filter)
            return
        child = node.children.get(levels[i])
        if child is not None:
            self._walk(child, levels, i + 1, dollar, found)
        if wild:
            one = node.children.get("+")
            if one is not None:
                self._walk(one, levels, i + 1, dollar, found)
