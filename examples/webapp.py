"""A Starlette app whose own user table decides who may log in over SFTP.

Each user belongs to a tenant and is confined to ``/tenants/<tenant>``; the web side lists
what the tenant uploaded. The SFTP server starts and stops with the app's lifespan.

Run it (needs ``pip install starlette uvicorn``)::

    SFTPD_HOST_KEYS=ssh_keys uvicorn examples.webapp:app

then ``sftp -P 2222 alice@localhost`` (password ``alice-password``) and open
http://127.0.0.1:8000/tenants/acme/files.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import sftpd


@dataclass
class User:
    """A row of the app's user table."""

    name: str
    tenant: str
    salt: bytes
    password_hash: bytes
    key_fingerprints: set[str] = field(default_factory=set)


def hash_password(password: str, salt: bytes) -> bytes:
    """scrypt, as an app would store passwords."""
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)


class UserTable:
    """Stands in for the app's database."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}

    def add(self, name: str, tenant: str, password: str, keys: Sequence[str] = ()) -> None:
        salt = secrets.token_bytes(16)
        fingerprints = {sftpd.fingerprint(sftpd.decode_authorized_key(k)) for k in keys}
        self.users[name] = User(name, tenant, salt, hash_password(password, salt), fingerprints)


class AppAuth:
    """Password and key logins checked against the user table; each user gets its tenant."""

    def __init__(self, table: UserTable) -> None:
        self.table = table

    def _session(self, user: User) -> dict[str, Any]:
        return {"root": f"/tenants/{user.tenant}", "tenant": user.tenant, "user": user.name}

    def authenticate_password(
        self, username: str, password: str, peer: sftpd.Peer
    ) -> dict[str, Any] | None:
        """Plain def: scrypt is slow, so sftpd runs this in a thread."""
        user = self.table.users.get(username)
        if user is None:
            return None
        if not hmac.compare_digest(hash_password(password, user.salt), user.password_hash):
            return None
        return self._session(user)

    async def authorize_public_key(
        self, username: str, key: asyncssh.SSHKey, peer: sftpd.Peer
    ) -> dict[str, Any] | None:
        user = self.table.users.get(username)
        if user is None or sftpd.fingerprint(key) not in user.key_fingerprints:
            return None
        return self._session(user)


users = UserTable()
users.add("alice", "acme", "alice-password")
users.add("bob", "globex", "bob-password")
storage = sftpd.MemoryBackend()


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Start the SFTP server with the app; stop it gracefully when the app stops."""
    async with sftpd.Server(
        backend=storage,
        auth=AppAuth(users),
        system_dir=os.environ.get("SFTPD_HOST_KEYS", "ssh_keys"),
        host=os.environ.get("SFTPD_HOST", "127.0.0.1"),
        port=int(os.environ.get("SFTPD_PORT", "2222")),
    ) as server:
        app.state.sftp = server
        yield


async def tenant_files(request: Request) -> JSONResponse:
    """What a tenant uploaded over SFTP, read straight from the backend."""
    tenant = request.path_params["tenant"]
    session = sftpd.Session(username="web", peer=sftpd.Peer("web", 0))
    try:
        entries = [
            {"name": e.name, "size": e.attrs.size}
            async for e in storage.list_dir(f"/tenants/{tenant}", session)
        ]
    except sftpd.NoSuchFile:
        entries = []
    return JSONResponse(entries)


app = Starlette(routes=[Route("/tenants/{tenant}/files", tenant_files)], lifespan=lifespan)
