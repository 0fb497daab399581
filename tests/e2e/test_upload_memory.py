"""End-to-end: one budget bounds the upload bytes the whole server holds in memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import sftpd
from sftpd.backends.s3 import S3Backend
from sftpd.testing import running_server
from tests.backends.test_conformance import SyncDictBackend
from tests.conftest import connect
from tests.e2e.test_s3 import open_uploads
from tests.s3_servers import client_and_bucket

MiB = 1 << 20


@pytest.fixture
async def weed(seaweedfs: Any) -> AsyncIterator[tuple[Any, str]]:
    """A client of the suite's SeaweedFS and a new, empty bucket on it."""
    async with client_and_bucket(seaweedfs.endpoint, "memory") as pair:
        yield pair


async def upload_all(port: int, files: dict[str, bytes], sessions: int) -> None:
    """Upload ``files`` over ``sessions`` connections at once, 64 requests in flight each."""
    names = sorted(files)

    async def one_session(mine: list[str]) -> None:
        async with connect(port) as conn, conn.start_sftp_client() as sftp:
            for name in mine:
                async with sftp.open(name, "wb") as f:
                    await f.write(files[name])

    await asyncio.gather(*(one_session(names[i::sessions]) for i in range(sessions)))


async def read_back(port: int, names: list[str]) -> dict[str, str]:
    """The sha256 of each file as a client reads it back."""
    digests = {}
    async with connect(port) as conn, conn.start_sftp_client() as sftp:
        for name in names:
            async with sftp.open(name, "rb") as f:
                digests[name] = hashlib.sha256(await f.read()).hexdigest()
    return digests


def digests_of(files: dict[str, bytes]) -> dict[str, str]:
    """The sha256 of each file's bytes."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


async def test_s3_uploads_wait_for_memory_and_all_arrive(weed: tuple[Any, str]) -> None:
    """Six 18 MiB S3 uploads at once under a 16 MiB budget: the server never holds more
    than the budget, uploads wait or spill instead, and every byte is stored."""
    s3_client, bucket = weed
    backend = S3Backend(bucket, client=s3_client, part_size=5 * MiB, upload_concurrency=2)
    files = {f"/f{i}.bin": os.urandom(18 * MiB) for i in range(6)}
    async with running_server(backend=backend, upload_memory=16 * MiB) as server:
        await upload_all(server.port, files, sessions=6)
        memory = server.upload_memory
        assert memory.in_use == 0
        assert 5 * MiB <= memory.peak <= 16 * MiB
        assert memory.waits > 0  # some part had to wait: the budget did the bounding
        assert await read_back(server.port, sorted(files)) == digests_of(files)
    assert await open_uploads(s3_client, bucket) == []


async def test_an_s3_upload_larger_than_the_budget_still_completes(
    weed: tuple[Any, str],
) -> None:
    """A budget smaller than one part spills the upload to disk, then sends it part by
    part with the whole budget: slower, never refused."""
    s3_client, bucket = weed
    backend = S3Backend(bucket, client=s3_client, part_size=5 * MiB, upload_concurrency=2)
    files = {"/big.bin": os.urandom(12 * MiB)}
    async with running_server(backend=backend, upload_memory=1 * MiB) as server:
        await upload_all(server.port, files, sessions=1)
        assert server.upload_memory.in_use == 0
        assert await read_back(server.port, ["/big.bin"]) == digests_of(files)
    assert await open_uploads(s3_client, bucket) == []


async def test_spooled_uploads_spill_to_disk_when_memory_is_spent() -> None:
    """Backends without streaming writes spool uploads; past the budget the spools go to
    temporary files at once, so four 6 MiB uploads hold at most 2 MiB in memory."""
    backend = SyncDictBackend()
    files = {f"/s{i}.bin": os.urandom(6 * MiB) for i in range(4)}
    async with running_server(backend=backend, upload_memory=2 * MiB) as server:
        await upload_all(server.port, files, sessions=4)
        assert server.upload_memory.in_use == 0
        assert 0 < server.upload_memory.peak <= 2 * MiB
    assert digests_of({k: bytes(v) for k, v in backend.files.items()}) == digests_of(files)


async def test_local_uploads_write_through_when_memory_is_spent(tmp_path: Path) -> None:
    """The local backend's batches stay within a 256 KiB budget: writes go to disk at
    once instead of being gathered, and the files are intact."""
    backend = sftpd.LocalBackend(tmp_path, io="threads")
    files = {f"/l{i}.bin": os.urandom(4 * MiB) for i in range(4)}
    async with running_server(backend=backend, upload_memory=256 << 10) as server:
        await upload_all(server.port, files, sessions=4)
        assert server.upload_memory.in_use == 0
        assert 0 < server.upload_memory.peak <= 256 << 10
    stored = {f"/{p.name}": p.read_bytes() for p in tmp_path.iterdir()}  # noqa: ASYNC240
    assert digests_of(stored) == digests_of(files)
