"""End-to-end: multipart uploads nobody could finish are aborted, and only those."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import sftpd
from sftpd.backends.s3 import S3Backend
from sftpd.cli import main
from tests.conftest import connect, start_cli
from tests.e2e.test_s3 import open_uploads
from tests.s3_servers import aws_env, client_and_bucket

# moto reports every multipart upload as initiated in 2010, so the age rules are tested
# against SeaweedFS only, which reports the real time as S3 does.


@pytest.fixture
async def weed(seaweedfs: Any) -> AsyncIterator[tuple[Any, str]]:
    """A client of the suite's SeaweedFS and a new, empty bucket on it."""
    async with client_and_bucket(seaweedfs.endpoint, "janitor") as pair:
        yield pair


async def test_only_old_uploads_under_the_prefix_are_aborted(weed: tuple[Any, str]) -> None:
    """A recent upload (a live peer's) is left alone, an old one under the prefix is
    aborted, and one outside the prefix is never touched, however old."""
    s3_client, bucket = weed
    for key in ("inbox/a.bin", "other/b.bin"):
        await s3_client.create_multipart_upload(Bucket=bucket, Key=key)
    backend = S3Backend(bucket, prefix="inbox", client=s3_client)
    assert await backend.abort_stale_uploads(older_than=3600) == []
    assert await open_uploads(s3_client, bucket) == ["inbox/a.bin", "other/b.bin"]
    await asyncio.sleep(1.1)  # S3 reports Initiated to the second
    assert await backend.abort_stale_uploads(older_than=1) == ["inbox/a.bin"]
    assert await open_uploads(s3_client, bucket) == ["other/b.bin"]


async def test_a_server_killed_mid_upload_leaves_no_upload_after_the_janitor(
    seaweedfs: Any, weed: tuple[Any, str], tmp_path: Path
) -> None:
    """kill -9 of sftpd during an S3 upload leaves an open multipart upload; the next
    server's janitor (at start-up, with a short age) aborts it, and no object remains."""
    s3_client, bucket = weed
    (tmp_path / "sftpd.toml").write_text("[s3]\nstale_uploads_after = 1\npart_size = 5242880\n")
    args = ("--config", "sftpd.toml", "--backend", f"s3://{bucket}/inbox")
    env = aws_env(seaweedfs.endpoint)
    proc, port, _ = await start_cli(*args, cwd=tmp_path, env=env)
    async with connect(port) as conn, conn.start_sftp_client() as sftp:
        f = await sftp.open("/big.bin", "wb")
        await f.write(b"x" * (12 << 20))  # two parts sent: a multipart upload is open
        for _ in range(100):
            if await open_uploads(s3_client, bucket):
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert await open_uploads(s3_client, bucket) == ["inbox/big.bin"]
    await asyncio.sleep(1.1)
    proc, port, _ = await start_cli(*args, cwd=tmp_path, env=env)
    try:
        for _ in range(100):
            if not await open_uploads(s3_client, bucket):
                break
            await asyncio.sleep(0.05)
        assert await open_uploads(s3_client, bucket) == []
        listed = await s3_client.list_objects_v2(Bucket=bucket)
        assert listed.get("KeyCount", 0) == 0
    finally:
        proc.kill()
        await proc.wait()


async def test_s3_cleanup_command_aborts_once_and_lists(
    seaweedfs: Any, weed: tuple[Any, str]
) -> None:
    """`sftpd s3 cleanup s3://BUCKET/PREFIX --older-than 0` aborts the uploads under the
    prefix and names them; a target that is not s3:// is refused with exit code 2."""
    client, bucket = weed
    await client.create_multipart_upload(Bucket=bucket, Key="inbox/left.bin")
    env = aws_env(seaweedfs.endpoint)
    argv = ["s3", "cleanup", f"s3://{bucket}/inbox", "--older-than", "0"]
    result = await asyncio.to_thread(CliRunner().invoke, main, argv, env=env)
    assert result.exit_code == 0, result.output
    assert "aborted  inbox/left.bin" in result.output
    assert "1 stale multipart upload(s) aborted" in result.output
    assert await open_uploads(client, bucket) == []
    bad = await asyncio.to_thread(CliRunner().invoke, main, ["s3", "cleanup", "local:/tmp"])
    assert bad.exit_code == 2
    assert "is not s3://BUCKET/PREFIX" in bad.output


def test_janitor_settings_are_checked() -> None:
    """A janitor age or period that is not a positive number fails at construction."""
    with pytest.raises(sftpd.ConfigError, match="stale_uploads_after"):
        S3Backend("b", stale_uploads_after=0)
    with pytest.raises(sftpd.ConfigError, match="cleanup_every"):
        S3Backend("b", cleanup_every=-1)
