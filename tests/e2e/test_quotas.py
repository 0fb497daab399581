"""End-to-end: storage quotas and bandwidth limits on one server (in-process state)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import asyncssh
import pytest

import sftpd
from sftpd.auth import StaticPasswords
from sftpd.state import Usage
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect

KiB, MiB = 1 << 10, 1 << 20


def quota_user(**attributes: object) -> StaticPasswords:
    """dev/dev with these session attributes."""
    return StaticPasswords({"dev": "dev"}, {"dev": dict(attributes)})


async def test_usage_is_counted_at_the_first_login_and_files_are_capped(tmp_path: Path) -> None:
    """Files already in the root count at the first login; a new file past quota_files is
    refused at open with the numbers, while overwriting an existing one is allowed."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    for name, size in (("a.bin", 1000), ("sub/b.bin", 2000), ("sub/c.bin", 3000)):
        (root / name).write_bytes(b"x" * size)
    auth = quota_user(quota_files=4, quota_bytes=MiB)
    async with running_server(backend=sftpd.LocalBackend(root), auth=auth) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            assert await server.state.usage("dev") == Usage(6000, 3)
            async with sftp.open("/d.bin", "wb") as f:
                await f.write(b"d" * 10)
            with pytest.raises(asyncssh.SFTPFailure, match="Quota exceeded: 4 of 4 files"):
                await sftp.open("/e.bin", "wb")
            async with sftp.open("/a.bin", "wb") as f:  # replacing: no new file
                await f.write(b"a" * 500)
            assert await server.state.usage("dev") == Usage(5510, 4)
    assert not (root / "e.bin").exists()


async def test_removes_renames_and_truncates_give_space_back(tmp_path: Path) -> None:
    """Removing a file, renaming over one, and shrinking one give their bytes back;
    growing a file by setstat takes room and is refused past the quota."""
    auth = quota_user(quota_bytes=100 * KiB)
    async with running_server(backend=sftpd.LocalBackend(tmp_path), auth=auth) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            for name, size in (("one", 10 * KiB), ("two", 20 * KiB), ("three", 30 * KiB)):
                async with sftp.open(f"/{name}", "wb") as f:
                    await f.write(b"z" * size)
            assert await server.state.usage("dev") == Usage(60 * KiB, 3)
            await sftp.remove("/one")
            assert await server.state.usage("dev") == Usage(50 * KiB, 2)
            await sftp.posix_rename("/two", "/three")  # three (30 KiB) is replaced
            assert await server.state.usage("dev") == Usage(20 * KiB, 1)
            await sftp.truncate("/three", 5 * KiB)
            assert await server.state.usage("dev") == Usage(5 * KiB, 1)
            await sftp.truncate("/three", 100 * KiB)
            assert await server.state.usage("dev") == Usage(100 * KiB, 1)
            with pytest.raises(asyncssh.SFTPFailure, match="Quota exceeded"):
                await sftp.truncate("/three", 100 * KiB + 1)
            assert (tmp_path / "three").stat().st_size == 100 * KiB


async def test_an_abandoned_upload_gives_its_reservation_back() -> None:
    """A client that vanishes mid-upload stores nothing and holds no reservation."""
    auth = quota_user(quota_bytes=10 * MiB)
    async with running_server(backend=sftpd.MemoryBackend(), auth=auth) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            upload = await sftp.open("/gone.bin", "wb")
            await upload.write(os.urandom(3 * MiB))
            usage = await server.state.usage("dev")
            assert usage is not None
            assert usage.reserved_bytes >= 3 * MiB
        for _ in range(50):
            if await server.state.usage("dev") == Usage(0, 0, 0, 0):
                break
            await asyncio.sleep(0.05)
        assert await server.state.usage("dev") == Usage(0, 0, 0, 0)


async def test_openssh_df_shows_the_quota(openssh: OpenSSH, tmp_path: Path) -> None:
    """OpenSSH's `df` reports the quota as the size and what is left of it as available."""
    auth = quota_user(quota_bytes=10 * MiB)
    async with running_server(backend=sftpd.MemoryBackend(), auth=auth) as server:
        (tmp_path / "four.bin").write_bytes(b"4" * (4 * MiB))
        result = await openssh.run(server.port, "put four.bin\ndf\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sizes = result.stdout.strip().splitlines()[-1].split()
    assert sizes[:3] == ["10240", "4096", "6144"]  # KiB: size, used, available


async def test_a_session_upload_limit_paces_writes() -> None:
    """With session_upload set, an upload takes size / rate (the first burst aside) and
    arrives whole; without it, the same upload is far quicker."""
    data = os.urandom(2 * MiB)
    limits = sftpd.Bandwidth(session_upload=MiB)
    async with running_server(backend=sftpd.MemoryBackend(), bandwidth=limits) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            started = time.monotonic()
            async with sftp.open("/paced.bin", "wb") as f:
                await f.write(data)
            elapsed = time.monotonic() - started
            async with sftp.open("/paced.bin", "rb") as f:
                assert await f.read() == data
    expected = (len(data) - 0.1 * MiB) / MiB  # the bucket starts with 0.1 s of rate
    assert expected * 0.85 <= elapsed <= expected * 1.15, elapsed


async def test_bandwidth_and_quota_settings_are_checked() -> None:
    """Bad rates and quotas fail at construction, saying what to fix."""
    with pytest.raises(sftpd.ConfigError, match=r"bandwidth\.user_download must be a positive"):
        sftpd.Bandwidth(user_download=0)
    with pytest.raises(sftpd.ConfigError, match="bandwidth: 'nope=1' must be NAME=RATE"):
        sftpd.Bandwidth.parse("nope=1")
    assert sftpd.Bandwidth.parse("user-download=10M").user_download == 10 * MiB
    with pytest.raises(sftpd.ConfigError, match="state must be"):
        sftpd.ServerConfig(backend=sftpd.MemoryBackend(), auth={}, system_dir=".", state=3)  # type: ignore[arg-type]
