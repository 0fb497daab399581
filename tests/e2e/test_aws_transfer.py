"""AWS Transfer Family identity responses become sftpd mounts and permissions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd.backends.mounts import MountBackend
from sftpd.backends.s3 import S3Backend
from sftpd.integrations.aws_transfer import TransferIdentity, session_attributes
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect
from tests.s3_servers import client_and_bucket

READ_ARCHIVE_WRITE_HOME = json.dumps({
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "arn:aws:s3:::uploads"},
        {"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
         "Resource": "arn:aws:s3:::uploads/home/${transfer:UserName}/*"},
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::archive/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::archive"},
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*",
         "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}},
    ],
})  # fmt: skip


def logical(details: list[dict[str, str]], **more: Any) -> dict[str, Any]:
    """A LOGICAL response, with HomeDirectoryDetails as the JSON string AWS uses."""
    return {"Role": "arn:aws:iam::123456789012:role/sftp", "HomeDirectoryType": "LOGICAL",
            "HomeDirectoryDetails": json.dumps(details), **more}  # fmt: skip


def test_logical_directories_and_policy_map_to_mounts_and_rules() -> None:
    """Entries become mounts (bucket, prefix with ${transfer:UserName} filled in); the
    session policy becomes per-entry operations; a statement sftpd cannot map is dropped."""
    response = logical(
        [{"Entry": "/", "Target": "/uploads/home/${transfer:UserName}"},
         {"Entry": "/archive", "Target": "/archive/2026"}],
        Policy=READ_ARCHIVE_WRITE_HOME,
    )  # fmt: skip
    attributes = session_attributes(response, "ann")
    assert attributes["mounts"] == [
        {"path": "/", "backend": "uploads", "prefix": "/home/ann"},
        {"path": "/archive", "backend": "archive", "prefix": "/2026"},
    ]
    rules = attributes["permissions"]
    assert rules["/archive"] == ["download", "list"]
    assert rules["/"] == ["delete", "download", "list", "mkdir", "overwrite", "rename",
                          "rmdir", "setstat", "upload"]  # fmt: skip


def test_path_home_and_malformed_responses() -> None:
    """PATH mounts the home's bucket at /<bucket> and starts there; no policy means no
    rules; malformed
    responses raise ConfigError (the login is refused)."""
    path = session_attributes({"HomeDirectory": "/uploads/home/bob"}, "bob")
    assert path == {"mounts": [{"path": "/uploads", "backend": "uploads", "prefix": "/"}],
                    "home": "/uploads/home/bob"}  # fmt: skip
    for bad, message in (
        ({"HomeDirectoryType": "LOGICAL"}, "needs HomeDirectoryDetails"),
        (logical([{"Entry": "/"}]), "needs Entry and Target"),
        ({"HomeDirectoryType": "LOGICAL", "HomeDirectoryDetails": "[oops"}, "not JSON"),
        ({"HomeDirectoryType": "EFS"}, "is not LOGICAL or PATH"),
    ):
        with pytest.raises(sftpd.ConfigError, match=message):
            session_attributes(bad, "x")


async def test_a_transfer_lambda_keeps_working_behind_sftpd(
    seaweedfs: Any, openssh: OpenSSH, tmp_path: Path
) -> None:
    """The identity function a Transfer server called decides sftpd's logins: its home
    mapping is where OpenSSH's upload lands in S3, its policy makes the archive
    read-only, a wrong password is refused, and its PublicKeys admit a key."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    events: list[Mapping[str, Any]] = []

    def handler(event: Mapping[str, Any], context: object) -> dict[str, Any]:
        events.append(event)
        if event["username"] != "ann" or event["password"] not in ("secret", ""):
            return {}
        return logical(
            [{"Entry": "/", "Target": "/uploads/home/${transfer:UserName}"},
             {"Entry": "/archive", "Target": "/archive/2026"}],
            Policy=READ_ARCHIVE_WRITE_HOME,
            PublicKeys=[key.export_public_key().decode()],
        )  # fmt: skip

    (tmp_path / "up.txt").write_text("to the home\n")
    async with client_and_bucket(seaweedfs.endpoint, "uploads") as (s3, uploads):
        await s3.create_bucket(Bucket=uploads + "-archive")
        archive = uploads + "-archive"
        await s3.put_object(Bucket=archive, Key="2026/report.txt", Body=b"old report")
        namespace = MountBackend(backends={
            "uploads": S3Backend(uploads, client=s3),
            "archive": S3Backend(archive, client=s3),
        })  # fmt: skip
        identity = TransferIdentity(lambda event: handler(event, None))
        async with running_server(backend=namespace, auth=identity) as server:
            result = await openssh.run(
                server.port, "put up.txt\nls /\nget /archive/report.txt got.txt\n"
                "-put up.txt /archive/up.txt\n",
                user="ann", password="secret", cwd=tmp_path,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert (tmp_path / "got.txt").read_bytes() == b"old report"
            head = await s3.head_object(Bucket=uploads, Key="home/ann/up.txt")
            assert head["ContentLength"] == len("to the home\n")
            with pytest.raises(asyncssh.PermissionDenied):
                async with connect(server.port, "ann", "wrong"):
                    pass
            async with asyncssh.connect(
                "127.0.0.1", server.port, username="ann", client_keys=[key],
                known_hosts=None, preferred_auth="publickey",
            ) as conn, conn.start_sftp_client() as sftp:  # fmt: skip
                assert "up.txt" in await sftp.listdir("/")
                with pytest.raises(asyncssh.SFTPPermissionDenied):
                    await sftp.remove("/archive/report.txt")
        listed = await s3.list_objects_v2(Bucket=archive)
        assert [o["Key"] for o in listed["Contents"]] == ["2026/report.txt"]
    assert events[0] == {"username": "ann", "password": "secret", "protocol": "SFTP",
                         "serverId": "sftpd", "sourceIp": "127.0.0.1"}  # fmt: skip


async def test_a_path_home_is_where_the_session_starts(openssh: OpenSSH, tmp_path: Path) -> None:
    """HomeDirectoryType PATH: OpenSSH starts in the home (pwd), a relative put lands
    there, and absolute bucket paths keep working."""
    uploads = sftpd.MemoryBackend({"/home/bob/.keep": b""})

    def handler(event: Mapping[str, Any]) -> dict[str, Any]:
        return {"HomeDirectoryType": "PATH", "HomeDirectory": "/uploads/home/${transfer:UserName}"}

    namespace = MountBackend(backends={"uploads": uploads})
    (tmp_path / "up.txt").write_text("relative\n")
    async with running_server(backend=namespace, auth=TransferIdentity(handler)) as server:
        result = await openssh.run(server.port, "pwd\nput up.txt\nls /uploads/home/bob\n",
                                   user="bob", password="x", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Remote working directory: /uploads/home/bob" in result.stdout
    session = sftpd.Session(username="t", peer=sftpd.Peer("x", 0))
    assert await uploads.read_file("/home/bob/up.txt", session) == b"relative\n"
