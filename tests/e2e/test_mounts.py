"""End-to-end: one login over several backends (S3 on SeaweedFS, a local folder, memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd.auth import StaticPasswords
from sftpd.backends.mounts import Mount, MountBackend
from sftpd.backends.s3 import S3Backend
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect
from tests.s3_servers import client_and_bucket


async def test_openssh_over_three_mounts(seaweedfs: Any, openssh: OpenSSH, tmp_path: Path) -> None:
    """OpenSSH ls, put, get, rename and df over /inbox (S3, per-user prefix), /archive
    (local, read-only) and /scratch (memory); writes to the archive or the virtual /,
    and renames across mounts, are refused with the reason, and nothing is stored."""
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "report.txt").write_text("quarterly\n")
    (tmp_path / "up.txt").write_text("uploaded\n")
    async with client_and_bucket(seaweedfs.endpoint, "mounts") as (s3, bucket):
        namespace = MountBackend([
            Mount("/inbox", S3Backend(bucket, client=s3), prefix="/users/{username}"),
            Mount("/archive", sftpd.LocalBackend(archive), read_only=True),
            Mount("/scratch", sftpd.MemoryBackend()),
        ])  # fmt: skip
        async with running_server(backend=namespace, auth={"ann": "pw"}) as server:
            result = await openssh.run(
                server.port,
                "ls /\nput up.txt /inbox/up.txt\nls /inbox\nget /archive/report.txt got.txt\n"
                "rename /inbox/up.txt /inbox/renamed.txt\nput up.txt /scratch/s.txt\n"
                "-put up.txt /archive/nope.txt\n-put up.txt /nope.txt\n"
                "-rename /inbox/renamed.txt /scratch/moved.txt\n-mkdir /archive/d\n"
                "df /archive\nls -l /inbox /scratch\n",
                user="ann", password="pw", cwd=tmp_path,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert result.stdout.split("sftp> ls /\n", 1)[1].split()[:3] == [
                "/archive", "/inbox", "/scratch",
            ]  # fmt: skip
            assert (tmp_path / "got.txt").read_text() == "quarterly\n"
            assert "renamed.txt" in result.stdout
            assert "s.txt" in result.stdout
            assert "Size" in result.stdout  # df answered for the local mount
            async with connect(server.port, "ann", "pw") as conn, conn.start_sftp_client() as c:
                with pytest.raises(asyncssh.SFTPPermissionDenied, match="/archive is read-only"):
                    await c.open("/archive/x.txt", "wb")
                with pytest.raises(asyncssh.SFTPPermissionDenied, match="Nothing can be stored"):
                    await c.open("/x.txt", "wb")
                with pytest.raises(asyncssh.SFTPOpUnsupported, match="Cannot move between mounts"):
                    await c.rename("/inbox/renamed.txt", "/scratch/moved.txt")
                with pytest.raises(asyncssh.SFTPPermissionDenied, match="is a mount point"):
                    await c.rmdir("/scratch")
                with pytest.raises(asyncssh.SFTPOpUnsupported):
                    await c.statvfs("/inbox")  # S3 tells no capacity: that mount's answer
                assert (await c.statvfs("/archive")).bsize > 0
        listed = await s3.list_objects_v2(Bucket=bucket)
        keys = sorted(o["Key"] for o in listed.get("Contents", []))
        # The user's folder was made at the first upload (with S3's directory markers).
        assert [k for k in keys if not k.endswith("/.keep")] == ["users/ann/renamed.txt"]
    assert sorted(p.name for p in archive.iterdir()) == ["report.txt"]


async def test_sessions_own_mounts_and_placeholders() -> None:
    """A session's ``mounts`` attribute replaces the default ones, naming the namespace's
    backends; placeholders take session values; a value that could climb out of the
    prefix ("..", "/") refuses access instead."""
    shared = sftpd.MemoryBackend()
    namespace = MountBackend([Mount("/pub", sftpd.MemoryBackend({"/hello": b"hi"}))],
                             backends={"shared": shared})  # fmt: skip
    attrs: dict[str, dict[str, Any]] = {
        "ann": {"tenant": "acme", "mounts": [
            {"path": "/team", "backend": "shared", "prefix": "/{tenant}"},
            {"path": "/team/readonly", "backend": "shared", "prefix": "/{tenant}-ro",
             "read_only": True},
        ]},
        "eve": {"tenant": "..", "mounts": [
            {"path": "/team", "backend": "shared", "prefix": "/{tenant}"},
        ]},
    }  # fmt: skip
    auth = StaticPasswords({"ann": "a", "eve": "e", "bob": "b"}, attrs)
    async with running_server(backend=namespace, auth=auth) as server:
        async with connect(server.port, "ann", "a") as conn, conn.start_sftp_client() as ann:
            assert await ann.listdir("/") == [".", "..", "team"]
            assert await ann.listdir("/team") == [".", "..", "readonly"]
            async with ann.open("/team/plan.txt", "wb") as f:
                await f.write(b"plan")
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="read-only"):
                await ann.open("/team/readonly/x", "wb")
        async with connect(server.port, "bob", "b") as conn, conn.start_sftp_client() as bob:
            assert await bob.listdir("/") == [".", "..", "pub"]  # the default mounts
            async with bob.open("/pub/hello", "rb") as f:
                assert await f.read() == b"hi"
        async with connect(server.port, "eve", "e") as conn, conn.start_sftp_client() as eve:
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="misconfigured"):
                await eve.open("/team/x", "wb")
    session = sftpd.Session(username="t", peer=sftpd.Peer("x", 0))
    assert await shared.read_file("/acme/plan.txt", session) == b"plan"
    assert [e.name async for e in shared.list_dir("/", session)] == ["acme"]


def test_mount_misconfigurations_fail_at_construction() -> None:
    """Two mounts at one path, an unknown backend name and a bad placeholder are
    ConfigErrors that say what to fix."""
    memory = sftpd.MemoryBackend()
    cases = [
        ([Mount("/a", memory), Mount("/a", memory)], "two mounts at /a"),
        ([Mount("/a", "nope")], "unknown backend 'nope'"),
    ]
    for mounts, message in cases:
        with pytest.raises(sftpd.ConfigError, match=message):
            MountBackend(mounts)
    with pytest.raises(sftpd.ConfigError, match="placeholders must be names"):
        Mount("/a", memory, prefix="/{0}")


async def test_serve_builds_the_namespace_from_the_config_file(tmp_path: Path) -> None:
    """`sftpd serve --config` with [backends] and [[mounts]] serves the folders, a user's
    own mounts naming [backends]; [server] backend beside [[mounts]] is refused."""
    from tests.conftest import cli, stop_cli

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "readme.txt").write_text("read me\n")
    config = tmp_path / "sftpd.toml"
    config.write_text(
        f'[backends]\nfiles = "local:{tmp_path / "files"}"\nscratch = "memory"\n'
        '[[mounts]]\npath = "/files"\nbackend = "files"\nread_only = true\n'
        '[[mounts]]\npath = "/tmp"\nbackend = "memory"\n'
        '[users.dev]\npassword = "dev"\n'
        '[users.own]\npassword = "own"\n'
        'mounts = [{ path = "/mine", backend = "scratch", prefix = "/{username}" }]\n'
    )
    async with cli("--config", str(config), cwd=tmp_path) as (proc, port, _):
        async with connect(port) as conn, conn.start_sftp_client() as sftp:
            assert await sftp.listdir("/") == [".", "..", "files", "tmp"]
            async with sftp.open("/files/readme.txt", "rb") as f:
                assert await f.read() == b"read me\n"
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.remove("/files/readme.txt")
        async with connect(port, "own", "own") as conn, conn.start_sftp_client() as sftp:
            assert await sftp.listdir("/") == [".", "..", "mine"]
        assert await stop_cli(proc) == 0
    config.write_text('[server]\nbackend = "memory"\n[[mounts]]\npath = "/a"\nbackend = "memory"\n')
    from click.testing import CliRunner

    from sftpd.cli import main

    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "either [server] backend or [[mounts]]" in " ".join(result.output.split())
