"""End-to-end: sftpd's own SFTP engine with real clients: extensions, concurrency, limits."""

from __future__ import annotations

import asyncio
import re
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from sftpd._sftp.engine import LIMIT_PACKET, LIMIT_READ
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect, make_file, sha256_file
from tests.raw_sftp import open_raw, packet, string

MiB = 1 << 20


@pytest.fixture(params=["memory", "local"])
async def any_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[sftpd.Server]:
    """A server on the memory backend, or on the local backend over a temporary folder."""
    if request.param == "memory":
        backend: object = sftpd.MemoryBackend()
    else:
        (tmp_path / "root").mkdir()
        backend = sftpd.LocalBackend(tmp_path / "root")
    async with running_server(backend=backend) as server:
        yield server


async def test_asyncssh_client_transfers_with_default_options(
    any_server: sftpd.Server, tmp_path: Path
) -> None:
    """asyncssh's get, put, copy, mget and mcopy work with their defaults (sparse get and
    remote copy included), and every byte arrives."""
    src = make_file(tmp_path / "a.bin", 3 * MiB + 17, seed=3)
    (tmp_path / "b.bin").write_bytes(b"small")
    down = tmp_path / "down"
    down.mkdir()
    async with connect(any_server.port) as conn, conn.start_sftp_client() as sftp:
        assert sftp.supports_remote_copy
        await sftp.put([str(src), str(tmp_path / "b.bin")], "/")
        await sftp.get("/a.bin", str(down / "a.bin"))
        await sftp.copy("/a.bin", "/a-copy.bin")
        await sftp.mcopy("/*.bin", "/")  # onto themselves: refused or a no-op, never corrupt
        await sftp.mkdir("/many")
        await sftp.mcopy(["/a.bin", "/b.bin"], "/many")
        await sftp.mget("/many/*.bin", str(down))
    assert sha256_file(down / "a.bin") == sha256_file(src)
    assert (down / "b.bin").read_bytes() == b"small"
    async with connect(any_server.port) as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("/a-copy.bin", "rb") as f:
            copied = await f.read()
    assert copied == src.read_bytes()


async def test_limits_report_the_configured_numbers() -> None:
    """limits@openssh.com reports sftpd's packet, read and write sizes and max_open_files."""
    async with running_server(backend=sftpd.MemoryBackend(), max_open_files=7) as server:
        async with connect(server.port) as conn:
            chan, raw = await open_raw(conn)
            chan.write(packet(200, struct.pack(">I", 1), string(b"limits@openssh.com")))
            kind, rest = await raw.packet()
            chan.close()
    assert kind == 201  # EXTENDED_REPLY
    assert struct.unpack(">IQQQQ", rest) == (1, LIMIT_PACKET, LIMIT_READ, LIMIT_READ, 7)


async def test_channels_share_the_session_open_file_cap() -> None:
    """Files open on one SFTP channel count on every other channel of the connection."""
    backend = sftpd.MemoryBackend({"/f": b"x"})
    async with running_server(backend=backend, max_open_files=2) as server:
        async with connect(server.port) as conn:
            first = await conn.start_sftp_client()
            second = await conn.start_sftp_client()
            third = await conn.start_sftp_client()
            held = [await first.open("/f"), await second.open("/f")]
            with pytest.raises(asyncssh.SFTPFailure, match="Too many open files"):
                await third.open("/f")
            with pytest.raises(asyncssh.SFTPFailure, match="Too many open files"):
                await third.listdir("/")
            await held[0].close()
            async with third.open("/f", "rb") as f:
                assert await f.read() == b"x"


async def test_channels_per_connection_are_capped() -> None:
    """A connection gets at most max_channels SFTP channels; closing one frees a place."""
    async with running_server(backend=sftpd.MemoryBackend(), max_channels=2) as server:
        async with connect(server.port) as conn:
            one = await conn.start_sftp_client()
            await conn.start_sftp_client()
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.start_sftp_client()
            one.exit()
            await one.wait_closed()
            for _ in range(100):
                try:
                    await conn.start_sftp_client()
                    break
                except asyncssh.ChannelOpenError:
                    await asyncio.sleep(0.02)
            else:
                pytest.fail("a closed channel did not free its place")


async def test_opendir_of_a_missing_path_or_a_file_fails_at_opendir() -> None:
    """OPENDIR answers NO_SUCH_FILE for a missing path and an error for a file, at once."""
    async with running_server(backend=sftpd.MemoryBackend({"/f": b"x"})) as server:
        async with connect(server.port) as conn:
            chan, raw = await open_raw(conn)
            for request_id, path in ((1, b"/missing"), (2, b"/f"), (3, b"/")):
                chan.write(packet(11, struct.pack(">I", request_id), string(path)))
            replies = {}
            for _ in range(3):
                kind, rest = await raw.packet()
                replies[struct.unpack(">I", rest[:4])[0]] = (kind, rest[4:])
            chan.close()
    assert replies[1][0] == 101  # STATUS
    assert struct.unpack(">I", replies[1][1][:4])[0] == 2  # NO_SUCH_FILE
    assert replies[2][0] == 101
    assert struct.unpack(">I", replies[2][1][:4])[0] != 0
    assert replies[3][0] == 102  # HANDLE


async def test_statvfs_of_a_path_that_is_not_utf8_is_the_clients_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """statvfs@openssh.com of undecodable bytes answers a clear status, logged as no error
    (the fuzz harness found it logged as an unexpected exception)."""
    async with running_server(backend=sftpd.LocalBackend(tmp_path)) as server:
        async with connect(server.port) as conn:
            chan, raw = await open_raw(conn)
            chan.write(packet(200, struct.pack(">I", 7), string(b"statvfs@openssh.com"),
                              string(b"\xff\xfe")))  # fmt: skip
            kind, rest = await raw.packet()
            chan.close()
    assert kind == 101  # STATUS
    assert struct.unpack(">II", rest[:8])[0] == 7
    assert struct.unpack(">I", rest[4:8])[0] != 0
    assert b"not valid UTF-8" in rest
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_openssh_cp_ln_symlink_df_and_listings(
    any_server: sftpd.Server, openssh: OpenSSH, tmp_path: Path
) -> None:
    """OpenSSH's cp (copy-data), ln (hardlink), ln -s, df -h, ls -l and ls -n all work."""
    src = make_file(tmp_path / "f.bin", 300_000, seed=9)
    result = await openssh.run(
        any_server.port,
        f"put {src} f.bin\ncp f.bin copy.bin\nln f.bin hard.bin\nln -s f.bin soft\n"
        f"df -h\nls -l\nls -n\nget copy.bin {tmp_path}/copy.bin\nget hard.bin "
        f"{tmp_path}/hard.bin\nget soft {tmp_path}/soft.bin\n",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for name in ("copy.bin", "hard.bin", "soft.bin"):
        assert sha256_file(tmp_path / name) == sha256_file(src), name
    assert re.search(r"Size\s+Used\s+Avail", result.stdout), result.stdout
    assert re.search(r"^l\S+ .* soft$", result.stdout, re.M), result.stdout
    assert re.search(r"^-\S+ .* 300000 .* copy\.bin$", result.stdout, re.M), result.stdout


class Sleepy(sftpd.MemoryBackend):
    """Every read and every write takes 10 ms, as over a slow network store."""

    async def read_range(
        self, path: str, offset: int, length: int, session: sftpd.Session
    ) -> bytes:
        await asyncio.sleep(0.01)
        return await super().read_range(path, offset, length, session)

    async def open_writer(  # type: ignore[override]
        self, path: str, session: sftpd.Session, *, keep_existing: bool, exclusive: bool = False
    ) -> SleepyWriter:
        inner = await super().open_writer(path, session, keep_existing=keep_existing,
                                          exclusive=exclusive)  # fmt: skip
        return SleepyWriter(inner)


class SleepyWriter:
    """A memory writer whose writes take 10 ms each; safe for concurrent writes."""

    concurrent_writes = True

    def __init__(self, inner: sftpd.backend.Writer) -> None:
        self._inner = inner

    async def write(self, offset: int, data: bytes) -> None:
        await asyncio.sleep(0.01)
        await self._inner.write(offset, data)

    async def commit(self) -> None:
        await self._inner.commit()

    async def abort(self) -> None:
        await self._inner.abort()


async def test_requests_of_one_transfer_run_concurrently(openssh: OpenSSH, tmp_path: Path) -> None:
    """With every read and write taking 10 ms, an OpenSSH upload and download of 32 KiB
    requests (64 outstanding) finish over 10 times faster than one at a time could (about
    20 times on a quiet machine; the bound leaves room for a busy one).

    64 MiB (2048 requests each way, 20 s one at a time) so that OpenSSH's slow start of
    outstanding reads is a small part of the time."""
    size = 64 * MiB
    src = make_file(tmp_path / "up.bin", size, seed=4)
    requests = size // (32 << 10)
    serial = requests * 0.01  # seconds, if each request waited for the one before
    bus = telemetry.TelemetryBus()
    spans: list[float] = []
    bus.attach("spans", [("sftpd", "sftp", "close")],
               lambda e: spans.append(e.metadata["open_for"] / 1e9))  # fmt: skip
    async with running_server(backend=Sleepy(), telemetry=bus) as server:
        started = time.monotonic()
        result = await openssh.run(
            server.port,
            f"put {src} up.bin\nget up.bin {tmp_path}/down.bin\n",
            cwd=tmp_path,
            extra=["-B", "32768", "-R", "64"],
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert sha256_file(tmp_path / "down.bin") == sha256_file(src)
    upload, download = spans
    assert upload < serial / 10, (upload, serial)
    assert download < serial / 10, (download, serial)
    assert elapsed < 2 * serial / 10 + 5


async def test_copy_data_within_one_handle_is_refused_not_stuck() -> None:
    """copy-data naming one handle as source and target answers OP_UNSUPPORTED at once and
    the handle still closes (it used to wait for itself forever; found by fuzzing)."""
    async with running_server(backend=sftpd.MemoryBackend({"/f": b"x" * 100})) as server:
        async with connect(server.port) as conn:
            chan, raw = await open_raw(conn)
            chan.write(packet(3, struct.pack(">I", 1), string(b"/f"), struct.pack(">II", 3, 0)))
            kind, rest = await raw.packet()
            assert kind == 102  # HANDLE
            handle = rest[8:]
            chan.write(packet(200, struct.pack(">I", 2), string(b"copy-data"), string(handle),
                              struct.pack(">QQ", 0, 10), string(handle),
                              struct.pack(">Q", 50)))  # fmt: skip
            chan.write(packet(4, struct.pack(">I", 3), string(handle)))  # CLOSE
            replies = {}
            for _ in range(2):
                kind, rest = await asyncio.wait_for(raw.packet(), 5)
                replies[struct.unpack(">I", rest[:4])[0]] = (kind, rest[4:8])
            chan.close()
    assert replies[2] == (101, struct.pack(">I", 8))  # OP_UNSUPPORTED
    assert replies[3] == (101, struct.pack(">I", 0))  # the CLOSE succeeded


async def raw_exchange(chan: Any, raw: Any, *packets: bytes) -> dict[int, tuple[int, bytes]]:
    """Send ``packets`` and collect one reply per packet, by request id."""
    for one in packets:
        chan.write(one)
    replies = {}
    for _ in packets:
        kind, rest = await asyncio.wait_for(raw.packet(), 5)
        replies[struct.unpack(">I", rest[:4])[0]] = (kind, rest[4:])
    return replies


async def test_fstat_of_a_directory_removed_while_open_is_a_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """FSTAT of an open directory handle whose directory was removed answers NO_SUCH_FILE,
    logged as no error (it escaped the error mapping; found by fuzzing)."""
    (tmp_path / "d").mkdir()
    async with running_server(backend=sftpd.LocalBackend(tmp_path)) as server:
        async with connect(server.port) as conn:
            chan, raw = await open_raw(conn)
            opened = await raw_exchange(chan, raw, packet(11, struct.pack(">I", 1), string(b"/d")))
            handle = opened[1][1][4:]
            replies = await raw_exchange(
                chan, raw, packet(15, struct.pack(">I", 2), string(b"/d")),  # RMDIR
            )  # fmt: skip
            replies |= await raw_exchange(
                chan, raw, packet(8, struct.pack(">I", 3), string(handle))
            )
            chan.close()
    assert replies[2][0] == 101
    assert replies[2][1][:4] == struct.pack(">I", 0)
    assert replies[3][0] == 101
    assert struct.unpack(">I", replies[3][1][:4])[0] == 2  # NO_SUCH_FILE
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_reader_of_an_upload_reads_the_stored_file_after_the_upload_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file opened for reading while this session uploads it reads the upload, and once
    the upload is closed reads what was stored (it read the closed upload's file
    descriptor: EBADF; found by fuzzing)."""
    async with running_server(backend=sftpd.LocalBackend(tmp_path)) as server:
        async with connect(server.port) as conn:
            chan, raw = await open_raw(conn)
            flags = struct.pack(">II", 0x1A, 0)  # WRITE | CREAT | TRUNC
            up = await raw_exchange(
                chan, raw, packet(3, struct.pack(">I", 1), string(b"/f"), flags)
            )
            writer = up[1][1][4:]
            write = packet(6, struct.pack(">I", 2), string(writer), struct.pack(">Q", 0),
                           string(b"stored"))  # fmt: skip
            await raw_exchange(chan, raw, write)
            down = await raw_exchange(chan, raw, packet(3, struct.pack(">I", 3), string(b"/f"),
                                                        struct.pack(">II", 1, 0)))  # fmt: skip
            reader = down[3][1][4:]
            closed = await raw_exchange(chan, raw, packet(4, struct.pack(">I", 4), string(writer)))
            read = await raw_exchange(chan, raw, packet(5, struct.pack(">I", 5), string(reader),
                                                        struct.pack(">QI", 0, 100)))  # fmt: skip
            chan.close()
    assert closed[4][1][:4] == struct.pack(">I", 0)
    assert read[5][0] == 103  # DATA
    assert read[5][1][4:] == b"stored"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
