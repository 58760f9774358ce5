"""A minimal MQTT 3.1.1 client on a bare socket, for tests that need exact control.

paho always answers the broker (PUBACK, PINGREQ); the broker behaviour tests need
clients that go silent, never acknowledge, or read the raw CONNACK/SUBACK codes.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
SUBACK_FAILURE = 0x80


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
    clean_session: bool = True,
    will: tuple[str, bytes, int, bool] | None = None,
) -> bytes:
    """CONNECT; ``will`` is (topic, payload, qos, retain)."""
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if will is not None:
        topic, msg, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + _str(msg)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_str(f) + bytes([q]) for f, q in filters)
    return packet((SUBSCRIBE << 4) | 0x02, body)


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                   packet_id: int = 1, dup: bool = False) -> bytes:
    first = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = _str(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return packet(first, body)


def puback_packet(packet_id: int) -> bytes:
    return packet(PUBACK << 4, struct.pack("!H", packet_id))


@dataclass(frozen=True)
class Packet:
    """One received packet: its type, flags and body."""

    type: int
    flags: int
    body: bytes

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 0x03

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 0x01)

    def publish_fields(self) -> tuple[str, int | None, bytes]:
        """(topic, packet id or None, payload) of a PUBLISH."""
        (n,) = struct.unpack_from("!H", self.body)
        topic = self.body[2:2 + n].decode()
        pos = 2 + n
        pid = None
        if self.qos:
            (pid,) = struct.unpack_from("!H", self.body, pos)
            pos += 2
        return topic, pid, self.body[pos:]


class ConnectionClosed(Exception):
    """The broker closed the connection."""


class RawClient:
    """A socket speaking MQTT 3.1.1 by hand; every read has a deadline."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int, deadline: float) -> None:
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete packet within the deadline ({len(self._buf)} bytes buffered)")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ConnectionClosed("connection closed by the broker")
            self._buf += chunk

    def read(self, timeout: float = 5.0) -> Packet:
        """The next packet; TimeoutError or ConnectionClosed otherwise."""
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        length, mult, i = 0, 1, 1
        while True:
            self._fill(i + 1, deadline)
            byte = self._buf[i]
            length += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
        self._fill(i + length, deadline)
        first, body = self._buf[0], self._buf[i:i + length]
        self._buf = self._buf[i + length:]
        return Packet(first >> 4, first & 0x0F, body)

    def read_type(self, ptype: int, timeout: float = 5.0) -> Packet:
        """The next packet of this type, skipping others (e.g. retained PUBLISHes before a SUBACK)."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.read(max(0.0, deadline - time.monotonic()))
            if p.type == ptype:
                return p

    def connect(self, client_id: str, **kw) -> tuple[bool, int]:  # noqa: ANN003
        """Send CONNECT and return (session_present, return code) from the CONNACK."""
        self.send(connect_packet(client_id, **kw))
        p = self.read()
        assert p.type == CONNACK, f"expected CONNACK, got packet type {p.type}"
        return bool(p.body[0] & 0x01), p.body[1]

    def subscribe(self, filters: list[tuple[str, int]], packet_id: int = 1) -> list[int]:
        """SUBSCRIBE and the SUBACK's return codes (0x80 = refused)."""
        self.send(subscribe_packet(packet_id, filters))
        p = self.read_type(SUBACK)
        assert struct.unpack_from("!H", p.body)[0] == packet_id
        return list(p.body[2:])

    def closed_by_peer(self, timeout: float) -> bool:
        """True when the broker closes the connection within ``timeout`` (packets read are dropped)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.read(max(0.0, deadline - time.monotonic()))
        except ConnectionClosed:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
