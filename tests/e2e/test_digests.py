"""End-to-end: digests computed as uploads stream in, kept with the files, answered from."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import sftpd
from sftpd.backends.s3 import S3Backend
from sftpd.testing import make_session, running_server
from tests.conftest import connect
from tests.raw_sftp import open_raw, packet, string
from tests.s3_servers import client_and_bucket

MiB = 1 << 20


class Stored:
    """A backend under test and a way to read the digests it keeps, as stored."""

    def __init__(self, backend: object, kept: Any) -> None:
        self.backend = backend
        self.kept = kept


class CountingMemory(sftpd.MemoryBackend):
    """A memory backend that counts the bytes read out of it."""

    read_bytes = 0

    async def read_range(
        self, path: str, offset: int, length: int, session: sftpd.Session
    ) -> bytes:
        data = await super().read_range(path, offset, length, session)
        CountingMemory.read_bytes += len(data)
        return data


@pytest.fixture(params=["memory", "local", "seaweedfs", "moto"])
async def stored(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stored]:
    """Each backend, with its own record of kept digests (blob, xattr, object metadata)."""
    if request.param == "memory":
        memory = CountingMemory()

        async def memory_kept(path: str) -> dict[str, str] | None:
            found = await memory.read_digests(path, make_session())
            return dict(found) if found else None

        yield Stored(memory, memory_kept)
    elif request.param == "local":
        root = tmp_path / "root"
        root.mkdir()

        async def local_kept(path: str) -> dict[str, str] | None:
            try:
                value = json.loads(os.getxattr(root / path.lstrip("/"), "user.sftpd.digests"))
            except OSError:
                return None
            return dict(value["digests"])

        yield Stored(sftpd.LocalBackend(root), local_kept)
    else:
        s3 = request.getfixturevalue("moto_s3" if request.param == "moto" else "seaweedfs")
        async with client_and_bucket(s3.endpoint, "digests") as (client, bucket):

            async def s3_kept(path: str) -> dict[str, str] | None:
                head = await client.head_object(Bucket=bucket, Key=path.lstrip("/"))
                meta = head.get("Metadata", {})
                found = {k[6:]: v for k, v in meta.items() if k.startswith("sftpd-")}
                if "md5" in found:  # rclone's key holds the same MD5, in base64
                    assert (
                        meta["md5chksum"] == base64.b64encode(bytes.fromhex(found["md5"])).decode()
                    )
                return found or None

            yield Stored(S3Backend(bucket, client=client, part_size=5 * MiB), s3_kept)


async def check_file(sftp_conn: Any, path: str, algorithm: str) -> bytes:
    """check-file-name of a whole file: the digest the server answers."""
    chan, raw = await open_raw(sftp_conn)
    body = string(b"check-file-name") + string(path.encode()) + string(algorithm.encode())
    chan.write(packet(200, struct.pack(">I", 1), body + struct.pack(">QQI", 0, 0, 0)))
    kind, rest = await raw.packet()
    chan.close()
    assert kind == 201, rest
    name_len = struct.unpack(">I", rest[4:8])[0]
    alg_at = 8 + name_len
    alg_len = struct.unpack(">I", rest[alg_at : alg_at + 4])[0]
    return rest[alg_at + 4 + alg_len :]


async def test_uploads_keep_md5_and_sha256_and_check_file_answers_from_them(
    stored: Stored,
) -> None:
    """A small and a multipart-sized upload keep MD5 and SHA-256 with the file (memory blob,
    local xattr, S3 metadata with rclone's md5chksum); check-file answers them, on memory
    without reading the file."""
    files = {"/small.bin": os.urandom(100_000), "/large.bin": os.urandom(12 * MiB + 5)}
    async with running_server(backend=stored.backend) as server:
        async with connect(server.port) as conn:
            async with conn.start_sftp_client() as sftp:
                for path, data in files.items():
                    async with sftp.open(path, "wb") as f:
                        await f.write(data)
            CountingMemory.read_bytes = 0
            for path, data in files.items():
                assert await stored.kept(path) == {
                    "md5": hashlib.md5(data).hexdigest(),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
                assert await check_file(conn, path, "sha256") == hashlib.sha256(data).digest()
                assert await check_file(conn, path, "md5") == hashlib.md5(data).digest()
            if isinstance(stored.backend, CountingMemory):
                assert CountingMemory.read_bytes == 0  # answered from the kept digests
            assert (
                await check_file(conn, "/large.bin", "sha1")
                == hashlib.sha1(files["/large.bin"]).digest()
            )  # not kept: computed


async def test_changed_files_lose_their_digests_and_answers_stay_right(stored: Stored) -> None:
    """An append, a truncate or an out-of-order upload leaves no digest that could be
    stale; check-file then computes the right answer from the content."""
    first, more = os.urandom(300_000), os.urandom(200_000)
    async with running_server(backend=stored.backend) as server:
        async with connect(server.port) as conn:
            async with conn.start_sftp_client() as sftp:
                async with sftp.open("/grow.bin", "wb") as f:
                    await f.write(first)
                assert await stored.kept("/grow.bin") is not None
                async with sftp.open("/grow.bin", "ab") as f:
                    await f.write(more)
                assert await stored.kept("/grow.bin") is None
                async with sftp.open("/skip.bin", "wb") as f:
                    await f.write(more, 20 * MiB)  # far ahead first
                    await f.write(first, 0)
            grown = first + more
            assert await check_file(conn, "/grow.bin", "md5") == hashlib.md5(grown).digest()
            assert await stored.kept("/skip.bin") is None
            skipped = first + bytes(20 * MiB - len(first)) + more
            assert await check_file(conn, "/skip.bin", "md5") == hashlib.md5(skipped).digest()
            if not isinstance(stored.backend, S3Backend):  # S3 cannot truncate
                async with conn.start_sftp_client() as sftp:
                    async with sftp.open("/cut.bin", "wb") as f:
                        await f.write(first)
                    await sftp.truncate("/cut.bin", 1000)
                assert await stored.kept("/cut.bin") is None
                assert (
                    await check_file(conn, "/cut.bin", "md5") == hashlib.md5(first[:1000]).digest()
                )


async def test_copy_data_carries_digests_and_none_are_kept_when_turned_off(
    stored: Stored,
) -> None:
    """A server-side copy (copy-data of a whole file) carries the source's digests; with
    upload_digests=() nothing is computed or kept."""
    data = os.urandom(400_000)
    async with running_server(backend=stored.backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/src.bin", "wb") as f:
                await f.write(data)
            await sftp.copy("/src.bin", "/dst.bin", remote_only=True)
    assert await stored.kept("/dst.bin") == await stored.kept("/src.bin") is not None
    async with running_server(backend=stored.backend, upload_digests=()) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/plain.bin", "wb") as f:
                await f.write(data)
    assert await stored.kept("/plain.bin") is None


async def test_local_files_changed_behind_sftpds_back_are_hashed_again(tmp_path: Path) -> None:
    """A kept digest describes a size and mtime: a file rewritten directly on disk gets a
    fresh answer, not the stale one."""
    async with running_server(backend=sftpd.LocalBackend(tmp_path)) as server:
        async with connect(server.port) as conn:
            async with conn.start_sftp_client() as sftp:
                async with sftp.open("/f.txt", "wb") as f:
                    await f.write(b"first version")
            (tmp_path / "f.txt").write_bytes(b"changed on disk")
            assert (
                await check_file(conn, "/f.txt", "md5") == hashlib.md5(b"changed on disk").digest()
            )


def test_unknown_digest_names_fail_at_start() -> None:
    """upload_digests with an unknown algorithm is a configuration error naming the choices."""
    with pytest.raises(sftpd.ConfigError, match="choose from md5, sha1"):
        sftpd.ServerConfig(backend=sftpd.MemoryBackend(), auth={"a": "b"}, system_dir="/x",
                           upload_digests=["md5", "crc32"])  # fmt: skip


async def test_openssh_cp_on_s3_moves_no_bytes_and_carries_digests(
    seaweedfs: Any, openssh: Any, tmp_path: Path
) -> None:
    """OpenSSH's `cp` of a 64 MiB file on S3 is copied inside the storage: no byte is read
    or written through sftpd (telemetry), the copy is identical, and it carries the
    source's digests and metadata."""
    from sftpd import telemetry

    moved: list[int] = []
    bus = telemetry.TelemetryBus()
    bus.attach("bytes", [("sftpd", "sftp", "read"), ("sftpd", "sftp", "write")],
               lambda e: moved.append(int(e.measurements.get("bytes", 0))))  # fmt: skip
    data = os.urandom(64 * MiB)
    async with client_and_bucket(seaweedfs.endpoint, "cp") as (client, bucket):
        backend = S3Backend(bucket, client=client, part_size=8 * MiB)
        async with running_server(backend=backend, telemetry=bus) as server:
            async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
                async with sftp.open("/src.bin", "wb") as f:
                    await f.write(data)
            moved.clear()
            result = await openssh.run(server.port, "cp /src.bin /dst.bin\n", cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert sum(moved) == 0
            async with connect(server.port) as conn:
                assert await check_file(conn, "/dst.bin", "sha256") == hashlib.sha256(data).digest()
        heads = [await client.head_object(Bucket=bucket, Key=k) for k in ("src.bin", "dst.bin")]
    assert heads[0]["Metadata"] == heads[1]["Metadata"]
    assert heads[1]["Metadata"]["sftpd-sha256"] == hashlib.sha256(data).hexdigest()
