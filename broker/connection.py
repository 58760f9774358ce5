"""One client connection: a fast reader loop, keep-alive enforcement and coalesced writes.

Replaces amqtt's per-packet tasks: the reader takes large chunks from the socket,
handles every complete packet in them synchronously, and the bytes produced for
any connection in one event-loop step leave in a single ``transport.write``. A
malformed packet closes this connection only; an unexpected error is logged and
closes this connection only.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from amqtt.mqtt.packet import (CONNECT, DISCONNECT, PINGREQ, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBSCRIBE,
                               UNSUBSCRIBE)

from broker.codec import (PINGRESP_BYTES, Connect, ProtocolError, UnsupportedProtocol, decode_connect,
                          decode_packet_id, decode_publish, decode_subscribe, decode_unsubscribe, encode_ack,
                          encode_connack, packet_bounds)

if TYPE_CHECKING:
    from broker.server import FabBroker
    from broker.session import ClientSession

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds a new connection may take to send CONNECT
READ_SIZE = 256 * 1024
QOS0_BUFFER_LIMIT = 8 * 1024 * 1024  # QoS 0 messages to a client this far behind are dropped
_FLAGS_2 = (PUBREL, SUBSCRIBE, UNSUBSCRIBE)  # packet types whose fixed-header flags must be 0010


class Connection:
    """Reads packets from one client and writes to it; the session outlives it when persistent."""

    def __init__(self, broker: FabBroker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.broker = broker
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport
        self.loop = asyncio.get_running_loop()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.session: ClientSession | None = None
        self.connect: Connect | None = None
        self.graceful = False  # DISCONNECT received: no will
        self.replaced = False  # taken over by a newer connection with the same client id
        self.closed = False
        self.dropped = 0
        self._out: list[bytes] = []
        self._flush_pending = False
        self._last_rx = self.loop.time()
        self._keepalive_limit = 0.0
        self._keepalive_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        cid = self.session.client_id if self.session else None
        return f"<Connection {self.peer} client={cid}>"

    # ---- lifecycle

    async def run(self) -> None:
        try:
            await self._serve()
        except ProtocolError as exc:
            log.info("%s: protocol error: %s; closing", self, exc)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("%s: connection lost: %r", self, exc)
        except Exception:  # boundary: one client's failure must not reach the others or the broker
            log.exception("%s: unexpected error; closing this connection", self)
        finally:
            if self._keepalive_timer is not None:
                self._keepalive_timer.cancel()
            self.close()
            if self.session is not None:
                self._end()

    def _end(self) -> None:
        try:
            self.broker.end_connection(self)
        except Exception:  # boundary: the will or session clean-up of one client failed
            log.exception("%s: error while ending its session", self)

    async def _serve(self) -> None:
        buf = bytearray()
        connect = await asyncio.wait_for(self._read_connect(buf), CONNECT_TIMEOUT)
        if connect is None:
            return
        self.connect = connect
        self.session = await self.broker.start_connection(self, connect)
        if self.session is None or self.closed:
            return
        if connect.keepalive:
            self._keepalive_limit = connect.keepalive * self.broker.cfg.keepalive_factor
            self._last_rx = self.loop.time()
            self._keepalive_timer = self.loop.call_later(self._keepalive_limit, self._check_keepalive)
        await self._read_loop(buf)

    async def _read_connect(self, buf: bytearray) -> Connect | None:
        max_bytes = self.broker.cfg.max_packet_bytes
        while True:
            if buf and buf[0] != CONNECT << 4:
                raise ProtocolError(f"first packet is not CONNECT (0x{buf[0]:02x})")
            bounds = packet_bounds(buf, 0, max_bytes) if buf else None
            if bounds is not None:
                break
            data = await self.reader.read(READ_SIZE)
            if not data:
                return None
            buf += data
        start, end = bounds
        body = bytes(buf[start:end])
        del buf[:end]
        try:
            return decode_connect(body)
        except UnsupportedProtocol:
            self.send(encode_connack(False, 0x01))
            raise

    async def _read_loop(self, buf: bytearray) -> None:
        max_bytes = self.broker.cfg.max_packet_bytes
        handle = self._handle
        read = self.reader.read
        while True:
            pos, n = 0, len(buf)
            while pos < n:
                bounds = packet_bounds(buf, pos, max_bytes)
                if bounds is None:
                    break
                start, end = bounds
                handle(buf[pos], buf[start:end])
                pos = end
                if self.closed or self.graceful:
                    return
            if pos:
                del buf[:pos]
            data = await read(READ_SIZE)
            if not data or self.closed:
                return
            self._last_rx = self.loop.time()
            buf += data

    # ---- packets

    def _handle(self, first: int, body: bytearray) -> None:
        ptype, flags = first >> 4, first & 0x0F
        session = self.session
        if ptype == PUBLISH:
            qos = (flags >> 1) & 0x03
            if qos == 3:
                raise ProtocolError("PUBLISH with QoS 3")
            topic, pid, payload = decode_publish(flags, body)
            allowed = session.access.can_publish(topic)
            if qos == 0:
                if allowed:
                    self.broker.router.publish(topic, payload, 0, bool(flags & 0x01))
            elif qos == 1:
                if allowed:
                    self.broker.router.publish(topic, payload, 1, bool(flags & 0x01))
                self.send(encode_ack(PUBACK, pid))
            else:
                if pid not in session.awaiting_rel:
                    session.awaiting_rel.add(pid)
                    if allowed:
                        self.broker.router.publish(topic, payload, 2, bool(flags & 0x01))
                self.send(encode_ack(PUBREC, pid))
            return
        if flags != (0x02 if ptype in _FLAGS_2 else 0):
            raise ProtocolError(f"packet type {ptype} with invalid flags {flags:#x}")
        if ptype == PUBACK:
            session.on_puback(decode_packet_id(body))
        elif ptype == PUBREC:
            session.on_pubrec(decode_packet_id(body))
        elif ptype == PUBREL:
            pid = decode_packet_id(body)
            session.awaiting_rel.discard(pid)
            self.send(encode_ack(PUBCOMP, pid))
        elif ptype == PUBCOMP:
            session.on_pubcomp(decode_packet_id(body))
        elif ptype == SUBSCRIBE:
            self.broker.router.subscribe(session, *decode_subscribe(body))
        elif ptype == UNSUBSCRIBE:
            self.broker.router.unsubscribe(session, *decode_unsubscribe(body))
        elif ptype == PINGREQ:
            if body:
                raise ProtocolError("PINGREQ with a body")
            self.send(PINGRESP_BYTES)
        elif ptype == DISCONNECT:
            if body:
                raise ProtocolError("DISCONNECT with a body")
            self.graceful = True
        elif ptype == CONNECT:
            raise ProtocolError("second CONNECT")
        else:
            raise ProtocolError(f"unexpected packet type {ptype} from a client")

    # ---- keep-alive

    def _check_keepalive(self) -> None:
        idle = self.loop.time() - self._last_rx
        if idle >= self._keepalive_limit:
            log.info("%s: silent for %.1f s (keep-alive %d s x %.1f); dropping it", self, idle,
                     self.connect.keepalive if self.connect else 0, self.broker.cfg.keepalive_factor)
            self.abort()
        else:
            self._keepalive_timer = self.loop.call_later(self._keepalive_limit - idle, self._check_keepalive)

    # ---- output

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        self._out.append(data)
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def send_droppable(self, data: bytes) -> None:
        """A QoS 0 message: dropped when the client is too far behind to take it."""
        if self.transport.get_write_buffer_size() > QOS0_BUFFER_LIMIT:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning("%s: not reading; %d QoS 0 messages dropped so far", self, self.dropped)
            return
        self.send(data)

    def _flush(self) -> None:
        self._flush_pending = False
        out = self._out
        if out and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def close(self) -> None:
        """Write what is pending, then close."""
        if self.closed:
            return
        self._flush()
        self.closed = True
        self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent output (keep-alive expiry, take-over, shutdown)."""
        self.closed = True
        self._out.clear()
        self.transport.abort()

    async def stop(self) -> None:
        """amqtt's handler interface (Broker._cleanup_session)."""
        self.abort()
