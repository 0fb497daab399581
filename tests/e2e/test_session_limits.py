"""End-to-end: what one session may use: file size (``max_file_size``), open files."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect, make_file, upload_stored

KiB = 1024


def users(**limits: int | None) -> sftpd.StaticPasswords:
    """Users with password "pw"; a limit given here becomes their max_file_size attribute."""
    attributes = {name: {"max_file_size": limit} for name, limit in limits.items()}
    return sftpd.StaticPasswords({"dev": "dev", **dict.fromkeys(limits, "pw")}, attributes)


async def test_upload_past_the_limit_fails_and_stores_nothing() -> None:
    """A write past max_file_size fails with the limit in its reason; nothing is stored.

    An upload of exactly the limit is stored, and a failed replacement leaves the old file.
    """
    backend = sftpd.MemoryBackend({"/old.bin": b"old"})
    bus = telemetry.TelemetryBus()
    events: list[telemetry.Event] = []
    bus.attach("t", [("sftpd", "sftp", "write")], events.append)
    async with running_server(backend=backend, max_file_size=64 * KiB, telemetry=bus) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/exact.bin", "wb") as f:
                await f.write(b"x" * 64 * KiB)
            f = await sftp.open("/old.bin", "wb")
            await f.write(b"y" * 60 * KiB)
            with pytest.raises(asyncssh.SFTPFailure, match="Files may be at most 65536 bytes"):
                await f.write(b"y" * 8 * KiB, 60 * KiB)
            with pytest.raises(
                asyncssh.SFTPFailure,
                match=(r"^Upload failed \(Files may be at most 65536 bytes\); nothing was stored$"),
            ):
                await f.close()
            assert await sftp.getsize("/exact.bin") == 64 * KiB
            async with sftp.open("/old.bin", "rb") as f:
                assert await f.read() == b"old"
    refused = [e for e in events if e.metadata.get("result") != "ok"]
    assert [e.metadata.get("reason") for e in refused] == ["Files may be at most 65536 bytes"]


async def test_append_and_truncate_count_toward_the_limit() -> None:
    """Appending past the limit and extending with setstat(size) are refused too."""
    backend = sftpd.MemoryBackend({"/log.txt": b"a" * 60 * KiB})
    async with running_server(backend=backend, max_file_size=64 * KiB) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            f = await sftp.open("/log.txt", "ab")
            with pytest.raises(asyncssh.SFTPFailure, match="at most 65536 bytes"):
                await f.write(b"b" * 5 * KiB)
            with pytest.raises(asyncssh.SFTPFailure):
                await f.close()
            f = await sftp.open("/new.txt", "wb")
            with pytest.raises(asyncssh.SFTPFailure, match="at most 65536 bytes"):
                await f.truncate(65 * KiB)
            with pytest.raises(asyncssh.SFTPFailure):
                await f.close()
            assert await sftp.getsize("/log.txt") == 60 * KiB
            assert not await sftp.exists("/new.txt")


async def test_session_attribute_overrides_the_server_limit() -> None:
    """An authenticator's max_file_size (larger, smaller or None) wins over the server's."""
    auth = users(big=1024 * KiB, small=KiB, free=None)
    backend = sftpd.MemoryBackend()
    async with running_server(backend=backend, auth=auth, max_file_size=64 * KiB) as server:
        cases = (("dev", 64 * KiB), ("dev", 64 * KiB + 1), ("big", 1024 * KiB),
                 ("big", 1024 * KiB + 1), ("small", KiB), ("small", KiB + 1),
                 ("free", 2048 * KiB))  # fmt: skip
        stored = [
            await upload_stored(server.port, user, "dev" if user == "dev" else "pw", size)
            for user, size in cases
        ]
        assert stored == [True, False, True, False, True, False, True]


async def test_bad_limit_attribute_refuses_the_login() -> None:
    """A max_file_size attribute that is not a byte count refuses the login, not the server."""
    auth = sftpd.StaticPasswords({"dev": "dev"}, {"dev": {"max_file_size": "1G"}})
    async with running_server(backend=sftpd.MemoryBackend(), auth=auth) as server:
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(server.port):
                pass


@pytest.mark.parametrize("value", [-1, 1.5, True, "10"])
def test_bad_server_limit_fails_at_construction(value: Any) -> None:
    """max_file_size must be a whole, non-negative number of bytes."""
    with pytest.raises(sftpd.ConfigError, match="max_file_size must be a number of bytes"):
        sftpd.ServerConfig(backend=sftpd.MemoryBackend(), auth={"a": "b"}, max_file_size=value)


async def test_openssh_put_past_the_limit(openssh: OpenSSH, tmp_path: Path) -> None:
    """OpenSSH's sftp reports the failed write and exits non-zero; the file does not appear.

    (OpenSSH prints the status, "Failure" for SFTP v3, not the server's reason.)
    """
    make_file(tmp_path / "big.bin", 300 * KiB)
    make_file(tmp_path / "ok.bin", 100 * KiB)
    backend = sftpd.MemoryBackend()
    async with running_server(backend=backend, max_file_size=200 * KiB) as server:
        result = await openssh.run(server.port, "put ok.bin\nput big.bin\n", cwd=tmp_path)
        assert result.returncode == 1
        assert 'write remote "/big.bin": Failure' in result.stderr
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            assert sorted(await sftp.listdir("/")) == [".", "..", "ok.bin"]


async def test_open_files_are_capped_per_session() -> None:
    """The open past max_open_files fails (reads and writes alike); a close frees a slot.

    Each open upload may hold a part in memory, so the cap bounds a session's memory.
    Another session has its own allowance.
    """
    backend = sftpd.MemoryBackend({"/r.txt": b"r"})
    async with running_server(backend=backend, max_open_files=3) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            held = [await sftp.open("/a.bin", "wb"), await sftp.open("/b.bin", "wb"),
                    await sftp.open("/r.txt", "rb")]  # fmt: skip
            with pytest.raises(
                asyncssh.SFTPFailure, match=r"Too many open files \(at most 3 per session\)"
            ):
                await sftp.open("/c.bin", "wb")
            async with connect(server.port) as other, other.start_sftp_client() as sftp2:
                async with sftp2.open("/r.txt", "rb") as f:
                    assert await f.read() == b"r"
            await held[0].write(b"a")
            await held[0].close()
            async with sftp.open("/c.bin", "wb") as f:
                await f.write(b"c")
            for f in held[1:]:
                await f.close()
            assert sorted(await sftp.listdir("/")) == [
                ".",
                "..",
                "a.bin",
                "b.bin",
                "c.bin",
                "r.txt",
            ]


class SlowStat(sftpd.MemoryBackend):
    """A memory backend whose stat takes a while, as remote storage does."""

    async def stat(self, path: str, session: sftpd.Session) -> sftpd.FileAttrs:
        await asyncio.sleep(0.05)
        return await super().stat(path, session)


async def test_concurrent_opens_cannot_overshoot_the_cap() -> None:
    """Opens sent at once, before any completes, never overshoot: exactly the cap succeed.

    (asyncssh serves a session's requests one at a time; the slow stat would expose an
    open counted only once it completed, should that change.)
    """
    async with running_server(backend=SlowStat(), max_open_files=4) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            results = await asyncio.gather(
                *(sftp.open(f"/f{i}.bin", "wb") for i in range(10)), return_exceptions=True
            )
            opened = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, asyncssh.SFTPFailure)]
            assert (len(opened), len(refused)) == (4, 6)
            for f in opened:
                await f.close()
