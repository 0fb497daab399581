"""End-to-end: a client that stops reading cannot make the server queue replies forever."""

from __future__ import annotations

import asyncio
import os
import struct

import sftpd
from sftpd import telemetry
from sftpd._sftp.engine import LIMIT_READ, REPLY_BACKLOG
from sftpd.testing import running_server
from tests.conftest import connect
from tests.raw_sftp import open_raw, packet, string

READ = LIMIT_READ  # the largest read the server announces (limits@openssh.com)
COUNT = 120  # 30 MiB of reads asked for at once


async def test_reads_wait_while_the_client_takes_no_replies() -> None:
    """A stalled client gets only about REPLY_BACKLOG of replies queued, then all, intact."""
    data = os.urandom(COUNT * READ)
    backend = sftpd.MemoryBackend()
    bus = telemetry.TelemetryBus()
    reads: list[int] = []
    bus.attach("count-reads", [("sftpd", "sftp", "read")], lambda e: reads.append(1))
    async with running_server(backend=backend, telemetry=bus) as server:
        async with connect(server.port) as conn:
            async with conn.start_sftp_client() as sftp, sftp.open("/big.bin", "wb") as f:
                await f.write(data)
            chan, raw = await open_raw(conn, window=64 << 10)
            chan.write(packet(3, struct.pack(">I", 1), string(b"/big.bin"),
                              struct.pack(">II", 1, 0)))  # OPEN for reading  # fmt: skip
            kind, rest = await raw.packet()
            assert kind == 102  # HANDLE
            handle = rest[4:]
            chan.pause_reading()
            for i in range(COUNT):
                chan.write(packet(5, struct.pack(">I", 100 + i), handle,
                                  struct.pack(">QI", i * READ, READ)))  # READ  # fmt: skip
            await asyncio.sleep(1.5)
            answered_while_stalled = len(reads)
            chan.resume_reading()
            replies = {}
            for _ in range(COUNT):
                kind, rest = await raw.packet()
                assert kind == 103  # DATA
                request, length = struct.unpack(">II", rest[:8])
                replies[request - 100] = rest[8 : 8 + length]
            chan.close()
    assert 0 < answered_while_stalled <= REPLY_BACKLOG // READ + 2
    assert len(reads) == COUNT
    assert b"".join(replies[i] for i in range(COUNT)) == data
