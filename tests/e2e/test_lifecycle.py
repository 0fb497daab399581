"""End-to-end: server lifecycle, timeouts, honest close and error hygiene."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd.backends.memory import MemoryWriter
from tests.conftest import connect

S = sftpd.Session(username="t", peer=sftpd.Peer("127.0.0.1", 0))


def make_server(host_key_dir: Path, backend: Any, **kw: Any) -> sftpd.Server:
    return sftpd.Server(backend=backend, auth={"dev": "dev"}, system_dir=host_key_dir, port=0, **kw)


async def test_port_zero_binds_a_real_port(host_key_dir: Path) -> None:
    """After start on port 0 the bound port is readable and accepts clients."""
    server = make_server(host_key_dir, sftpd.MemoryBackend())
    await server.start()
    try:
        assert server.port > 0
        assert server.is_serving
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            assert await sftp.realpath(".") == "/"
    finally:
        await server.stop()
    assert not server.is_serving
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_graceful_stop_lets_an_open_upload_finish(host_key_dir: Path) -> None:
    """close() stops accepting at once but an open upload may still complete and commit."""
    backend = sftpd.MemoryBackend()
    server = make_server(host_key_dir, backend, shutdown_grace=5)
    await server.start()
    port = server.port
    async with connect(port) as conn, conn.start_sftp_client() as sftp:
        f = await sftp.open("/late.bin", "wb")
        await f.write(b"a" * 1000)
        server.close()
        await asyncio.sleep(0.1)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await f.write(b"b" * 1000, 1000)
        await f.close()
    await server.wait_closed()
    assert await backend.read_file("/late.bin", S) == b"a" * 1000 + b"b" * 1000


async def test_grace_period_expiry_disconnects_and_aborts(host_key_dir: Path) -> None:
    """A session still busy after the grace period is disconnected and its upload dropped."""
    backend = sftpd.MemoryBackend()
    server = make_server(host_key_dir, backend, shutdown_grace=0.3)
    await server.start()
    async with connect(server.port) as conn:
        sftp = await conn.start_sftp_client()
        f = await sftp.open("/never.bin", "wb")
        await f.write(b"x" * 10)
        await server.stop()
        with pytest.raises((asyncssh.SFTPError, asyncssh.Error, OSError)):
            await f.write(b"y", 10)
    with pytest.raises(sftpd.NoSuchFile):
        await backend.stat("/never.bin", S)


class FailingCommitBackend(sftpd.MemoryBackend):
    """Commits fail, as an S3 CompleteMultipartUpload might."""

    async def open_writer(
        self, path: str, session: sftpd.Session, *, keep_existing: bool, exclusive: bool = False
    ) -> Any:
        writer = await super().open_writer(
            path, session, keep_existing=keep_existing, exclusive=exclusive
        )

        async def fail() -> None:
            raise sftpd.Failure("Storage refused the upload")

        writer.commit = fail  # type: ignore[method-assign]
        return writer


async def test_failed_commit_fails_the_close(host_key_dir: Path) -> None:
    """When storing fails at close, the client's close gets the error and no file exists."""
    backend = FailingCommitBackend()
    async with make_server(host_key_dir, backend) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            f = await sftp.open("/doomed", "wb")
            await f.write(b"data")
            with pytest.raises(asyncssh.SFTPFailure, match="Storage refused the upload"):
                await f.close()
            assert not await sftp.exists("/doomed")


class SlowBackend(sftpd.MemoryBackend):
    """Opens and commits hang, as a stuck storage service would."""

    def __init__(self, *, slow_stat: bool = False) -> None:
        super().__init__()
        self.slow_stat = slow_stat
        self.aborted = False

    async def stat(self, path: str, session: sftpd.Session) -> sftpd.FileAttrs:
        if self.slow_stat and path != "/":
            await asyncio.sleep(30)
        return await super().stat(path, session)

    async def open_writer(
        self, path: str, session: sftpd.Session, *, keep_existing: bool, exclusive: bool = False
    ) -> Any:
        writer: MemoryWriter = await super().open_writer(
            path, session, keep_existing=keep_existing, exclusive=exclusive
        )
        backend = self

        async def hang() -> None:
            await asyncio.sleep(30)

        async def abort() -> None:
            backend.aborted = True

        writer.commit = hang  # type: ignore[method-assign]
        writer.abort = abort  # type: ignore[method-assign]
        return writer


async def test_open_timeout_bounds_a_stuck_open(host_key_dir: Path) -> None:
    """An open that the backend does not answer fails after open_timeout."""
    async with make_server(host_key_dir, SlowBackend(slow_stat=True), open_timeout=0.3) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPFailure, match="timed out"):
                await asyncio.wait_for(sftp.open("/x", "wb"), 5)


async def test_close_timeout_bounds_a_stuck_commit(host_key_dir: Path) -> None:
    """A commit that hangs fails the close after close_timeout and the upload is aborted."""
    backend = SlowBackend()
    async with make_server(host_key_dir, backend, close_timeout=0.3) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            f = await sftp.open("/x", "wb")
            await f.write(b"1")
            with pytest.raises(asyncssh.SFTPFailure, match="timed out"):
                await asyncio.wait_for(f.close(), 5)
    assert backend.aborted


class BuggyBackend(sftpd.MemoryBackend):
    """A backend with a bug that leaks internals in its exception text."""

    async def stat(self, path: str, session: sftpd.Session) -> sftpd.FileAttrs:
        if path == "/boom":
            raise RuntimeError("password=hunter2 at db.internal:5432")
        return await super().stat(path, session)


async def test_unexpected_exceptions_become_a_generic_failure(
    host_key_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend bug reaches the client as a bare failure and the log gets the traceback."""
    async with make_server(host_key_dir, BuggyBackend()) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPFailure) as failure:
                await sftp.stat("/boom")
    assert failure.value.reason == "Failure"
    assert "hunter2" not in str(failure.value)
    assert any("hunter2" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_run_blocks_until_interrupted(host_key_dir: Path) -> None:
    """sftpd.run() serves until KeyboardInterrupt, then returns (tested in a subprocess)."""
    script = (
        "import logging, signal, sftpd, sys\n"
        # A shell's background job inherits SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler; restore it, as an interactive terminal would have it.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        f"sftpd.run(backend=sftpd.MemoryBackend(), auth={{'dev': 'dev'}}, "
        f"system_dir={str(host_key_dir)!r}, port=0)\n"
        "print('returned')\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    log = b""
    while b"sftpd listening on" not in log:  # started, however slow the machine
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, f"run() ended before listening: {log.decode()}"
        log += line
    await asyncio.sleep(0.3)
    assert proc.returncode is None, "run() returned early"
    proc.send_signal(2)  # SIGINT, as Ctrl-C
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"run() did not return after SIGINT: {(log + err).decode()}")
    assert b"returned" in out, (log + err).decode()
