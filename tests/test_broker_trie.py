"""The embedded broker's filter tree matches exactly as the MQTT 3.1.1 rules (fabbus.acl.topic_matches) say."""

from __future__ import annotations

import itertools
import random

from broker.trie import FilterTrie
from fabbus.acl import topic_matches

LEVELS = ["a", "b", "", "$SYS"]


def all_filters() -> list[str]:
    out = []
    for n in (1, 2, 3):
        for parts in itertools.product([*LEVELS, "+", "#"], repeat=n):
            if "#" in parts[:-1] or ("$SYS" in parts[1:]):
                continue
            out.append("/".join(parts))
    return out


def all_topics() -> list[str]:
    return ["/".join(p) for n in (1, 2, 3, 4) for p in itertools.product(LEVELS, repeat=n) if "$SYS" not in p[1:]]


def test_the_tree_matches_as_the_rules_say_for_every_small_filter_and_topic() -> None:
    filters, topics = all_filters(), all_topics()
    trie = FilterTrie()
    for f in filters:
        trie.add(f)
    assert len(trie) == len(filters)
    for topic in topics:
        assert sorted(trie.matching(topic)) == sorted(f for f in filters if topic_matches(f, topic)), topic


def test_removing_filters_prunes_the_tree_and_forgets_them() -> None:
    rng = random.Random(3)
    filters = all_filters()
    trie = FilterTrie()
    for f in filters:
        trie.add(f)
        trie.add(f)  # twice: still one
    kept = set(filters)
    for f in rng.sample(filters, len(filters) // 2):
        trie.remove(f)
        kept.discard(f)
    trie.remove("never/added")
    assert len(trie) == len(kept)
    for topic in all_topics():
        assert sorted(trie.matching(topic)) == sorted(f for f in kept if topic_matches(f, topic)), topic
    for f in kept:
        trie.remove(f)
    assert len(trie) == 0 and not trie._root.children  # nothing left behind
