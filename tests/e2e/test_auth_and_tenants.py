"""End-to-end: authenticator callbacks, public keys and per-session roots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect

S = sftpd.Session(username="t", peer=sftpd.Peer("127.0.0.1", 0))


class TenantAuth:
    """Users from an app's table: each is confined to its tenant's directory."""

    def __init__(self, key: asyncssh.SSHKey) -> None:
        self.users = {"alice": ("pw-a", "acme"), "bob": ("pw-b", "globex")}
        self.key_fingerprint = sftpd.fingerprint(key)
        self.seen_peers: list[sftpd.Peer] = []

    async def authenticate_password(
        self, username: str, password: str, peer: sftpd.Peer
    ) -> dict[str, Any] | None:
        self.seen_peers.append(peer)
        user = self.users.get(username)
        if user is None or user[0] != password:
            return None
        return {"root": f"/tenants/{user[1]}", "tenant": user[1]}

    def authorize_public_key(
        self, username: str, key: asyncssh.SSHKey, peer: sftpd.Peer
    ) -> dict[str, Any] | None:
        if username == "alice" and sftpd.fingerprint(key) == self.key_fingerprint:
            return {"root": "/tenants/acme"}
        return None


@pytest.fixture
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
def tenant_backend() -> sftpd.MemoryBackend:
    return sftpd.MemoryBackend(
        {"/tenants/acme/report.txt": b"acme data", "/tenants/globex/secret.txt": b"globex data"}
    )


async def test_tenants_cannot_reach_each_other(
    tenant_backend: sftpd.MemoryBackend, client_key: asyncssh.SSHKey
) -> None:
    """Each tenant sees only its root; no path reaches the other's files."""
    auth = TenantAuth(client_key)
    async with running_server(backend=tenant_backend, auth=auth) as server:
        async with connect(server.port, "alice", "pw-a") as conn, conn.start_sftp_client() as a:
            assert sorted(await a.listdir("/")) == [".", "..", "report.txt"]
            for path in ("/../globex/secret.txt", "../../tenants/globex/secret.txt",
                         "/tenants/globex/secret.txt", "//..//globex/secret.txt"):  # fmt: skip
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await a.stat(path)
            with pytest.raises(asyncssh.SFTPNoSuchFile):  # lands in acme's (missing) /globex
                await a.rename("/report.txt", "/../globex/moved.txt")
            await a.rename("/report.txt", "/../../moved.txt")
            async with a.open("/../../x.txt", "wb") as f:
                await f.write(b"x")
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await a.remove("/../globex/secret.txt")
            for directory in ("/../globex", "/tenants/globex", "../../globex/"):
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await a.listdir(directory)
            with pytest.raises(asyncssh.SFTPNoSuchFile):  # lands in acme's (missing) /globex
                async with a.open("/../globex/planted.txt", "wb"):
                    pass
            assert await a.realpath("/..") == "/"
        assert await tenant_backend.read_file("/tenants/acme/moved.txt", S) == b"acme data"
        assert await tenant_backend.read_file("/tenants/acme/x.txt", S) == b"x"
        assert await tenant_backend.read_file("/tenants/globex/secret.txt", S) == b"globex data"
        async with connect(server.port, "bob", "pw-b") as conn, conn.start_sftp_client() as b:
            assert sorted(await b.listdir("/")) == [".", "..", "secret.txt"]
    assert auth.seen_peers
    assert auth.seen_peers[0].host == "127.0.0.1"


async def test_public_key_login_and_wrong_key(
    tenant_backend: sftpd.MemoryBackend, client_key: asyncssh.SSHKey
) -> None:
    """The authorized key logs in; another key is refused."""
    async with running_server(backend=tenant_backend, auth=TenantAuth(client_key)) as server:
        async with asyncssh.connect(
            "127.0.0.1", server.port, username="alice", client_keys=[client_key],
            known_hosts=None, password=None,
        ) as conn, conn.start_sftp_client() as sftp:  # fmt: skip
            assert "report.txt" in await sftp.listdir("/")
        other = asyncssh.generate_private_key("ssh-ed25519")
        with pytest.raises(asyncssh.PermissionDenied):
            async with asyncssh.connect(
                "127.0.0.1", server.port, username="alice", client_keys=[other],
                known_hosts=None, password=None,
            ):  # fmt: skip
                pass


class RaisingAuth:
    def authenticate_password(self, username: str, password: str, peer: sftpd.Peer) -> Any:
        if username == "boom":
            raise RuntimeError("database down")
        if username == "kick":
            raise sftpd.Disconnect("Account locked")
        return {} if password == "ok" else None


async def test_raising_authenticator_rejects_without_crashing() -> None:
    """An authenticator that raises rejects that login; Disconnect drops the client."""
    async with running_server(backend=sftpd.MemoryBackend(), auth=RaisingAuth()) as server:
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(server.port, "boom", "x"):
                pass
        with pytest.raises(asyncssh.DisconnectError, match="Account locked"):
            async with connect(server.port, "kick", "x"):
                pass
        async with connect(server.port, "fine", "ok") as conn, conn.start_sftp_client() as sftp:
            assert await sftp.listdir("/") == [".", ".."]


async def test_openssh_sees_only_its_tenant(
    tenant_backend: sftpd.MemoryBackend,
    client_key: asyncssh.SSHKey,
    openssh: OpenSSH,
    tmp_path: Path,
) -> None:
    """Through OpenSSH sftp, traversal to another tenant fails and nothing outside changes."""
    async with running_server(backend=tenant_backend, auth=TenantAuth(client_key)) as server:
        result = await openssh.run(
            server.port, "ls -1 /\nget ../globex/secret.txt stolen.txt\n",
            user="alice", password="pw-a", cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode != 0
    assert "report.txt" in result.stdout
    assert not (tmp_path / "stolen.txt").exists()


async def test_replace_auth_changes_who_may_log_in_from_now_on() -> None:
    """replace_auth() swaps the users for new logins; a session already open keeps working."""
    backend = sftpd.MemoryBackend()
    key = asyncssh.generate_private_key("ssh-ed25519")
    unstarted = sftpd.Server(backend=backend, auth={"a": "a"}, host_keys=[key])
    with pytest.raises(RuntimeError, match="not started"):
        unstarted.replace_auth({"b": "b"})
    async with running_server(backend=backend, auth={"old": "pw"}) as server:
        async with connect(server.port, "old", "pw") as conn, conn.start_sftp_client() as sftp:
            server.replace_auth({"new": "pw"})
            with pytest.raises(asyncssh.PermissionDenied):
                async with connect(server.port, "old", "pw"):
                    pass
            async with connect(server.port, "new", "pw") as new, new.start_sftp_client() as other:
                assert await other.listdir("/") == [".", ".."]
            assert await sftp.listdir("/") == [".", ".."]
        with pytest.raises(sftpd.ConfigError):
            server.replace_auth(42)  # type: ignore[arg-type]
