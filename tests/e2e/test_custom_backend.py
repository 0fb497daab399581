"""End-to-end: a minimal sync custom backend (no streaming) behind a real server."""

from __future__ import annotations

import os

import asyncssh
import pytest

import sftpd
from sftpd.testing import running_server
from tests.backends.test_conformance import SyncDictBackend
from tests.conftest import connect, sha256


async def test_buffered_upload_and_whole_file_download() -> None:
    """Without range reads or writers, uploads spool and commit whole at close."""
    backend = SyncDictBackend()
    data = os.urandom(12 << 20)  # larger than the in-memory spool limit
    async with running_server(backend=backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.mkdir("/in")
            async with sftp.open("/in/f.bin", "wb") as f:
                await f.write(data)
                assert "/in/f.bin" not in backend.files
            assert sha256(backend.files["/in/f.bin"]) == sha256(data)
            async with sftp.open("/in/f.bin", "rb") as f:
                assert sha256(await f.read()) == sha256(data)
            async with sftp.open("/in/f.bin", "r+b") as f:
                await f.write(b"PATCH", 5)
            assert backend.files["/in/f.bin"][:10] == data[:5] + b"PATCH"
            names = await sftp.listdir("/in")
            assert "f.bin" in names
            try:
                await sftp.statvfs("/")
            except asyncssh.SFTPOpUnsupported:
                pass
            else:  # pragma: no cover
                raise AssertionError("statvfs should be unsupported without disk_usage")


class StartupBackend(SyncDictBackend):
    """A custom backend with sync ``startup()`` (which can be told to fail) and ``shutdown()``."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.error = error
        self.startups = 0
        self.shutdowns = 0

    def startup(self) -> None:
        self.startups += 1
        if self.error is not None:
            raise self.error

    def shutdown(self) -> None:
        self.shutdowns += 1


async def test_backend_startup_runs_before_listening_and_can_stop_the_start() -> None:
    """startup() runs once per start, shutdown() once per stop; failed startups are ConfigErrors."""
    backend = StartupBackend()
    for start in (1, 2):
        async with running_server(backend=backend) as server:
            assert (backend.startups, backend.shutdowns) == (start, start - 1)
            async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
                assert await sftp.listdir("/") == [".", ".."]
        assert (backend.startups, backend.shutdowns) == (start, start)
    failing = StartupBackend(RuntimeError("database is down"))
    with pytest.raises(sftpd.ConfigError, match="StartupBackend failed to start: database is down"):
        async with running_server(backend=failing):
            pytest.fail("the server started")
    explained = StartupBackend(sftpd.ConfigError("set DATABASE_URL"))
    with pytest.raises(sftpd.ConfigError, match=r"^set DATABASE_URL$"):
        async with running_server(backend=explained):
            pytest.fail("the server started")


class _RenameCounting(sftpd.MemoryBackend):
    """The memory backend, counting the renames that reach it."""

    renames = 0

    async def rename(self, src: str, dst: str, session: sftpd.Session, *, overwrite: bool) -> None:
        self.renames += 1
        await super().rename(src, dst, session, overwrite=overwrite)


async def test_rename_onto_itself_and_into_itself_are_settled_above_the_backend() -> None:
    """A rename onto itself succeeds (a missing source still fails) and a directory moved
    into itself is refused, both without calling the backend's rename."""
    backend = _RenameCounting()
    async with running_server(backend=backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.mkdir("/d")
            async with sftp.open("/d/a.txt", "w") as f:
                await f.write("a")
            await sftp.posix_rename("/d/a.txt", "/d/a.txt")
            await sftp.rename("/d", "/d")
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.rename("/missing", "/missing")
            with pytest.raises(asyncssh.SFTPError, match="into itself"):
                await sftp.rename("/d", "/d/inner")
            assert backend.renames == 0
            await sftp.rename("/d/a.txt", "/d/b.txt")
            assert backend.renames == 1
            assert sorted(await sftp.listdir("/d")) == [".", "..", "b.txt"]
