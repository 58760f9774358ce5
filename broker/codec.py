"""MQTT 3.1.1 packet decoding and encoding on plain bytes, for the broker's hot path.

amqtt reads every field with its own ``await``; the broker instead parses whole
packets out of a buffer filled by large reads, so one read can carry hundreds of
PUBLISHes. Decoders raise :class:`ProtocolError` for anything malformed; the
connection that sent it is closed and nothing else is affected.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from amqtt.mqtt.packet import (CONNACK, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK,
                               UNSUBACK)

_U16 = struct.Struct("!H")
PINGRESP_BYTES = bytes([PINGRESP << 4, 0])


class ProtocolError(Exception):
    """The peer broke MQTT 3.1.1; its connection is closed."""


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(slots=True)
class Connect:
    client_id: str
    clean_session: bool
    keepalive: int
    username: str | None
    password: bytes | None
    will: Will | None
    protocol_level: int


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet_bounds(buf: bytearray | bytes, pos: int, max_bytes: int) -> tuple[int, int] | None:
    """(body start, body end) of the packet at ``pos``; None until it is complete in ``buf``."""
    n = len(buf)
    i = pos + 1
    length = 0
    shift = 0
    while True:
        if i >= n:
            return None
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise ProtocolError("remaining length longer than 4 bytes")
    if length > max_bytes:
        raise ProtocolError(f"packet of {length} bytes exceeds max_packet_bytes={max_bytes}")
    end = i + length
    return (i, end) if end <= n else None


def decode_str(body: bytes, pos: int) -> tuple[str, int]:
    raw, pos = decode_bin(body, pos)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("string is not valid UTF-8") from None
    if "\x00" in text:
        raise ProtocolError("string contains U+0000")
    return text, pos


def decode_bin(body: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(body):
        raise ProtocolError("truncated length-prefixed field")
    (n,) = _U16.unpack_from(body, pos)
    end = pos + 2 + n
    if end > len(body):
        raise ProtocolError("truncated length-prefixed field")
    return bytes(body[pos + 2:end]), end


def decode_connect(body: bytes) -> Connect:
    """A CONNECT body; ProtocolError for anything MQTT 3.1 / 3.1.1 does not allow."""
    proto, pos = decode_str(body, 0)
    if pos + 4 > len(body):
        raise ProtocolError("truncated CONNECT")
    level, flags = body[pos], body[pos + 1]
    (keepalive,) = _U16.unpack_from(body, pos + 2)
    pos += 4
    if (proto, level) not in (("MQTT", 4), ("MQIsdp", 3)):
        raise UnsupportedProtocol(f"protocol {proto!r} level {level}")
    if flags & 0x01:
        raise ProtocolError("CONNECT reserved flag set")
    client_id, pos = decode_str(body, pos)
    will = None
    will_qos = (flags >> 3) & 0x03
    if flags & 0x04:
        if will_qos == 3:
            raise ProtocolError("will QoS 3")
        will_topic, pos = decode_str(body, pos)
        will_payload, pos = decode_bin(body, pos)
        check_topic_name(will_topic)
        will = Will(will_topic, will_payload, will_qos, bool(flags & 0x20))
    elif flags & 0x38:
        raise ProtocolError("will QoS/retain set without will flag")
    username = password = None
    if flags & 0x80:
        username, pos = decode_str(body, pos)
    if flags & 0x40:
        if username is None:
            raise ProtocolError("password flag without username flag")
        password, pos = decode_bin(body, pos)
    if pos != len(body):
        raise ProtocolError("trailing bytes in CONNECT")
    return Connect(client_id, bool(flags & 0x02), keepalive, username, password, will, level)


class UnsupportedProtocol(ProtocolError):
    """CONNECT for a protocol other than MQTT 3.1/3.1.1: answered with CONNACK 0x01."""


def check_topic_name(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic:
        raise ProtocolError(f"invalid topic name {topic[:80]!r}")


def valid_filter(filter_: str) -> bool:
    if not filter_:
        return False
    levels = filter_.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def decode_publish(flags: int, body: bytes) -> tuple[str, int | None, bytes]:
    """(topic, packet id or None, payload) of a PUBLISH body."""
    if len(body) < 2:
        raise ProtocolError("truncated PUBLISH")
    (n,) = _U16.unpack_from(body, 0)
    pos = 2 + n
    try:
        topic = body[2:pos].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("topic is not valid UTF-8") from None
    if not topic or pos > len(body) or "+" in topic or "#" in topic or "\x00" in topic:
        raise ProtocolError(f"invalid topic name {topic[:80]!r}")
    packet_id = None
    if flags & 0x06:
        if pos + 2 > len(body):
            raise ProtocolError("truncated PUBLISH")
        (packet_id,) = _U16.unpack_from(body, pos)
        if packet_id == 0:
            raise ProtocolError("packet id 0")
        pos += 2
    return topic, packet_id, bytes(body[pos:])


def decode_packet_id(body: bytes) -> int:
    if len(body) != 2:
        raise ProtocolError("acknowledgement body must be 2 bytes")
    return (body[0] << 8) | body[1]


def decode_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    packet_id = decode_packet_id(body[:2])
    pos, topics = 2, []
    while pos < len(body):
        filter_, pos = decode_str(body, pos)
        if pos >= len(body) or body[pos] > 2:
            raise ProtocolError("invalid requested QoS in SUBSCRIBE")
        if not valid_filter(filter_):
            raise ProtocolError(f"invalid topic filter {filter_[:80]!r}")
        topics.append((filter_, body[pos]))
        pos += 1
    if not topics:
        raise ProtocolError("SUBSCRIBE without topic filters")
    return packet_id, topics


def decode_unsubscribe(body: bytes) -> tuple[int, list[str]]:
    packet_id = decode_packet_id(body[:2])
    pos, filters = 2, []
    while pos < len(body):
        filter_, pos = decode_str(body, pos)
        filters.append(filter_)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return packet_id, filters


def encode_publish(topic: bytes, payload: bytes, qos: int, retain: bool,
                   packet_id: int | None = None, dup: bool = False) -> bytes:
    first = (PUBLISH << 4) | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    if qos:
        head = _U16.pack(len(topic)) + topic + _U16.pack(packet_id)
    else:
        head = _U16.pack(len(topic)) + topic
    n = len(head) + len(payload)
    if n < 128:
        return b"".join((bytes((first, n)), head, payload))
    return b"".join((bytes((first,)), varint(n), head, payload))


def encode_connack(session_present: bool, return_code: int) -> bytes:
    return bytes((CONNACK << 4, 2, 1 if session_present else 0, return_code))


def encode_ack(ptype: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0010) or PUBCOMP, UNSUBACK."""
    return bytes(((ptype << 4) | (0x02 if ptype == PUBREL else 0), 2, packet_id >> 8, packet_id & 0xFF))


def encode_suback(packet_id: int, codes: list[int]) -> bytes:
    body = _U16.pack(packet_id) + bytes(codes)
    return bytes((SUBACK << 4,)) + varint(len(body)) + body


ACK_TYPES = (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK)
