"""End-to-end: the post-upload worker and the shared-state SQLite backend examples."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from examples.post_upload_worker import IngestPipeline
from examples.sqlite_backend import SqliteBackend

import sftpd
from sftpd.testing import BackendConformance, running_server
from tests.conftest import connect


async def test_uploads_are_processed_after_they_are_stored() -> None:
    """Each stored upload reaches the worker once; a failed upload never does."""
    backend = sftpd.MemoryBackend()
    blobs = {f"/in/{i}.bin": os.urandom(50_000 + i) for i in range(5)}
    async with IngestPipeline(backend) as pipeline:
        async with running_server(backend=backend, on_upload=pipeline.on_upload) as server:
            async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
                await sftp.mkdir("/in")
                for path, data in blobs.items():
                    async with sftp.open(path, "wb") as f:
                        await f.write(data)
                abandoned = await sftp.open("/in/abandoned.bin", "wb")
                await abandoned.write(b"never stored")
            await asyncio.wait_for(pipeline.queue.join(), 10)
    assert pipeline.processed == {p: hashlib.sha256(d).hexdigest() for p, d in blobs.items()}


class TestSqliteBackend(BackendConformance):
    """The shared-state example passes the conformance suite."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Any:
        backend = SqliteBackend(str(tmp_path / "files.db"))
        yield backend
        backend.close()


async def test_one_shared_backend_serves_concurrent_sessions(tmp_path: Path) -> None:
    """Several sessions share one backend object, its bounded pool and its lifecycle."""
    backend = SqliteBackend(str(tmp_path / "files.db"), pool_size=2)
    async with running_server(backend=backend, auth={"a": "a", "b": "b", "c": "c"}) as server:

        async def client(user: str) -> bytes:
            async with connect(server.port, user, user) as conn, conn.start_sftp_client() as s:
                data = os.urandom(200_000)
                async with s.open(f"/{user}.bin", "wb") as f:
                    await f.write(data)
                async with s.open(f"/{user}.bin", "rb") as f:
                    assert await f.read() == data
                assert len(backend.active_sessions) >= 1
                return data

        results = await asyncio.gather(*(client(u) for u in ("a", "b", "c")))
        assert all(results)
    for _ in range(50):
        if not backend.active_sessions:
            break
        await asyncio.sleep(0.02)
    assert backend.active_sessions == set()
    assert 1 <= backend.in_use_peak <= backend.pool_size
    backend.close()
    assert backend.closed
