"""Subscriptions, retained messages and the fan-out of every published message.

Routing is synchronous and direct: a PUBLISH read from one connection is written
to each subscriber's connection in the same event-loop step (no broadcast queue,
no task per message). Each delivery is checked against the subscriber's ACL
(cached), uses min(publish QoS, subscription QoS), and carries retain=0; retained
messages go only to the subscription that asked, with retain=1.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from amqtt.broker import RetainedApplicationMessage
from amqtt.mqtt.packet import UNSUBACK

from broker.codec import encode_ack, encode_publish, encode_suback
from broker.trie import FilterTrie
from fabbus.acl import topic_matches

if TYPE_CHECKING:
    from collections.abc import Callable

    from broker.persistence import StateStore
    from broker.session import ClientSession

log = logging.getLogger(__name__)

SUBSCRIBE_REFUSED = 0x80
_MATCH_CACHE_LIMIT = 10_000

Target = tuple["ClientSession", int]


class Router:
    """Owns amqtt's ``subscriptions`` and ``retained_messages`` tables (shared with BrokerContext)."""

    def __init__(self, subscriptions: dict[str, list[Target]], retained: dict[str, RetainedApplicationMessage],
                 store: StateStore, next_seq: Callable[[], int]) -> None:
        self.subscriptions = subscriptions
        self.retained = retained
        self._store = store
        self._next_seq = next_seq
        self._filters = FilterTrie()
        self._cache: dict[str, list[Target]] = {}   # topic -> its subscribers, until a subscription changes

    # ---- subscription table

    def add(self, session: ClientSession, filter_: str, qos: int) -> None:
        entries = self.subscriptions.setdefault(filter_, [])
        for i, (s, _) in enumerate(entries):
            if s is session:
                entries[i] = (session, qos)
                break
        else:
            entries.append((session, qos))
        self._filters.add(filter_)
        session.subs[filter_] = qos
        self._forget(filter_)

    def remove(self, session: ClientSession, filter_: str) -> bool:
        entries = self.subscriptions.get(filter_, [])
        kept = [e for e in entries if e[0] is not session]
        if len(kept) == len(entries):
            return False
        if kept:
            self.subscriptions[filter_] = kept
        else:
            del self.subscriptions[filter_]
            self._filters.remove(filter_)
        session.subs.pop(filter_, None)
        self._forget(filter_)
        return True

    def _forget(self, filter_: str) -> None:
        """Drop the cached subscribers of the topics ``filter_`` matches: one entry for a plain topic; all
        for a wildcard (matching is a walk of the filter tree, so refilling the cache is cheap)."""
        if "+" in filter_ or "#" in filter_:
            self._cache.clear()
        else:
            self._cache.pop(filter_, None)

    def remove_all(self, session: ClientSession) -> None:
        for filter_ in list(session.subs):
            self.remove(session, filter_)

    def match(self, topic: str) -> list[Target]:
        """Subscribers of ``topic``, one entry per session with its highest matching QoS."""
        found = self._cache.get(topic)
        if found is not None:
            return found
        best: dict[int, Target] = {}
        for filter_ in self._filters.matching(topic):
            for session, qos in self.subscriptions.get(filter_, ()):
                prev = best.get(id(session))
                if prev is None or prev[1] < qos:
                    best[id(session)] = (session, qos)
        found = list(best.values())
        if len(self._cache) >= _MATCH_CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = found
        return found

    # ---- messages

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Deliver to every subscriber allowed to read ``topic``; store it if ``retain``."""
        if retain:
            self.set_retained(topic, payload, qos)
        targets = self._cache.get(topic)
        if targets is None:
            targets = self.match(topic)
        packet0 = None
        for session, sub_qos in targets:
            if not session.access.can_read(topic):
                continue
            if qos == 0 or sub_qos == 0:
                conn = session.conn
                if conn is not None:
                    if packet0 is None:
                        packet0 = encode_publish(topic.encode(), payload, 0, False)
                    conn.send_droppable(packet0)
            else:
                session.deliver(self._next_seq(), topic, payload, qos if qos < sub_qos else sub_qos)

    def set_retained(self, topic: str, payload: bytes, qos: int) -> None:
        if payload:
            self.retained[topic] = RetainedApplicationMessage(None, topic, payload, qos)
            self._store.retain(topic, payload, qos)
        elif self.retained.pop(topic, None) is not None:
            self._store.unretain(topic)

    def grant(self, session: ClientSession, filter_: str, qos: int) -> int:
        """Add one subscription if the ACL allows it: the granted QoS, or 0x80."""
        if not session.access.can_subscribe(filter_):
            log.info("client %s (user %s) may not subscribe to %s", session.client_id, session.username, filter_)
            return SUBSCRIBE_REFUSED
        self.add(session, filter_, qos)
        if session.persistent:
            self._store.put_subscription(session.client_id, filter_, qos)
        return qos

    def subscribe(self, session: ClientSession, packet_id: int, topics: list[tuple[str, int]]) -> None:
        """SUBACK (0x80 where the ACL refuses), then the retained messages each new subscription matches."""
        codes = [self.grant(session, filter_, qos) for filter_, qos in topics]
        granted = [(f, q) for (f, _), q in zip(topics, codes, strict=True) if q != SUBSCRIBE_REFUSED]
        conn = session.conn
        if conn is None:
            return
        conn.send(encode_suback(packet_id, codes))
        for filter_, sub_qos in granted:
            for topic, msg in list(self.retained.items()):
                if topic_matches(filter_, topic) and session.access.can_read(topic):
                    qos = min(sub_qos, msg.qos or 0)
                    if qos == 0:
                        conn.send(encode_publish(topic.encode(), bytes(msg.data), 0, True))
                    else:
                        session.deliver(self._next_seq(), topic, bytes(msg.data), qos, retain=True)

    def unsubscribe(self, session: ClientSession, packet_id: int, filters: list[str]) -> None:
        for filter_ in filters:
            if self.remove(session, filter_) and session.persistent:
                self._store.drop_subscription(session.client_id, filter_)
        if session.conn is not None:
            session.conn.send(encode_ack(UNSUBACK, packet_id))
