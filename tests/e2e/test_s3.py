"""End-to-end: the S3 backend behind a real server, against SeaweedFS and moto."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from sftpd.backends import s3 as s3_module
from sftpd.backends.s3 import S3Backend, SessionPrefix
from sftpd.backends.s3 import objects as s3_objects
from sftpd.testing import running_server
from tests.conftest import (
    OpenSSH,
    connect,
    exclusive_race,
    make_file,
    sha256,
    sha256_file,
    start_cli,
    stop_cli,
)
from tests.s3_servers import aws_env

MiB = 1 << 20


async def open_uploads(client: Any, bucket: str) -> list[str]:
    """Keys with multipart uploads still open."""
    page = await client.list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in page.get("Uploads", [])]


async def keys(client: Any, bucket: str) -> list[str]:
    """Every key in the bucket."""
    page = await client.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in page.get("Contents", []))


async def test_streamed_upload_and_download(
    s3_backend: S3Backend, s3_client: Any, bucket: str
) -> None:
    """A 23 MiB upload goes up as parts while the client writes and downloads intact."""
    data = os.urandom(23 * MiB)
    bus = telemetry.TelemetryBus()
    async with running_server(backend=s3_backend, telemetry=bus) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            f = await sftp.open("/big.bin", "wb")
            for start in range(0, len(data), MiB):
                await f.write(data[start : start + MiB], start)
            assert await keys(s3_client, bucket) == []  # nothing visible before close
            assert await open_uploads(s3_client, bucket) == ["big.bin"]
            await f.close()
            assert await keys(s3_client, bucket) == ["big.bin"]
            async with sftp.open("/big.bin", "rb") as f:
                assert sha256(await f.read()) == sha256(data)
            async with sftp.open("/big.bin", "rb") as f:  # random reads
                assert await f.read(100, 17 * MiB + 3) == data[17 * MiB + 3 : 17 * MiB + 103]
                assert await f.read(100, len(data) - 10) == data[-10:]
    assert await open_uploads(s3_client, bucket) == []


async def test_file_replaced_during_download_fails_instead_of_mixing(
    s3_backend: S3Backend, s3_client: Any, bucket: str
) -> None:
    """A download pins the version it opened: a replaced object fails the next read."""
    old, new = os.urandom(8 * MiB), os.urandom(8 * MiB)
    await s3_client.put_object(Bucket=bucket, Key="f.bin", Body=old)
    async with running_server(backend=s3_backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/f.bin", "rb") as f:
                assert await f.read(100, 0) == old[:100]  # fetches chunks 0-3 ahead
                await s3_client.put_object(Bucket=bucket, Key="f.bin", Body=new)
                assert await f.read(100, MiB) == old[MiB : MiB + 100]  # already fetched
                with pytest.raises(asyncssh.SFTPFailure, match="changed while it was being read"):
                    await f.read(100, 6 * MiB)
            async with sftp.open("/f.bin", "rb") as f:  # a new open reads the new version
                assert await f.read(100, 6 * MiB) == new[6 * MiB : 6 * MiB + 100]


async def test_small_file_is_one_put_and_listing_has_sizes(
    s3_backend: S3Backend, s3_client: Any, bucket: str
) -> None:
    """A small upload is one PutObject; listings carry sizes without extra requests."""
    async with running_server(backend=s3_backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.mkdir("/docs")
            async with sftp.open("/docs/a.txt", "wb") as f:
                await f.write(b"hello")
            names = {n.filename: n.attrs for n in await sftp.readdir("/docs")}
            assert names["a.txt"].size == 5
            assert ".keep" not in names
            await sftp.rename("/docs", "/papers")
            assert await sftp.listdir("/papers") == [".", "..", "a.txt"]
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.stat("/docs")
            with pytest.raises(asyncssh.SFTPFailure):
                await sftp.rmdir("/papers")  # not empty
            await sftp.remove("/papers/a.txt")
            await sftp.rmdir("/papers")
            assert await sftp.listdir("/") == [".", ".."]
    assert await keys(s3_client, bucket) == []


async def test_abandoned_upload_leaves_no_object_and_no_multipart(
    s3_backend: S3Backend, s3_client: Any, bucket: str
) -> None:
    """A client that disconnects mid-upload leaves no object and no open multipart upload."""
    async with running_server(backend=s3_backend) as server:
        async with connect(server.port) as conn:
            sftp = await conn.start_sftp_client()
            f = await sftp.open("/gone.bin", "wb")
            await f.write(os.urandom(12 * MiB))
            assert await open_uploads(s3_client, bucket) == ["gone.bin"]
        for _ in range(100):
            if not await open_uploads(s3_client, bucket):
                break
            await asyncio.sleep(0.05)
    assert await open_uploads(s3_client, bucket) == []
    assert await keys(s3_client, bucket) == []


class FailingComplete:
    """Wraps a client so that CompleteMultipartUpload fails."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def complete_multipart_upload(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}},
                          "CompleteMultipartUpload")  # fmt: skip


async def test_failed_complete_fails_the_close(s3_client: Any, bucket: str) -> None:
    """A failed CompleteMultipartUpload is reported on close; nothing is left behind."""
    backend = S3Backend(bucket, client=FailingComplete(s3_client), part_size=5 * MiB)
    async with running_server(backend=backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            f = await sftp.open("/x.bin", "wb")
            await f.write(os.urandom(11 * MiB))
            with pytest.raises(asyncssh.SFTPFailure, match="Storage error"):
                await f.close()
    assert await keys(s3_client, bucket) == []
    assert await open_uploads(s3_client, bucket) == []


async def test_resume_copies_instead_of_resending(
    s3_backend: S3Backend, s3_client: Any, bucket: str, openssh: OpenSSH, tmp_path: Path
) -> None:
    """reput of a half-uploaded file sends only the missing tail (UploadPartCopy for the rest)."""
    src = make_file(tmp_path / "half.bin", 14 * MiB, seed=9)
    data = src.read_bytes()
    await s3_client.put_object(Bucket=bucket, Key="half.bin", Body=data[: 7 * MiB])
    bus = telemetry.TelemetryBus()
    written: list[int] = []
    bus.attach(
        "w", ("sftpd", "sftp", "write"), lambda e: written.append(int(e.measurements["bytes"]))
    )
    async with running_server(backend=s3_backend, telemetry=bus) as server:
        result = await openssh.run(server.port, "reput half.bin half.bin\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sum(written) == 7 * MiB  # only the tail crossed the wire
    stored = await s3_client.get_object(Bucket=bucket, Key="half.bin")
    async with stored["Body"] as body:
        assert sha256(await body.read()) == sha256(data)
    assert await open_uploads(s3_client, bucket) == []


async def test_small_resume_and_append_recompose(
    s3_backend: S3Backend, s3_client: Any, bucket: str
) -> None:
    """Appending to an object smaller than a part recomposes it in memory."""
    await s3_client.put_object(Bucket=bucket, Key="log.txt", Body=b"one\n")
    async with running_server(backend=s3_backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/log.txt", "ab") as f:
                await f.write(b"two\n")
            async with sftp.open("/log.txt", "rb") as f:
                assert await f.read() == b"one\ntwo\n"


async def test_resume_and_rename_of_objects_over_one_copy_part(
    s3_backend: S3Backend, s3_client: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects larger than one copy part are copied in equal parts, none under 5 MiB.

    S3's 5 GiB copy-part limit is scaled down to 12 MiB so that a 13 MiB object needs two
    copy parts. Split as 12 MiB + 1 MiB, the appended upload would fail to complete with
    EntityTooSmall on moto (and on AWS), because a 1 MiB part would be followed by others.
    """
    monkeypatch.setattr(s3_objects, "MAX_COPY_PART", 12 * MiB)
    stored, tail = os.urandom(13 * MiB), os.urandom(6 * MiB)
    await s3_client.put_object(Bucket=bucket, Key="big.bin", Body=stored)
    async with running_server(backend=s3_backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/big.bin", "ab") as f:
                await f.write(tail)
            await sftp.rename("/big.bin", "/moved.bin")
    assert await keys(s3_client, bucket) == ["moved.bin"]
    parts = await s3_client.head_object(Bucket=bucket, Key="moved.bin", PartNumber=1)
    assert parts["PartsCount"] == 2  # the rename copied 19 MiB as two parts
    result = await s3_client.get_object(Bucket=bucket, Key="moved.bin")
    async with result["Body"] as body:
        assert sha256(await body.read()) == sha256(stored + tail)
    assert await open_uploads(s3_client, bucket) == []


OBJECT_ARGS = {
    "ServerSideEncryption": "AES256",
    "StorageClass": "STANDARD_IA",
    "Metadata": {"source": "sftp"},
    "Tagging": "team=ops",
}


def own_metadata(head: dict[str, Any]) -> dict[str, str]:
    """An object's metadata less the digests sftpd keeps there (tests/e2e/test_digests)."""
    return {k: v for k, v in (head.get("Metadata") or {}).items()
            if not k.startswith("sftpd-") and k != "md5chksum"}  # fmt: skip


async def stored_as(client: Any, bucket: str, key: str) -> dict[str, Any]:
    """How an object is stored: encryption, storage class, metadata, tags, content type."""
    head = await client.head_object(Bucket=bucket, Key=key)
    tags = await client.get_object_tagging(Bucket=bucket, Key=key)
    return {
        "ServerSideEncryption": head.get("ServerSideEncryption"),
        "StorageClass": head.get("StorageClass"),
        "Metadata": own_metadata(head),
        "Tagging": "&".join(f"{t['Key']}={t['Value']}" for t in tags["TagSet"]),
        "ContentType": head.get("ContentType"),
    }


@pytest.fixture
async def aws_bucket(moto_s3: Any) -> AsyncIterator[tuple[Any, str]]:
    """A client of moto (which stores object settings as AWS does) and a new bucket."""
    from tests.s3_servers import client_and_bucket

    async with client_and_bucket(moto_s3.endpoint, "sftpd") as pair:
        yield pair


async def test_object_args_reach_every_object_written(
    aws_bucket: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """object_args are on every object: put, multipart, resume, marker, copy, multipart copy.

    The copy-part limit is scaled to 6 MiB so that renaming 12 MiB copies it in parts.
    """
    monkeypatch.setattr(s3_objects, "MAX_COPY_PART", 6 * MiB)
    client, bucket = aws_bucket
    backend = S3Backend(
        bucket, client=client, part_size=5 * MiB, read_chunk=MiB, object_args=OBJECT_ARGS
    )
    async with running_server(backend=backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/small.csv", "wb") as f:  # one PutObject
                await f.write(b"a,b\n")
            async with sftp.open("/data.xml", "wb") as f:  # multipart
                await f.write(os.urandom(6 * MiB))
            async with sftp.open("/big.json", "wb") as f:
                await f.write(os.urandom(11 * MiB))
            async with sftp.open("/big.json", "ab") as f:  # resume: part copies + parts
                await f.write(os.urandom(MiB))
            await sftp.mkdir("/dir")  # a .keep marker
            await sftp.rename("/small.csv", "/dir/renamed.csv")  # CopyObject
            await sftp.rename("/big.json", "/dir/moved.json")  # multipart copy
    assert await keys(client, bucket) == [
        "data.xml", "dir/.keep", "dir/moved.json", "dir/renamed.csv"
    ]  # fmt: skip
    for key, kind in (("data.xml", "text/xml"), ("dir/renamed.csv", "text/csv"),
                      ("dir/moved.json", "application/json")):  # fmt: skip
        assert await stored_as(client, bucket, key) == {**OBJECT_ARGS, "ContentType": kind}
    marker = await stored_as(client, bucket, "dir/.keep")
    assert {k: marker[k] for k in OBJECT_ARGS} == OBJECT_ARGS
    head = await client.head_object(Bucket=bucket, Key="dir/moved.json", PartNumber=1)
    assert head["PartsCount"] == 2  # it was a multipart copy


async def test_content_type_follows_the_name(
    s3_backend: S3Backend, s3_client: Any, bucket: str
) -> None:
    """Uploads get the content type of their name, and a rename to another type updates it.

    Clients such as WinSCP upload to ``name.filepart`` and rename at the end; the object
    must then say ``application/json``, not ``binary/octet-stream``, and keep its
    metadata. A rename within a type keeps what is stored.
    """
    await s3_client.put_object(Bucket=bucket, Key="tagged.bin", Body=b"{}",
                               Metadata={"origin": "partner"}, ContentLanguage="en")  # fmt: skip
    async with running_server(backend=s3_backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/report.csv", "wb") as f:
                await f.write(b"a,b\n")
            async with sftp.open("/data.json.filepart", "wb") as f:
                await f.write(b"{}")
            await sftp.rename("/data.json.filepart", "/data.json")
            await sftp.rename("/report.csv", "/copy.csv")
            await sftp.rename("/tagged.bin", "/tagged.json")
    heads = {key: await s3_client.head_object(Bucket=bucket, Key=key)
             for key in ("copy.csv", "data.json", "tagged.json")}  # fmt: skip
    assert heads["copy.csv"]["ContentType"] == "text/csv"
    assert heads["data.json"]["ContentType"] == "application/json"
    assert heads["tagged.json"]["ContentType"] == "application/json"
    assert own_metadata(heads["tagged.json"]) == {"origin": "partner"}
    assert heads["tagged.json"]["ContentLanguage"] == "en"


async def test_content_types_off_leaves_s3_default(aws_bucket: tuple[Any, str]) -> None:
    """With content_types=False, objects get S3's default type whatever their name.

    (SeaweedFS picks a type from the name itself when none is sent.)
    """
    s3_client, bucket = aws_bucket
    backend = S3Backend(bucket, client=s3_client, content_types=False)
    async with running_server(backend=backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/report.csv", "wb") as f:
                await f.write(b"a,b\n")
    head = await s3_client.head_object(Bucket=bucket, Key="report.csv")
    assert head["ContentType"] == "binary/octet-stream"


@pytest.mark.parametrize("size", [5 * MiB, 5 << 30, (5 << 30) + 1, (10 << 30) + 5, 5 << 40])
def test_copy_ranges_cover_the_object_within_s3_limits(size: int) -> None:
    """Copy ranges at S3's real limits are contiguous, at most 5 GiB, at least 5 MiB, few."""
    ranges = s3_objects.copy_ranges(size)
    assert ranges[0][0] == 0
    assert ranges[-1][1] == size - 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    assert all(5 * MiB <= end - start + 1 <= 5 << 30 for start, end in ranges)
    assert len(ranges) == -(-size // (5 << 30))


async def test_tenants_isolated_by_session_prefix(s3_client: Any, bucket: str) -> None:
    """With prefix=SessionPrefix(...), each tenant's keys live under its own prefix."""

    class Auth:
        def authenticate_password(self, username: str, password: str, peer: Any) -> Any:
            return {"sftp_prefix": f"tenants/{username}/"} if password == "pw" else None

    backend = S3Backend(bucket, client=s3_client, prefix=SessionPrefix("sftp_prefix"))
    async with running_server(backend=backend, auth=Auth()) as server:
        async with connect(server.port, "acme", "pw") as conn, conn.start_sftp_client() as a:
            async with a.open("/invoice.pdf", "wb") as f:
                await f.write(b"acme")
            with pytest.raises(asyncssh.SFTPNoSuchFile):  # acme has no /globex directory
                await a.open("/../../globex/evil.txt", "wb")
            async with a.open("/../../evil.txt", "wb") as f:
                await f.write(b"x")
        async with connect(server.port, "globex", "pw") as conn, conn.start_sftp_client() as g:
            assert await g.listdir("/") == [".", ".."]
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await g.stat("/../acme/invoice.pdf")
    assert await keys(s3_client, bucket) == ["tenants/acme/evil.txt", "tenants/acme/invoice.pdf"]


async def test_missing_session_prefix_is_refused(s3_client: Any, bucket: str) -> None:
    """A session without the prefix attribute gets permission denied, not the bucket root."""
    backend = S3Backend(bucket, client=s3_client, prefix=SessionPrefix("sftp_prefix"))
    async with running_server(backend=backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.listdir("/")


async def test_listing_streams_pages(s3_backend: S3Backend, s3_client: Any, bucket: str) -> None:
    """A 2100-key prefix lists completely, and the first entry comes before the last page."""
    await asyncio.gather(*(
        s3_client.put_object(Bucket=bucket, Key=f"many/{i:05d}", Body=b"")
        for i in range(2100)
    ))  # fmt: skip
    calls = 0
    original = s3_client.list_objects_v2

    async def counting(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(**kwargs)

    s3_client.list_objects_v2 = counting
    try:
        session = sftpd.testing.make_session()
        seen = 0
        first_at = None
        async for _entry in s3_backend.list_dir("/many", session):
            seen += 1
            if first_at is None:
                first_at = calls
        assert seen == 2100
        assert first_at == 1
        assert calls >= 3
    finally:
        s3_client.list_objects_v2 = original


async def test_own_client_follows_the_server_to_a_new_event_loop(
    seaweedfs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend whose server is started again under another asyncio.run makes a new client."""
    from tests.s3_servers import ACCESS_KEY, SECRET_KEY, client_for

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    async with client_for(seaweedfs.endpoint) as admin:
        await admin.create_bucket(Bucket="two-loops")
    backend = S3Backend("two-loops", endpoint_url=seaweedfs.endpoint, region_name="us-east-1")

    async def round_trip(name: str) -> list[str]:
        async with running_server(backend=backend) as server:
            async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
                async with sftp.open(f"/{name}", "wb") as f:
                    await f.write(name.encode())
                return sorted(await sftp.listdir("/"))

    assert "first.txt" in await round_trip("first.txt")
    second = await asyncio.to_thread(asyncio.run, round_trip("second.txt"))
    assert {"first.txt", "second.txt"} <= set(second)
    await backend.aclose()


async def test_storage_refusal_answers_permission_denied(seaweedfs: Any) -> None:
    """A 403 from storage is "permission denied" for the client, never a raw message.

    (SeaweedFS only: moto accepts any credentials.) The credentials may read, not write.
    """
    from tests.s3_servers import READ_ONLY_KEY, READ_ONLY_SECRET, client_for

    async with client_for(seaweedfs.endpoint) as admin:
        await admin.create_bucket(Bucket="read-only")
        await admin.put_object(Bucket="read-only", Key="seen.txt", Body=b"hello")
    backend = S3Backend("read-only", endpoint_url=seaweedfs.endpoint, region_name="us-east-1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", READ_ONLY_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", READ_ONLY_SECRET)
        try:
            async with running_server(backend=backend) as server:
                async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
                    assert "seen.txt" in await sftp.listdir("/")
                    with pytest.raises(asyncssh.SFTPPermissionDenied) as denied:
                        async with sftp.open("/new.txt", "wb") as f:
                            await f.write(b"refused")
        finally:
            await backend.aclose()
    assert "AccessDenied" not in str(denied.value)
    assert "botocore" not in str(denied.value)


async def test_startup_says_what_to_fix(seaweedfs: Any, tmp_path: Path) -> None:
    """Wrong credentials, a missing bucket or no S3 at the endpoint stop the server start.

    Each with a message naming the fix, before any client can connect.
    """
    from tests.s3_servers import ACCESS_KEY, SECRET_KEY, free_port

    weed = seaweedfs.endpoint
    cases = [
        (weed, "no-such-bucket", ACCESS_KEY, r"bucket 'no-such-bucket' does not exist"),
        (weed, "no-such-bucket", "wrong", r"denied .*check the credentials"),
        (f"http://127.0.0.1:{free_port()}", "any", ACCESS_KEY, r"cannot reach http://127"),
        (weed, "any", None, r"no S3 credentials found: set AWS_ACCESS_KEY_ID"),
    ]
    for endpoint, name, key, message in cases:
        backend = S3Backend(name, endpoint_url=endpoint, region_name="us-east-1", max_attempts=1)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
            mp.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
            if key is None:
                mp.delenv("AWS_ACCESS_KEY_ID", raising=False)
                mp.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
            else:
                mp.setenv("AWS_ACCESS_KEY_ID", key)
                mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            try:
                with pytest.raises(sftpd.ConfigError, match=message):
                    async with running_server(backend=backend):
                        pytest.fail("the server started")
            finally:
                await backend.aclose()


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without aiobotocore, constructing the backend fails with the extra to install."""
    monkeypatch.setitem(sys.modules, "aiobotocore", None)
    monkeypatch.setitem(sys.modules, "aiobotocore.session", None)
    with pytest.raises(sftpd.ConfigError, match=r"pysftpd\[s3\]"):
        S3Backend("bucket")


def test_bad_options_fail_at_construction() -> None:
    """Part sizes under 5 MiB and a missing bucket are configuration errors."""
    with pytest.raises(sftpd.ConfigError, match="at least 5 MiB"):
        S3Backend("b", part_size=1 << 20)
    with pytest.raises(sftpd.ConfigError, match="bucket"):
        S3Backend("")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"SSECustomerKey": "k"}, "unknown key 'SSECustomerKey'; allowed: ACL, BucketKeyEnabled"),
        ({"ContentType": "text/plain"}, "unknown key 'ContentType'"),
        ({"BucketKeyEnabled": "yes"}, "BucketKeyEnabled must be true or false"),
        ({"Metadata": {"n": 1}}, "Metadata must map names to strings"),
        ({"StorageClass": ""}, "StorageClass must be a non-empty string"),
    ],
)
def test_bad_object_args_fail_at_construction(args: dict[str, Any], message: str) -> None:
    """object_args with an unknown key or a mistyped value fail naming the key."""
    with pytest.raises(sftpd.ConfigError, match=re.escape(message)):
        S3Backend("b", object_args=args)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("in/report.csv", "text/csv"), ("a.PDF", "application/pdf"), ("x.tar.gz", "application/gzip"),
     ("t.txt.bz2", "application/x-bzip2"), ("upload.filepart", None), ("dir/.keep", None),
     ("README", None)],
)  # fmt: skip
def test_content_type_from_name(name: str, kind: str | None) -> None:
    """Types come from the last name's extension; a compressed file is its compression."""
    assert s3_module.content_type(name) == kind


async def test_cli_s3_backend(s3_server: Any, bucket: str, s3_client: Any, tmp_path: Path) -> None:
    """`sftpd serve --backend s3://BUCKET/PREFIX` uses the standard AWS environment."""
    proc, port, _ = await start_cli(
        "--backend", f"s3://{bucket}/inbox", cwd=tmp_path, env=aws_env(s3_server.endpoint)
    )
    async with connect(port) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/a.txt", "wb") as f:
            await f.write(b"via cli")
    assert await stop_cli(proc) == 0
    assert await keys(s3_client, bucket) == ["inbox/a.txt"]


async def test_cli_s3_settings_from_config_file_and_flags(
    moto_s3: Any, aws_bucket: tuple[Any, str], tmp_path: Path
) -> None:
    """The config file's [s3] section and --s3-object-arg set how objects are stored.

    Flags win over the file, metadata name by name.
    """
    client, bucket = aws_bucket
    (tmp_path / "sftpd.toml").write_text(
        f'[server]\nbackend = "s3://{bucket}/inbox"\n\n'
        "[s3]\npart_size = 5242880\ncontent_types = true\n"
        'object_args = { StorageClass = "GLACIER", Metadata = { team = "ops", by = "file" } }\n'
    )
    proc, port, _ = await start_cli(
        "--config", "sftpd.toml", "--s3-object-arg", "StorageClass=STANDARD_IA",
        "--s3-object-arg", "Metadata.by=flag", "--s3-object-arg", "ServerSideEncryption=AES256",
        cwd=tmp_path, env=aws_env(moto_s3.endpoint),
    )  # fmt: skip
    async with connect(port) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/a.csv", "wb") as f:
            await f.write(b"via cli")
    assert await stop_cli(proc) == 0
    head = await client.head_object(Bucket=bucket, Key="inbox/a.csv")
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["ServerSideEncryption"] == "AES256"
    assert own_metadata(head) == {"team": "ops", "by": "flag"}
    assert head["ContentType"] == "text/csv"


@pytest.mark.slow
async def test_openssh_1gib_round_trip(seaweedfs: Any, openssh: OpenSSH, tmp_path: Path) -> None:
    """1 GiB up and down through OpenSSH sftp on SeaweedFS, byte for byte."""
    from tests.s3_servers import client_for

    src = make_file(tmp_path / "gig.bin", 1 << 30, seed=21)
    async with client_for(seaweedfs.endpoint) as client:
        await client.create_bucket(Bucket="gigabyte")
        backend = S3Backend("gigabyte", client=client)
        async with running_server(backend=backend) as server:
            result = await openssh.run(
                server.port, "put gig.bin gig.bin\nget gig.bin back.bin\n", cwd=tmp_path,
                timeout=600,
            )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert sha256_file(tmp_path / "back.bin") == sha256_file(src)
        assert await open_uploads(client, "gigabyte") == []


async def write_then_close(f: Any, first_mib: int, last_mib: int) -> None:
    """Write 1 MiB blocks from ``first_mib`` to ``last_mib``, then close."""
    for i in range(first_mib, last_mib):
        await f.write(os.urandom(MiB), i * MiB)
    await f.close()


async def test_storage_outage_mid_upload(seaweedfs: Any, tmp_path: Path) -> None:
    """Stopping S3 mid-upload fails that upload; the server lives on; nothing partial remains."""
    from botocore.config import Config

    from tests.s3_servers import client_for

    config = Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5)
    async with client_for(seaweedfs.endpoint, config=config) as client:
        await client.create_bucket(Bucket="outage")
        backend = S3Backend("outage", client=client, part_size=5 * MiB)
        async with running_server(backend=backend, close_timeout=20) as server:
            async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
                f = await sftp.open("/during.bin", "wb")
                await f.write(os.urandom(6 * MiB))
                seaweedfs.stop()
                try:
                    with pytest.raises(asyncssh.SFTPError):
                        await write_then_close(f, 6, 20)
                finally:
                    seaweedfs.start_again()
                # The server and this session still work once storage is back.
                async with sftp.open("/after.txt", "wb") as g:
                    await g.write(b"fine")
                assert "after.txt" in await sftp.listdir("/")
        assert await keys(client, "outage") == ["after.txt"]
        for _ in range(40):
            if not await open_uploads(client, "outage"):
                break
            await asyncio.sleep(0.25)
        assert await open_uploads(client, "outage") == []


async def test_exclusive_create_has_one_winner(s3_backend: S3Backend) -> None:
    """Two exclusive creates of one key: S3 refuses the second commit (If-None-Match)."""
    async with running_server(backend=s3_backend) as server:
        assert await exclusive_race(server.port) == (b"first", "File already exists")


def test_check_reaches_the_bucket(seaweedfs: Any, tmp_path: Path) -> None:
    """`sftpd serve --check` talks to S3: a missing bucket fails with what to fix."""
    from click.testing import CliRunner

    from sftpd.cli import main

    args = ["serve", "--check", "--host-key-dir", str(tmp_path), "--generate-host-key"]
    env = aws_env(seaweedfs.endpoint)
    missing = CliRunner().invoke(main, [*args, "--backend", "s3://no-such-bucket"], env=env)
    assert missing.exit_code == 2
    assert "bucket 'no-such-bucket' does not exist" in " ".join(missing.output.split())


async def test_copy_data_copies_inside_the_storage(
    s3_backend: S3Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncssh's copy (copy-data of a whole object) is one CopyObject: no GET of the source
    reaches the storage; a copy of part of an object goes through ranged GETs and writes;
    both are exact."""
    data = os.urandom(6 * MiB + 3)
    gets: list[int] = []
    get_chunk = s3_backend.store.get_chunk

    async def counted(*args: Any, **kwargs: Any) -> Any:
        gets.append(1)
        return await get_chunk(*args, **kwargs)

    monkeypatch.setattr(s3_backend.store, "get_chunk", counted)
    async with running_server(backend=s3_backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/src.bin", "wb") as f:
                await f.write(data)
            await sftp.copy("/src.bin", "/copy.bin")
            assert gets == []
            async with sftp.open("/src.bin", "rb") as src, sftp.open("/part.bin", "wb") as dst:
                await sftp.remote_copy(src, dst, 1000, 3 * MiB, 0)
            assert gets, "a partial copy reads the range it copies"
            async with sftp.open("/copy.bin", "rb") as f:
                assert await f.read() == data
            async with sftp.open("/part.bin", "rb") as f:
                assert await f.read() == data[1000 : 1000 + 3 * MiB]
