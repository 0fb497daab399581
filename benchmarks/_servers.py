"""Servers the benchmarks start in their own processes, so each one's RSS is its own.

    python -m benchmarks._servers sftpd KEY_DIR [LISTING_ENTRIES]
    python -m benchmarks._servers sftpd-local KEY_DIR ROOT
    python -m benchmarks._servers sftpd-latency KEY_DIR MILLISECONDS
    python -m benchmarks._servers sftpd-handler KEY_DIR
    python -m benchmarks._servers sftpd-digests KEY_DIR none|md5,sha256 [ROOT]
    python -m benchmarks._servers sftpd-s3 KEY_DIR ENDPOINT BUCKET
    python -m benchmarks._servers asyncssh KEY_DIR ROOT

Each prints its port on the first line of stdout, then serves until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import asyncssh

import sftpd
from sftpd import telemetry


class _PasswordServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == "dev" and password == "dev"


async def serve_sftpd(key_dir: str, handler: bool = False) -> None:
    """sftpd on the memory backend; optionally with one telemetry handler on every event."""
    if handler:
        counts: dict[tuple[str, ...], int] = {}

        def count(event: telemetry.Event) -> None:
            counts[event.name] = counts.get(event.name, 0) + 1

        telemetry.attach("bench-counter", ("sftpd",), count)
    async with sftpd.Server(
        backend=sftpd.MemoryBackend(), auth={"dev": "dev"}, system_dir=key_dir, port=0
    ) as server:
        print(server.port, flush=True)
        await asyncio.Event().wait()


async def serve_backend(key_dir: str, backend: object, **options: Any) -> None:
    """sftpd on any backend (room for a benchmark's parallel clients)."""
    async with sftpd.Server(
        backend=backend, auth={"dev": "dev"}, system_dir=key_dir, port=0, max_sessions=64,
        **options,
    ) as server:  # fmt: skip
        print(server.port, flush=True)
        await asyncio.Event().wait()


class LatencyBackend(sftpd.MemoryBackend):
    """The memory backend with a fixed delay on every read and every write (a remote store)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def read_range(
        self, path: str, offset: int, length: int, session: sftpd.Session
    ) -> bytes:
        await asyncio.sleep(self.delay)
        return await super().read_range(path, offset, length, session)

    async def open_writer(  # type: ignore[override]
        self, path: str, session: sftpd.Session, *, keep_existing: bool, exclusive: bool = False
    ) -> _LatencyWriter:
        inner = await super().open_writer(
            path, session, keep_existing=keep_existing, exclusive=exclusive
        )
        return _LatencyWriter(inner, self.delay)


class _LatencyWriter:
    concurrent_writes = True

    def __init__(self, inner: sftpd.backend.Writer, delay: float) -> None:
        self._inner = inner
        self._delay = delay

    async def write(self, offset: int, data: bytes) -> None:
        await asyncio.sleep(self._delay)
        await self._inner.write(offset, data)

    async def commit(self) -> None:
        await self._inner.commit()

    async def abort(self) -> None:
        await self._inner.abort()


async def serve_asyncssh(keys: list[asyncssh.SSHKey], root: str) -> None:
    """asyncssh's stock SFTPServer serving a directory (chrooted).

    It offers sftpd's default ciphers, so both servers speak the same cipher to OpenSSH and
    the comparison is of the servers, not of the ciphers.
    """
    acceptor = await asyncssh.create_server(
        _PasswordServer,
        "127.0.0.1",
        0,
        server_host_keys=keys,
        sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root.encode()),
        encryption_algs=list(sftpd.DEFAULT_CIPHERS),
        encoding=None,
    )
    print(acceptor.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


async def serve_sftpd_s3(key_dir: str, endpoint: str, bucket: str) -> None:
    """sftpd on the S3 backend (credentials from the environment)."""
    from sftpd.backends.s3 import S3Backend

    backend = S3Backend(bucket, endpoint_url=endpoint, region_name="us-east-1")
    async with sftpd.Server(
        backend=backend, auth={"dev": "dev"}, system_dir=key_dir, port=0
    ) as server:
        print(server.port, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "sftpd" and len(sys.argv) > 3:  # with /listing holding that many files
        entries = int(sys.argv[3])
        files = {f"/listing/f{i:05d}": b"" for i in range(entries)}
        asyncio.run(serve_backend(sys.argv[2], sftpd.MemoryBackend(files)))
    elif kind == "sftpd":
        asyncio.run(serve_sftpd(sys.argv[2]))
    elif kind == "sftpd-local":
        asyncio.run(serve_backend(sys.argv[2], sftpd.LocalBackend(sys.argv[3])))
    elif kind == "sftpd-latency":
        asyncio.run(serve_backend(sys.argv[2], LatencyBackend(float(sys.argv[3]) / 1000)))
    elif kind == "sftpd-digests":  # KEY_DIR ALGORITHMS ("none" or md5,sha256) [ROOT]
        names = [] if sys.argv[3] == "none" else sys.argv[3].split(",")
        store = sftpd.LocalBackend(sys.argv[4]) if len(sys.argv) > 4 else sftpd.MemoryBackend()
        asyncio.run(serve_backend(sys.argv[2], store, upload_digests=names))
    elif kind == "sftpd-handler":
        asyncio.run(serve_sftpd(sys.argv[2], handler=True))
    elif kind == "sftpd-s3":
        asyncio.run(serve_sftpd_s3(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif kind == "asyncssh":
        host_keys = [
            asyncssh.read_private_key(str(p)) for p in Path(sys.argv[2]).glob("ssh_host_*_key")
        ]
        asyncio.run(serve_asyncssh(host_keys, sys.argv[3]))
    else:
        raise SystemExit(f"unknown server kind {kind!r}")
