"""Shared fixtures: host keys, a running server, and real SFTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd.testing import make_session


@pytest.fixture(scope="session")
def host_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with one ed25519 host key."""
    directory = tmp_path_factory.mktemp("host_keys")
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(directory / "ssh_host_ed25519_key"))
    return directory


@pytest.fixture(scope="session")
def generated_host_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the host keys `sftpd serve` generates: ed25519 and RSA."""
    from sftpd.cli import ensure_host_keys

    directory = tmp_path_factory.mktemp("generated_host_keys") / "keys"
    ensure_host_keys(directory)
    return directory


@pytest.fixture(scope="session")
def legacy_host_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host keys `sftpd serve --legacy` generates: ed25519, RSA and ECDSA."""
    from sftpd.cli import ensure_host_keys

    directory = tmp_path_factory.mktemp("legacy_host_keys") / "keys"
    ensure_host_keys(directory, legacy=True)
    return directory


@pytest.fixture
def memory_backend() -> sftpd.MemoryBackend:
    """An empty memory backend."""
    return sftpd.MemoryBackend()


@pytest.fixture
async def server(
    host_key_dir: Path, memory_backend: sftpd.MemoryBackend
) -> AsyncIterator[sftpd.Server]:
    """A server on a free loopback port, memory backend, user dev/dev."""
    async with sftpd.Server(
        backend=memory_backend,
        auth={"dev": "dev", "other": "secret"},
        system_dir=host_key_dir,
        port=0,
        shutdown_grace=1,
    ) as srv:
        yield srv


async def refused_at_key_exchange(port: int, **options: Any) -> None:
    """Connect with ``options`` (algorithm lists) and expect the key exchange to fail.

    The server sends its "key exchange failed" disconnect and drops the connection; on a
    loaded machine the client can see the drop before reading the message, as a lost
    connection. Either way no session was made, which is what the callers check.
    """
    with pytest.raises((asyncssh.KeyExchangeFailed, asyncssh.ConnectionLost)):
        async with connect(port, **options):
            pass


def connect(port: int, username: str = "dev", password: str = "dev", **kw: Any) -> Any:
    """Open an asyncssh client connection to a test server."""
    return asyncssh.connect(
        "127.0.0.1",
        port,
        username=username,
        password=password,
        known_hosts=None,
        client_keys=None,
        **kw,
    )


@pytest.fixture
async def sftp(server: sftpd.Server) -> AsyncIterator[asyncssh.SFTPClient]:
    """An asyncssh SFTP client logged in as dev."""
    async with connect(server.port) as conn, conn.start_sftp_client() as client:
        yield client


def sha256(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    """Write ``size`` pseudo-random bytes (fast, reproducible) to ``path``."""
    block = hashlib.sha256(str(seed).encode()).digest() * 32768  # 1 MiB
    rnd = os.urandom(4096)
    with path.open("wb") as f:
        remaining, i = size, 0
        while remaining > 0:
            piece = (rnd + i.to_bytes(8, "big") + block)[: min(remaining, len(block))]
            f.write(piece)
            remaining -= len(piece)
            i += 1
    return path


@dataclass
class SftpResult:
    """What an OpenSSH ``sftp -b`` run printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def askpass(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A script OpenSSH runs to obtain the password from $SFTPD_TEST_PASSWORD."""
    path = tmp_path_factory.mktemp("askpass") / "askpass.sh"
    path.write_text('#!/bin/sh\nprintf "%s\\n" "$SFTPD_TEST_PASSWORD"\n')
    path.chmod(0o755)
    return path


class OpenSSH:
    """Runs OpenSSH's ``sftp`` client in batch mode against a test server."""

    def __init__(self, askpass: Path) -> None:
        if shutil.which("sftp") is None:  # pragma: no cover - CI installs openssh-client
            pytest.fail("OpenSSH sftp client not installed (apt-get install openssh-client)")
        self.askpass = askpass

    def command(self, port: int, user: str, extra: list[str] | None = None) -> list[str]:
        """The sftp argv for a batch run read from standard input."""
        return [
            "sftp",
            "-o", "BatchMode=no",  # must come before -b, which would turn it on
            *(extra or []),  # ssh keeps the first value of an option: callers' win
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "PubkeyAuthentication=no",
            "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", "LogLevel=ERROR",
            "-o", "NumberOfPasswordPrompts=1",
            "-P", str(port),
            "-b", "-",
            f"{user}@127.0.0.1",
        ]  # fmt: skip

    def env(self, password: str) -> dict[str, str]:
        """Environment making OpenSSH read the password from the askpass script."""
        return {
            **os.environ,
            "SSH_ASKPASS": str(self.askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
            "SFTPD_TEST_PASSWORD": password,
        }

    async def run(
        self,
        port: int,
        commands: str,
        *,
        user: str = "dev",
        password: str = "dev",
        cwd: Path | None = None,
        timeout: float = 240,
        extra: list[str] | None = None,
    ) -> SftpResult:
        """Run a batch of sftp commands; returns exit code and output."""
        proc = await asyncio.create_subprocess_exec(
            *self.command(port, user, extra),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=self.env(password),
            start_new_session=True,
        )
        out, err = await asyncio.wait_for(proc.communicate(commands.encode()), timeout)
        assert proc.returncode is not None
        return SftpResult(proc.returncode, out.decode(), err.decode())


@pytest.fixture(scope="session")
def openssh(askpass: Path) -> OpenSSH:
    """The OpenSSH sftp client driver."""
    return OpenSSH(askpass)


# ------------------------------------------------------------------------- S3 servers


@pytest.fixture(scope="session")
def rclone(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The rclone driver (tests/e2e/test_other_clients.Rclone), with an empty config."""
    from tests.e2e.test_other_clients import Rclone

    config = tmp_path_factory.mktemp("rclone") / "rclone.conf"
    config.write_text("")
    return Rclone(config)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SeaweedFS (weed mini) for the whole test run."""
    from tests.s3_servers import start_seaweedfs

    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Debian's redis-server for the whole test run (tests/redis_server.RedisServer)."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The suite's Redis, emptied for this test."""
    if redis_server.proc is None:  # a test killed it
        redis_server.start()
    redis_server.flush()
    return str(redis_server.url)


@pytest.fixture(scope="session")
def moto_s3() -> Any:
    """moto's S3 server for the whole test run."""
    from tests.s3_servers import start_moto

    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(params=["seaweedfs", "moto"])
def s3_server(request: pytest.FixtureRequest) -> Any:
    """Each S3 test runs against SeaweedFS and against moto."""
    return request.getfixturevalue("moto_s3" if request.param == "moto" else "seaweedfs")


@pytest.fixture
async def s3_client(s3_server: Any) -> Any:
    """An aiobotocore client for the test server."""
    from tests.s3_servers import client_for

    async with client_for(s3_server.endpoint) as client:
        yield client


@pytest.fixture
async def bucket(s3_client: Any) -> str:
    """A new, empty bucket."""
    import secrets

    name = f"sftpd-{secrets.token_hex(6)}"
    await s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_backend(s3_client: Any, bucket: str) -> Any:
    """An S3 backend on the test bucket, with 5 MiB parts."""
    from sftpd.backends.s3 import S3Backend

    return S3Backend(bucket, client=s3_client, part_size=5 << 20, read_chunk=1 << 20)


@contextlib.asynccontextmanager
async def named_backend(
    request: pytest.FixtureRequest, tmp_path: Path, **s3_options: Any
) -> AsyncIterator[object]:
    """The backend ``request.param`` names: memory, local (under ``tmp_path``), or S3 on
    a new bucket of the suite's seaweedfs or moto server (``s3_options`` for S3Backend)."""
    if request.param == "memory":
        yield sftpd.MemoryBackend()
    elif request.param == "local":
        (tmp_path / "root").mkdir()
        yield sftpd.LocalBackend(tmp_path / "root")
    else:
        from sftpd.backends.s3 import S3Backend
        from tests.s3_servers import client_and_bucket

        s3 = request.getfixturevalue("moto_s3" if request.param == "moto" else "seaweedfs")
        async with client_and_bucket(s3.endpoint, "named") as (client, bucket):
            yield S3Backend(bucket, client=client, **s3_options)


@pytest.fixture(params=["memory", "local", "seaweedfs"])
async def backend_and_files(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[object, Any]]:
    """A backend and a function listing every stored file (and open multipart upload)."""
    if request.param == "memory":
        memory = sftpd.MemoryBackend()

        async def memory_names(directory: str = "/") -> list[str]:
            names: list[str] = []
            async for entry in memory.list_dir(directory, make_session()):
                path = f"{directory.rstrip('/')}/{entry.name}"
                if entry.attrs.is_dir:
                    names += await memory_names(path)
                else:
                    names.append(path.lstrip("/"))
            return sorted(names)

        yield memory, memory_names
    elif request.param == "local":
        root = tmp_path / "root"
        root.mkdir()

        async def local_names() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())

        yield sftpd.LocalBackend(root), local_names
    else:
        from sftpd.backends.s3 import S3Backend
        from tests.e2e.test_s3 import keys, open_uploads
        from tests.s3_servers import client_and_bucket

        seaweedfs = request.getfixturevalue("seaweedfs")
        async with client_and_bucket(seaweedfs.endpoint, "gate") as (client, bucket):

            async def s3_names() -> list[str]:
                uploads = [f"upload:{k}" for k in await open_uploads(client, bucket)]
                files = [k for k in await keys(client, bucket) if not k.endswith("/.keep")]
                return files + uploads  # directory markers aside

            yield S3Backend(bucket, client=client, part_size=5 << 20), s3_names


async def start_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, int, str]:
    """Start `sftpd serve ARGS`; return the process, its port and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sftpd", "serve", "--port", "0", *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None
    text = ""
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not line:
            pytest.fail(f"server exited early: {text}")
        text += line.decode()
        match = re.search(r"sftp -P (\d+) (\S+)@localhost", text)
        if match:
            break
    for _ in range(3):
        text += (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
    return proc, int(match.group(1)), text


@contextlib.asynccontextmanager
async def cli(*args: str, cwd: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, str]]:
    """`sftpd serve ARGS` for the duration of a test; killed afterwards if still running."""
    proc, port, text = await start_cli(*args, cwd=cwd)
    try:
        yield proc, port, text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def stop_cli(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM the server and return its exit code."""
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 20)


def children_of(pid: int) -> list[int]:
    """Child process ids of ``pid`` (Linux /proc)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return sorted(int(p) for p in text.split())


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (Linux /proc)."""
    return Path(f"/proc/{pid}").exists()


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait up to 10 s for ``check()``; fail the test with ``what`` otherwise."""
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.1)
    pytest.fail(what)


async def exclusive_race(port: int) -> tuple[bytes, str]:
    """Two clients open the same new file exclusively; the first closes, then the second.

    Returns what the file holds and how the second close ended.
    """
    async with connect(port) as a, a.start_sftp_client() as first:
        async with connect(port) as b, b.start_sftp_client() as second:
            mine = await first.open("/claimed.txt", "xb")  # both pass the check at open
            theirs = await second.open("/claimed.txt", "xb")
            await mine.write(b"first")
            await theirs.write(b"second")
            await mine.close()
            try:
                await theirs.close()
                outcome = "stored"
            except asyncssh.SFTPError as exc:
                outcome = exc.reason
            async with first.open("/claimed.txt", "rb") as f:
                return await f.read(), outcome


async def upload_stored(port: int, user: str, password: str, size: int) -> bool:
    """Whether a ``size``-byte upload by ``user`` is stored (False if the server refuses it)."""
    async with connect(port, user, password) as conn, conn.start_sftp_client() as sftp:
        try:
            async with sftp.open(f"/{user}-{size}.bin", "wb") as f:
                await f.write(b"x" * size)
        except asyncssh.SFTPFailure:
            return False
        return True


def http_get(url: str) -> tuple[int, str]:
    """GET ``url``: the status and the body (an error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
