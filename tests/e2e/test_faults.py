"""End-to-end faults: storage restarts, killed clients, a full disk, a flood of channels.

After each fault the server goes on serving, and no partial file, no object and no open
multipart upload is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from sftpd.backends.s3 import S3Backend
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect, make_file, sha256
from tests.e2e.test_s3 import keys, open_uploads

MiB = 1 << 20


def write_counter(bus: telemetry.TelemetryBus, operation: str) -> list[int]:
    """A list that grows by one for each ``operation`` request the server finishes."""
    seen: list[int] = []
    bus.attach(f"count-{operation}", [("sftpd", "sftp", operation)], lambda e: seen.append(1))
    return seen


async def until(check: Any, what: str, seconds: float = 30) -> None:
    """Wait until ``check()`` is true, or fail naming ``what``."""
    for _ in range(int(seconds * 20)):
        if check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def kill_when(proc: asyncio.subprocess.Process, seen: list[int], count: int) -> None:
    """kill -9 the client once the server has served ``count`` of its requests."""
    await until(lambda: len(seen) >= count or proc.returncode is not None, "requests")
    assert proc.returncode is None, "the transfer finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # sftp and its ssh: the connection drops
    await proc.wait()


@contextlib.asynccontextmanager
async def openssh_client(
    openssh: OpenSSH, port: int, batch: str, cwd: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """OpenSSH's sftp running ``batch`` against the server, killed afterwards if alive."""
    proc = await asyncio.create_subprocess_exec(
        *openssh.command(port, "dev"), cwd=cwd, start_new_session=True,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, env=openssh.env("dev"),
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(batch.encode())
    proc.stdin.close()
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_client_killed_mid_upload_leaves_nothing(
    backend_and_files: tuple[object, Any], openssh: OpenSSH, tmp_path: Path
) -> None:
    """kill -9 of OpenSSH's sftp during a 64 MiB put: the upload is aborted (no file, no
    temporary file, no object, no multipart upload) and the server serves the next one."""
    backend, leftovers = backend_and_files
    make_file(tmp_path / "big.bin", 64 * MiB)
    bus = telemetry.TelemetryBus()
    writes = write_counter(bus, "write")
    async with running_server(backend=backend, telemetry=bus) as server:
        async with openssh_client(openssh, server.port, "put big.bin /big.bin\n", tmp_path) as proc:
            await kill_when(proc, writes, 100)
        await until(lambda: server.active_sessions == 0, "the killed session to end")
        await until_empty(leftovers)
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/after.bin", "wb") as f:
                await f.write(b"next")
        assert await leftovers() == ["after.bin"]


async def until_empty(leftovers: Any) -> None:
    """Wait (an abort may still be finishing) until the backend holds nothing."""
    for _ in range(100):
        if not await leftovers():
            return
        await asyncio.sleep(0.1)
    assert await leftovers() == []


async def test_a_client_killed_mid_download_changes_nothing(
    backend_and_files: tuple[object, Any], openssh: OpenSSH, tmp_path: Path
) -> None:
    """kill -9 of OpenSSH's sftp during a get: its session ends, the file stays as it
    was, nothing else appears, and the file downloads whole afterwards."""
    backend, leftovers = backend_and_files
    data = os.urandom(48 * MiB)
    bus = telemetry.TelemetryBus()
    reads = write_counter(bus, "read")
    async with running_server(backend=backend, telemetry=bus) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/big.bin", "wb") as f:
                await f.write(data)
        async with openssh_client(openssh, server.port, "get /big.bin got.bin\n", tmp_path) as proc:
            await kill_when(proc, reads, 100)
        await until(lambda: server.active_sessions == 0, "the killed session to end")
        assert await leftovers() == ["big.bin"]
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/big.bin", "rb") as f:
                assert sha256(await f.read()) == sha256(data)


async def read_all(f: asyncssh.SFTPClientFile, start: int, size: int) -> None:
    """Read from ``start`` to ``size`` a MiB at a time."""
    for offset in range(start, size, MiB):
        await f.read(MiB, offset)


async def test_storage_restarted_mid_download(seaweedfs: Any) -> None:
    """SeaweedFS stopped during a download: the client's read fails with a short reason
    (no Python text), the server lives on, and once storage is back the same file
    downloads whole; no object but the file, no multipart upload."""
    from botocore.config import Config

    from tests.s3_servers import client_for

    config = Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5)
    data = os.urandom(40 * MiB)
    async with client_for(seaweedfs.endpoint, config=config) as client:
        await client.create_bucket(Bucket="outage-read")
        backend = S3Backend("outage-read", client=client, part_size=5 * MiB, read_chunk=MiB)
        async with running_server(backend=backend) as server:
            async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
                async with sftp.open("/big.bin", "wb") as f:
                    await f.write(data)
                f = await sftp.open("/big.bin", "rb")
                assert await f.read(MiB, 0) == data[:MiB]
                seaweedfs.stop()
                try:
                    with pytest.raises(asyncssh.SFTPError) as failed:
                        await read_all(f, MiB, len(data))
                finally:
                    seaweedfs.start_again()
                reason = failed.value.reason
                assert reason
                assert "Traceback" not in reason
                assert "Error(" not in reason
                await f.close()
                async with sftp.open("/big.bin", "rb") as g:
                    assert sha256(await g.read()) == sha256(data)
        assert await keys(client, "outage-read") == ["big.bin"]
        assert await open_uploads(client, "outage-read") == []


@contextlib.contextmanager
def small_file_system(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (needs root, as CI runs the suite)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_disk_full_during_an_upload_fails_it_and_leaves_nothing(tmp_path: Path) -> None:
    """A 16 MiB upload onto an 8 MiB file system fails with "No space left" (the write,
    and the close saying why), leaves no partial or temporary file, gives the space back,
    and the next small upload works."""
    with small_file_system(tmp_path / "fs", "8m") as root:
        free_before = os.statvfs(root).f_bfree
        async with running_server(backend=sftpd.LocalBackend(root)) as server:
            async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
                f = await sftp.open("/too-big.bin", "wb")
                with pytest.raises(asyncssh.SFTPError) as write_failed:
                    await f.write(os.urandom(16 * MiB))
                assert write_failed.value.reason == "No space left"
                with pytest.raises(asyncssh.SFTPError) as close_failed:
                    await f.close()
                assert close_failed.value.reason == (
                    "Upload failed (No space left); nothing was stored"
                )
                assert sorted(os.listdir(root)) == []
                assert os.statvfs(root).f_bfree == free_before
                async with sftp.open("/small.bin", "wb") as f:
                    await f.write(b"fits")
                assert await sftp.listdir("/") == [".", "..", "small.bin"]
        assert (root / "small.bin").read_bytes() == b"fits"


async def test_hundreds_of_channels_on_one_connection_are_refused_beyond_the_cap() -> None:
    """A client asking for 300 SFTP channels at once gets max_channels of them; the rest
    are refused, the server and other connections are unaffected, and after the client
    closes its channels it may open new ones."""
    async with running_server(backend=sftpd.MemoryBackend(), max_channels=10) as server:
        async with connect(server.port) as conn:
            results = await asyncio.gather(
                *(conn.start_sftp_client() for _ in range(300)), return_exceptions=True
            )
            clients = [r for r in results if isinstance(r, asyncssh.SFTPClient)]
            refused = [r for r in results if isinstance(r, asyncssh.ChannelOpenError)]
            assert (len(clients), len(refused)) == (10, 290)
            async with connect(server.port) as other, other.start_sftp_client() as sftp:
                assert await sftp.listdir("/") == [".", ".."]
            for client in clients:
                await client.realpath(".")
                client.exit()
                await client.wait_closed()
            again = [await conn.start_sftp_client() for _ in range(10)]
            assert [await c.realpath(".") for c in again] == ["/"] * 10
