"""The hardened embedded broker: a thin subclass of amqtt's Broker.

amqtt keeps the listeners (TCP, optional TLS), the broker life-cycle, the plugin
manager and the tables BrokerContext exposes (sessions, subscriptions, retained
messages). Connections, sessions and routing are replaced (see connection.py,
session.py, router.py) to fix the defects in DESIGN.md section 4 and to remove
amqtt's per-packet tasks; authentication (auth.py), authorization (access.py)
and persistence (persistence.py) are the broker's own.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from typing import Any

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import ListenerConfig
from amqtt.events import BrokerEvents

from broker.access import Access
from broker.auth import Authenticator
from broker.codec import Connect, encode_connack, valid_filter
from broker.config import BrokerConfig, TlsConfig
from broker.connection import Connection
from broker.persistence import StateStore
from broker.router import SUBSCRIBE_REFUSED, Router
from broker.session import ClientSession
from fabbus.errors import ConfigError, FabError

log = logging.getLogger(__name__)

IDENTIFIER_REJECTED, NOT_AUTHORIZED = 0x02, 0x05


class BrokerStartError(FabError):
    """The broker could not start (the message says why, in one line)."""


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server TLS context; ConfigError naming the file for anything unreadable or invalid."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"listener.tls.cafile: cannot load {tls.cafile}: {exc}") from None
    try:
        ctx.load_cert_chain(tls.certfile, tls.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"listener.tls: cannot load certfile {tls.certfile} / keyfile {tls.keyfile}: {exc}") from None
    if tls.require_client_cert:
        if tls.cafile is None:
            raise ConfigError("listener.tls.require_client_cert needs listener.tls.cafile")
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_OPTIONAL if tls.cafile else ssl.CERT_NONE
    return ctx


def _amqtt_config(cfg: BrokerConfig) -> dict[str, Any]:
    host = cfg.listener.host
    bind = f"[{host}]:{cfg.listener.port}" if ":" in host else f"{host}:{cfg.listener.port}"
    listener = {"type": "tcp", "bind": bind, "ssl": cfg.listener.tls is not None}
    return {"listeners": {"default": listener}, "plugins": {}}


class FabBroker(Broker):
    """amqtt's Broker with the fixes; build it inside a running event loop."""

    def __init__(self, cfg: BrokerConfig) -> None:
        self.cfg = cfg
        self.authenticator = Authenticator(cfg.password_file, cfg.allow_anonymous, cfg.auth_workers)
        self.access = Access(cfg.acl_file)
        self._ssl = ssl_context(cfg.listener.tls) if cfg.listener.tls else None
        self.store = StateStore(cfg.persistence_file)
        super().__init__(_amqtt_config(cfg))
        self.router = Router(self._subscriptions, self._retained_messages, self.store, self.next_seq)
        self.connections: set[Connection] = set()
        self.stopping = False
        self._seq = 1

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    @property
    def bound_ports(self) -> list[int]:
        server = self._servers.get("default")
        sockets = server.instance.sockets if server and server.instance else ()
        return [s.getsockname()[1] for s in sockets]

    # ---- life-cycle (amqtt's, with one-line errors instead of logged tracebacks)

    async def start(self) -> None:
        self.transitions.start()
        await self.plugins_manager.fire_event(BrokerEvents.PRE_START, wait=True)
        self._restore()
        try:
            await self._start_listeners()
        except OSError as exc:
            self.transitions.starting_fail()
            self.store.close()
            where = f"{self.cfg.listener.host}:{self.cfg.listener.port}"
            raise BrokerStartError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        self.transitions.starting_success()
        await self.plugins_manager.fire_event(BrokerEvents.POST_START, wait=True)
        log.info("listening on %s:%s%s", self.cfg.listener.host, ",".join(map(str, self.bound_ports)),
                 " (TLS)" if self._ssl else "")

    def _create_ssl_context(self, listener: ListenerConfig) -> ssl.SSLContext:  # type: ignore[override]
        return self._ssl

    def _restore(self) -> None:
        state = self.store.load()
        self._seq = state.next_seq
        for topic, (payload, qos) in state.retained.items():
            self._retained_messages[topic] = RetainedApplicationMessage(None, topic, payload, qos)
        for saved in state.sessions.values():
            session = ClientSession.restore(saved, self.access.for_client(saved.username, saved.client_id),
                                            self.store, self.cfg.max_inflight_messages, self.cfg.max_queued_messages)
            for filter_, qos in saved.subscriptions.items():
                self.router.add(session, filter_, qos)
            self._sessions[saved.client_id] = (session, None)  # type: ignore[assignment]
        log.info("restored %d retained messages and %d persistent sessions", len(state.retained), len(state.sessions))

    async def shutdown(self) -> None:
        """Stop accepting, close every client (no wills), save state, then amqtt's own shutdown."""
        self.stopping = True
        for server in self._servers.values():
            if server.instance:
                server.instance.close()
        for conn in list(self.connections):
            conn.abort()
        for _ in range(100):
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        for client_id, (session, _) in list(self._sessions.items()):
            if isinstance(session, ClientSession) and session.persistent:
                self._sessions[client_id] = (session, None)  # type: ignore[assignment]
        await super().shutdown()
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)
        self.authenticator.close()

    async def _session_monitor(self) -> None:
        """Not used: sessions end with their connections (clean) or persist."""

    def reload(self) -> None:
        """Re-read the password and ACL files (SIGHUP); a bad file keeps the previous one."""
        try:
            self.authenticator.reload()
            self.access.reload()
        except ConfigError as exc:
            log.error("reload failed, keeping the previous files: %s", exc)
            return
        for session, _ in self._sessions.values():
            session.access = self.access.for_client(session.username, session.client_id)
        log.info("password and ACL files reloaded")

    # ---- connections

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        conn = Connection(self, reader, writer)
        if self.stopping:
            conn.abort()
            return
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)

    async def start_connection(self, conn: Connection, connect: Connect) -> ClientSession | None:
        """Authenticate, take over or create the session, CONNACK, resend what is owed."""
        if not connect.client_id:
            if not connect.clean_session:
                conn.send(encode_connack(False, IDENTIFIER_REJECTED))
                return None
            connect.client_id = f"auto-{uuid.uuid4().hex}"
        if not await self.authenticator.check(connect.username, connect.password):
            log.info("%s: refused client %s (user %s): not authorized", conn.peer, connect.client_id, connect.username)
            conn.send(encode_connack(False, NOT_AUTHORIZED))
            return None
        if conn.closed or self.stopping:
            return None
        cid = connect.client_id
        session, old_conn = self._sessions.get(cid, (None, None))
        if old_conn is not None:
            log.info("client %s connected again from %s; closing its previous connection", cid, conn.peer)
            old_conn.replaced = True
            old_conn.abort()
            if old_conn.connect and old_conn.connect.will and (connect.clean_session or not session.persistent):
                self._publish_will(session, old_conn.connect)
        if session is not None and (connect.clean_session or not session.persistent):
            self._end_session(session)
            session = None
        present = session is not None
        access = self.access.for_client(connect.username, cid)
        if session is None:
            session = ClientSession(cid, connect.username, not connect.clean_session, access, self.store,
                                    self.cfg.max_inflight_messages, self.cfg.max_queued_messages)
            if session.persistent:
                self.store.put_session(cid, connect.username)
        elif session.username != connect.username:
            session.username = connect.username
            self.store.put_session(cid, connect.username)
        session.access = access
        session.conn = conn
        session.keep_alive = connect.keepalive
        session.remote_address = conn.peer.rpartition(":")[0]
        session.transitions.connect()
        self._sessions[cid] = (session, conn)  # type: ignore[assignment]
        conn.send(encode_connack(present, 0))
        session.resume()
        log.info("client %s (user %s) connected from %s, clean_session=%s, keepalive=%d", cid, connect.username,
                 conn.peer, connect.clean_session, connect.keepalive)
        await self.plugins_manager.fire_event(BrokerEvents.CLIENT_CONNECTED, client_id=cid, client_session=session)
        return session

    def end_connection(self, conn: Connection) -> None:
        """The connection is gone: publish the will unless it said DISCONNECT; keep the session if persistent."""
        session = conn.session
        if session is None or session.conn is not conn:
            return  # taken over by a newer connection
        session.conn = None
        session.transitions.disconnect()
        if not conn.graceful and not self.stopping and conn.connect and conn.connect.will:
            self._publish_will(session, conn.connect)
        if self.stopping:
            return
        if session.persistent:
            self._sessions[session.client_id] = (session, None)  # type: ignore[assignment]
        else:
            self._end_session(session)
        log.info("client %s disconnected (%s)", session.client_id, "DISCONNECT" if conn.graceful else "no DISCONNECT")

    def _publish_will(self, session: ClientSession, connect: Connect) -> None:
        will = connect.will
        if not session.access.can_publish(will.topic):
            log.info("client %s may not publish its will to %s; dropped", session.client_id, will.topic)
            return
        log.info("publishing the will of client %s on %s", session.client_id, will.topic)
        self.router.publish(will.topic, will.payload, will.qos, will.retain)

    def _end_session(self, session: ClientSession) -> None:
        self.router.remove_all(session)
        if session.persistent:
            self.store.drop_session(session.client_id)
        session.forget()
        if self._sessions.get(session.client_id, (None,))[0] is session:
            del self._sessions[session.client_id]

    # ---- amqtt's API for plugins (BrokerContext), routed through the same tables

    def create_offline_session(self, client_id: str) -> tuple[None, ClientSession]:  # type: ignore[override]
        session = ClientSession(client_id, None, True, self.access.for_client(None, client_id), self.store,
                                self.cfg.max_inflight_messages, self.cfg.max_queued_messages)
        session.transitions.disconnect()
        self.store.put_session(client_id, None)
        return None, session

    async def add_subscription(self, subscription: tuple[str, int], session: Any) -> int:
        filter_, qos = subscription
        if not isinstance(session, ClientSession) or not valid_filter(filter_) or qos not in (0, 1, 2):
            return SUBSCRIBE_REFUSED
        return self.router.grant(session, filter_, qos)


    async def _broadcast_message(self, session: Any, topic: str | None, data: bytes | bytearray | None,
                                 force_qos: int | None = None) -> None:
        if topic and data is not None:
            self.router.publish(topic, bytes(data), force_qos or 0, retain=False)

    async def retain_message(self, source_session: Any, topic_name: str | None, data: bytes | bytearray | None,
                             qos: int | None = None) -> None:
        if topic_name:
            self.router.set_retained(topic_name, bytes(data or b""), qos or 0)
