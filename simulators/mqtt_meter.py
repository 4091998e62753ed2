"""A TCP proxy that counts the bytes of an MQTT session, per packet kind and topic.

Put it between a client and the broker (client -> meter -> broker) to see what
a device's session costs on the wire: every PUBLISH with its fixed header,
topic, packet id and properties, every PUBACK, PINGREQ and CONNECT, in each
direction.  Over TLS the stream is opaque: only totals are counted then
(``parse=False``), which against a plaintext run of the same session gives
TLS's own overhead.  TCP/IP headers are below a proxy's sight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field

PACKET_NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}


@dataclass
class Direction:
    """Bytes and packets seen one way; PUBLISH keyed by the topic's last level."""

    total: int = 0
    size: Counter[str] = field(default_factory=Counter)  # bytes per kind
    packets: Counter[str] = field(default_factory=Counter)
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes, parse: bool) -> None:
        self.total += len(data)
        if not parse:
            return
        self._buf += data
        while True:
            frame = _frame_length(self._buf)
            if frame is None:
                return
            size, header = frame
            if len(self._buf) < size:
                return
            packet = bytes(self._buf[:size])
            del self._buf[:size]
            kind = PACKET_NAMES.get(packet[0] >> 4, "?")
            if kind == "PUBLISH":
                topic_len = int.from_bytes(packet[header : header + 2], "big")
                topic = packet[header + 2 : header + 2 + topic_len].decode(errors="replace")
                kind = f"PUBLISH {topic.rsplit('/', 1)[-1]}"
            self.size[kind] += size
            self.packets[kind] += 1


def _frame_length(buf: bytearray) -> tuple[int, int] | None:
    """(whole packet size, fixed header size), or None until enough bytes arrived."""
    multiplier, value = 1, 0
    for i in range(1, 5):
        if i >= len(buf):
            return None
        byte = buf[i]
        value += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return value + i + 1, i + 1
        multiplier *= 128
    raise ValueError("malformed MQTT remaining length")


class MqttMeter:
    """``async with MqttMeter(broker_port) as meter:`` then connect to ``meter.port``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", parse: bool = True):
        self.upstream = (upstream_host, upstream_port)
        self.parse = parse
        self.up = Direction()  # client -> broker
        self.down = Direction()  # broker -> client
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> MqttMeter:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, self.up)),
            asyncio.ensure_future(self._pump(up_reader, writer, self.down)),
        ]
        for p in pumps:
            self._tasks.add(p)
            p.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for p in pumps:
            p.cancel()
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: Direction
    ) -> None:
        while data := await reader.read(65536):
            count.feed(data, self.parse)
            writer.write(data)
            await writer.drain()
