"""End-to-end: a client's file times survive on every backend (S3: setstat="keep")."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sftpd.backends.s3 import S3Backend
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect, named_backend
from tests.s3_servers import client_and_bucket

WHEN = 1_600_000_000  # 2020-09-13, well before any upload here


@pytest.fixture(params=["memory", "local", "seaweedfs", "moto"])
async def timed_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    """Each backend; S3 with setstat="keep"."""
    async with named_backend(request, tmp_path, setstat="keep") as backend:
        yield backend


async def test_setstat_after_upload_and_put_p_keep_the_clients_time(
    timed_backend: object, openssh: OpenSSH, tmp_path: Path
) -> None:
    """A WinSCP-style SETSTAT of mtime after the upload, and OpenSSH's `put -p`, leave the
    client's time in stat and in listings seen from a new session; a rename keeps it."""
    (tmp_path / "local.txt").write_bytes(b"from disk")
    os.utime(tmp_path / "local.txt", (WHEN + 50, WHEN + 50))
    async with running_server(backend=timed_backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/winscp.txt", "wb") as f:
                await f.write(b"uploaded")
            await sftp.utime("/winscp.txt", (WHEN, WHEN))
        result = await openssh.run(server.port, "put -p local.txt /putp.txt\n", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            assert int((await sftp.stat("/winscp.txt")).mtime or 0) == WHEN
            assert int((await sftp.stat("/putp.txt")).mtime or 0) == WHEN + 50
            listed = {e.filename: e.attrs.mtime for e in await sftp.readdir("/")}
            assert int(listed["winscp.txt"] or 0) == WHEN
            assert int(listed["putp.txt"] or 0) == WHEN + 50
            await sftp.rename("/winscp.txt", "/moved.txt")
            assert int((await sftp.stat("/moved.txt")).mtime or 0) == WHEN
        listing = await openssh.run(server.port, "ls -l /putp.txt\n", cwd=tmp_path)
        assert "2020" in listing.stdout, listing.stdout


async def test_s3_ignore_mode_still_shows_the_upload_time(seaweedfs: Any) -> None:
    """Without setstat="keep" an S3 SETSTAT of mtime is accepted and changes nothing."""
    async with client_and_bucket(seaweedfs.endpoint, "times") as (client, bucket):
        backend = S3Backend(bucket, client=client)
        async with running_server(backend=backend) as server:
            async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
                async with sftp.open("/f.txt", "wb") as f:
                    await f.write(b"x")
                await sftp.utime("/f.txt", (WHEN, WHEN))
                assert int((await sftp.stat("/f.txt")).mtime or 0) > WHEN + 10**8
