"""A client's session: subscriptions, QoS 1/2 messages in flight and queued, and their delivery.

The session outlives its connection when the client connected with
``clean_session=false``: messages for it are then queued (bounded by
``max_queued_messages``) and, with everything still unacknowledged, sent again
when it returns (in-flight ones with DUP=1). Persistent sessions write every
change through :class:`~broker.persistence.StateStore`.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from amqtt.mqtt.packet import PUBREL
from amqtt.session import Session

from broker.codec import encode_ack, encode_publish
from broker.persistence import StoredMessage, StoredSession

if TYPE_CHECKING:
    from broker.access import ClientAccess
    from broker.connection import Connection
    from broker.persistence import StateStore

log = logging.getLogger(__name__)


class ClientSession(Session):
    """amqtt's Session (so amqtt plugins and BrokerContext see it) plus the delivery state."""

    def __init__(self, client_id: str, username: str | None, persistent: bool, access: ClientAccess,
                 store: StateStore, max_inflight: int, max_queued: int) -> None:
        super().__init__()
        self.client_id = client_id
        self.username = username
        self.clean_session = not persistent
        self.persistent = persistent
        self.access = access
        self.subs: dict[str, int] = {}
        self.queue: deque[StoredMessage] = deque()
        self.outflight: dict[int, StoredMessage] = {}  # packet id -> message, in send order
        self.awaiting_rel: set[int] = set()  # incoming QoS 2 packet ids before their PUBREL
        self.conn: Connection | None = None
        self.dropped = 0
        self._store = store if persistent else None
        self._max_inflight = max_inflight
        self._max_queued = max_queued
        self._pid = 0

    @classmethod
    def restore(cls, saved: StoredSession, access: ClientAccess, store: StateStore, max_inflight: int,
                max_queued: int) -> ClientSession:
        s = cls(saved.client_id, saved.username, True, access, store, max_inflight, max_queued)
        s.subs = dict(saved.subscriptions)
        for m in saved.messages:
            if m.packet_id is not None and m.packet_id not in s.outflight:
                s.outflight[m.packet_id] = m
            else:
                m.packet_id, m.released = None, False
                s.queue.append(m)
        s.transitions.disconnect()
        return s

    # ---- delivery of QoS 1/2 messages (QoS 0 goes straight to the connection)

    def deliver(self, seq: int, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        conn = self.conn
        if conn is None and not self.persistent:
            return
        m = StoredMessage(seq, topic, payload, qos, retain)
        if conn is not None and not self.queue and len(self.outflight) < self._max_inflight:
            self._send_new(m, conn)
            if self._store is not None:
                self._store.put_message(self.client_id, m)
        elif len(self.queue) >= self._max_queued:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("client %s: queue full (%d messages); %d dropped so far",
                            self.client_id, self._max_queued, self.dropped)
        else:
            m.retain = m.retain and conn is not None  # queued for an offline client: a normal delivery
            self.queue.append(m)
            if self._store is not None:
                self._store.put_message(self.client_id, m)

    def _send_new(self, m: StoredMessage, conn: Connection) -> None:
        m.packet_id = pid = self._next_packet_id()
        self.outflight[pid] = m
        conn.send(encode_publish(m.topic.encode(), m.payload, m.qos, m.retain, pid))

    def _next_packet_id(self) -> int:
        pid = self._pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self.outflight:
                self._pid = pid
                return pid

    def pump(self) -> None:
        """Move queued messages into flight while the window allows."""
        conn = self.conn
        while self.queue and conn is not None and len(self.outflight) < self._max_inflight:
            m = self.queue.popleft()
            self._send_new(m, conn)
            if self._store is not None:
                self._store.mark_sent(self.client_id, m)

    def resume(self) -> None:
        """After CONNACK: resend what is unacknowledged (PUBLISH with DUP=1, or PUBREL), then the queue."""
        conn = self.conn
        if conn is None:
            return
        for pid, m in self.outflight.items():
            if m.released:
                conn.send(encode_ack(PUBREL, pid))
            else:
                conn.send(encode_publish(m.topic.encode(), m.payload, m.qos, False, pid, dup=True))
        self.pump()

    # ---- acknowledgements from the client

    def on_puback(self, pid: int) -> None:
        m = self.outflight.get(pid)
        if m is None or m.qos != 1:
            log.debug("client %s: PUBACK for unknown packet id %d", self.client_id, pid)
            return
        del self.outflight[pid]
        if self._store is not None:
            self._store.drop_message(self.client_id, m.seq)
        self.pump()

    def on_pubrec(self, pid: int) -> None:
        m = self.outflight.get(pid)
        if m is not None and m.qos == 2 and not m.released:
            m.released = True
            if self._store is not None:
                self._store.mark_sent(self.client_id, m)
        if self.conn is not None:
            self.conn.send(encode_ack(PUBREL, pid))

    def on_pubcomp(self, pid: int) -> None:
        m = self.outflight.get(pid)
        if m is None or m.qos != 2:
            log.debug("client %s: PUBCOMP for unknown packet id %d", self.client_id, pid)
            return
        del self.outflight[pid]
        if self._store is not None:
            self._store.drop_message(self.client_id, m.seq)
        self.pump()

    def forget(self) -> None:
        """Drop everything owed to this session (it ends)."""
        self.queue.clear()
        self.outflight.clear()
        self.awaiting_rel.clear()
        self.subs.clear()
        self.clear_queues()
