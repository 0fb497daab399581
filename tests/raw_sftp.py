"""The sftp subsystem spoken by hand, for tests that need packets no client library sends."""

from __future__ import annotations

import asyncio
import struct
from typing import Any, cast

import asyncssh


def packet(kind: int, *fields: bytes) -> bytes:
    """One SFTP packet: length, type, fields."""
    body = bytes([kind]) + b"".join(fields)
    return struct.pack(">I", len(body)) + body


def string(value: bytes) -> bytes:
    """An SFTP string: length, then the bytes."""
    return struct.pack(">I", len(value)) + value


class RawSftp(asyncssh.SSHClientSession[bytes]):
    """Collects what the server sends, so the test decides when to read and what to send."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.arrived = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.buffer += data
        self.arrived.set()

    async def packet(self) -> tuple[int, bytes]:
        """The next whole SFTP packet: its type and the rest."""
        while len(self.buffer) < 4 or len(self.buffer) < 4 + int.from_bytes(self.buffer[:4], "big"):
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 30)
        size = int.from_bytes(self.buffer[:4], "big")
        body = bytes(self.buffer[4 : 4 + size])
        del self.buffer[: 4 + size]
        return body[0], body[1:]


async def open_raw(conn: asyncssh.SSHClientConnection, **options: Any) -> tuple[Any, RawSftp]:
    """Start the sftp subsystem on ``conn`` and exchange INIT/VERSION (version 3)."""
    chan, session = await conn.create_session(RawSftp, subsystem="sftp", encoding=None, **options)
    raw = cast(RawSftp, session)
    chan.write(packet(1, struct.pack(">I", 3)))
    kind, _ = await raw.packet()
    assert kind == 2  # VERSION
    return chan, raw
