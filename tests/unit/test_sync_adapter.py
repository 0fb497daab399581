"""Unit: sync backends' readers and writers reach the thread pool once per MiB, not per request."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from sftpd.backend import BATCH, _AsyncReader, _AsyncWriter

KiB = 1 << 10


class FileWriter:
    """A sync writer into a bytearray that counts its calls."""

    concurrent_writes = True

    def __init__(self, fail_at: int | None = None) -> None:
        self.content = bytearray()
        self.calls = 0
        self.committed = False
        self.fail_at = fail_at

    def write(self, offset: int, data: bytes) -> None:
        self.calls += 1
        if self.fail_at is not None and offset <= self.fail_at < offset + len(data):
            raise OSError(28, "No space left on device")
        end = offset + len(data)
        if len(self.content) < end:
            self.content.extend(bytes(end - len(self.content)))
        self.content[offset:end] = data

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.content[offset : offset + length])

    def commit(self) -> None:
        self.committed = True

    def abort(self) -> None:
        self.content.clear()


class FileReader:
    """A sync reader over bytes that counts its calls."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    def read(self, offset: int, length: int) -> bytes:
        self.calls += 1
        return self.data[offset : offset + length]

    def close(self) -> None:
        pass


@pytest.fixture
def pool() -> ThreadPoolExecutor:
    """A small thread pool standing in for the backend's."""
    return ThreadPoolExecutor(4)


async def test_32k_writes_reach_a_sync_writer_a_mib_at_a_time(pool: ThreadPoolExecutor) -> None:
    """4 MiB of 32 KiB writes, 64 at once, arrive whole in 4 thread-pool calls."""
    inner = FileWriter()
    writer = _AsyncWriter(inner, pool)
    data = os.urandom(4 * BATCH)
    chunks = range(0, len(data), 32 * KiB)
    await asyncio.gather(*(writer.write(o, data[o : o + 32 * KiB]) for o in chunks))
    await writer.commit()
    assert inner.committed
    assert bytes(inner.content) == data
    assert inner.calls <= 5


async def test_a_rewrite_lands_after_what_it_replaces(pool: ThreadPoolExecutor) -> None:
    """Writing a range again, after writes elsewhere, leaves the later bytes."""
    inner = FileWriter()
    writer = _AsyncWriter(inner, pool)
    await writer.write(0, b"a" * 100)
    await writer.write(5000, b"b" * 100)  # not contiguous: the first batch goes out
    await writer.write(0, b"c" * 50)
    assert await writer.read(0, 100) == b"c" * 50 + b"a" * 50  # a read sees every write
    await writer.commit()
    assert bytes(inner.content[:100]) == b"c" * 50 + b"a" * 50
    assert bytes(inner.content[5000:5100]) == b"b" * 100


async def test_a_refused_batch_fails_the_commit(pool: ThreadPoolExecutor) -> None:
    """A write the storage refuses while batched fails the commit; nothing is committed."""
    inner = FileWriter(fail_at=10)
    writer = _AsyncWriter(inner, pool)
    await writer.write(0, b"x" * 100)  # only gathered: the storage has not seen it yet
    with pytest.raises(OSError, match="No space"):
        await writer.commit()
    assert not inner.committed


async def test_32k_reads_of_a_sync_reader_cost_one_call_per_mib(pool: ThreadPoolExecutor) -> None:
    """4 MiB read in 32 KiB requests, 64 outstanding, takes about 4 reads of the storage,
    and every read returns the right bytes, the last one short at the end of the file."""
    data = os.urandom(4 * BATCH - 100)
    inner = FileReader(data)
    reader = _AsyncReader(inner, pool)
    offsets = list(range(0, len(data) + 32 * KiB, 32 * KiB))
    pieces = await asyncio.gather(*(reader.read(o, 32 * KiB) for o in offsets))
    assert b"".join(pieces) == data
    assert pieces[-1] == b""
    assert inner.calls <= 6
    await reader.close()
