"""End-to-end: asyncssh's SFTP client exercising file-system semantics over TCP."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import cast

import asyncssh
import pytest

import sftpd
from sftpd.testing import running_server
from tests.conftest import connect, exclusive_race, sha256

S = sftpd.Session(username="t", peer=sftpd.Peer("127.0.0.1", 0))


async def put(sftp: asyncssh.SFTPClient, path: str, data: bytes) -> None:
    async with sftp.open(path, "wb") as f:
        await f.write(data)


async def get(sftp: asyncssh.SFTPClient, path: str) -> bytes:
    async with sftp.open(path, "rb") as f:
        return await f.read()


async def test_write_read_round_trip_with_sha256(sftp: asyncssh.SFTPClient) -> None:
    """A 20 MiB file written in one call reads back with the same sha256."""
    data = os.urandom(20 << 20)
    await put(sftp, "/blob.bin", data)
    assert sha256(await get(sftp, "/blob.bin")) == sha256(data)
    assert (await sftp.stat("/blob.bin")).size == len(data)


async def test_nested_directories_and_listing(sftp: asyncssh.SFTPClient) -> None:
    """Directories nest; listings carry sizes and types without extra requests."""
    await sftp.mkdir("/a")
    await sftp.mkdir("/a/b")
    await put(sftp, "/a/b/f.txt", b"hello")
    names = {n.filename: n for n in await sftp.readdir("/a/b")}
    assert set(names) == {".", "..", "f.txt"}
    assert names["f.txt"].attrs.size == 5
    assert names["f.txt"].attrs.type == asyncssh.FILEXFER_TYPE_REGULAR
    assert (await sftp.stat("/a")).type == asyncssh.FILEXFER_TYPE_DIRECTORY
    assert await sftp.isdir("/a/b")
    assert await sftp.isfile("/a/b/f.txt")


async def test_large_directory_lists_in_batches(sftp: asyncssh.SFTPClient) -> None:
    """A directory with 1000 entries lists completely (READDIR answers in batches)."""
    await sftp.mkdir("/many")
    for i in range(1000):
        async with sftp.open(f"/many/{i:04d}", "wb"):
            pass
    names = await sftp.listdir("/many")
    assert sorted(n for n in names if n not in (".", "..")) == [f"{i:04d}" for i in range(1000)]


async def test_rename_file_and_whole_directory(sftp: asyncssh.SFTPClient) -> None:
    """Renaming a directory moves its children with it."""
    await sftp.makedirs("/src/deep")
    await put(sftp, "/src/deep/x", b"x")
    await sftp.rename("/src", "/dst")
    assert await get(sftp, "/dst/deep/x") == b"x"
    assert not await sftp.exists("/src")


async def test_v3_rename_refuses_to_overwrite_posix_rename_overwrites(
    sftp: asyncssh.SFTPClient,
) -> None:
    """SFTP v3 rename onto an existing file fails; posix-rename replaces it."""
    await put(sftp, "/one", b"1")
    await put(sftp, "/two", b"2")
    with pytest.raises(asyncssh.SFTPFailure):
        await sftp.rename("/one", "/two")
    assert await get(sftp, "/two") == b"2"
    await sftp.posix_rename("/one", "/two")
    assert await get(sftp, "/two") == b"1"
    assert not await sftp.exists("/one")


async def test_missing_paths_answer_no_such_file(sftp: asyncssh.SFTPClient) -> None:
    """remove, rmdir, stat, open and rename of a missing path say "no such file"."""
    for call in (
        sftp.remove("/nope"),
        sftp.rmdir("/nope"),
        sftp.stat("/nope"),
        sftp.open("/nope", "rb"),
        sftp.rename("/nope", "/other"),
        sftp.listdir("/nope"),
    ):
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await call


async def test_rmdir_of_non_empty_directory_fails(sftp: asyncssh.SFTPClient) -> None:
    """rmdir of a directory with entries fails and removes nothing."""
    await sftp.mkdir("/full")
    await put(sftp, "/full/f", b"")
    with pytest.raises(asyncssh.SFTPFailure):
        await sftp.rmdir("/full")
    assert await sftp.exists("/full/f")


async def test_opening_a_directory_as_a_file_fails(sftp: asyncssh.SFTPClient) -> None:
    """Opening a directory for reading or writing fails with an error, not a crash."""
    await sftp.mkdir("/dir")
    with pytest.raises(asyncssh.SFTPFailure):
        await sftp.open("/dir", "rb")
    with pytest.raises(asyncssh.SFTPFailure):
        await sftp.open("/dir", "wb")
    with pytest.raises(asyncssh.SFTPFailure):
        await sftp.remove("/dir")


async def test_exclusive_create(sftp: asyncssh.SFTPClient) -> None:
    """Mode x creates a new file and refuses an existing one."""
    async with sftp.open("/new", "xb") as f:
        await f.write(b"first")
    with pytest.raises(asyncssh.SFTPFailure):
        await sftp.open("/new", "xb")
    assert await get(sftp, "/new") == b"first"


async def test_append_mode_writes_at_the_end(sftp: asyncssh.SFTPClient) -> None:
    """Mode a appends whatever offset the client sends."""
    await put(sftp, "/log", b"one\n")
    async with sftp.open("/log", "ab") as f:
        await f.write(b"two\n", 0)
    assert await get(sftp, "/log") == b"one\ntwo\n"


async def test_read_write_on_one_handle(sftp: asyncssh.SFTPClient) -> None:
    """r+ reads existing content and overwrites in place without truncating."""
    await put(sftp, "/rw", b"abcdef")
    async with sftp.open("/rw", "r+b") as f:
        assert cast(bytes, await f.read(3, 0)) == b"abc"
        await f.write(b"XY", 2)
        assert cast(bytes, await f.read(6, 0)) == b"abXYef"
    assert await get(sftp, "/rw") == b"abXYef"


async def test_out_of_order_writes_and_holes(sftp: asyncssh.SFTPClient) -> None:
    """Writes at any offset work; a gap reads back as zeros."""
    async with sftp.open("/sparse", "wb") as f:
        await f.write(b"tail", 3 << 20)
        await f.write(b"head", 0)
    data = await get(sftp, "/sparse")
    assert len(data) == (3 << 20) + 4
    assert data[:4] == b"head"
    assert data[-4:] == b"tail"
    assert data[4 : 3 << 20] == bytes((3 << 20) - 4)


async def test_truncate_flag_and_setstat_size(sftp: asyncssh.SFTPClient) -> None:
    """w truncates; setstat size shrinks and extends with zeros."""
    await put(sftp, "/t", b"0123456789")
    await put(sftp, "/t", b"ab")
    assert await get(sftp, "/t") == b"ab"
    await sftp.truncate("/t", 1)
    assert await get(sftp, "/t") == b"a"
    await sftp.truncate("/t", 3)
    assert await get(sftp, "/t") == b"a\x00\x00"


async def test_upload_is_visible_to_its_own_session_only_until_close(
    server: sftpd.Server, sftp: asyncssh.SFTPClient, memory_backend: sftpd.MemoryBackend
) -> None:
    """A file being written shows in its own session's stat and listing with its size so far;
    another session and the backend see it only once it is closed."""
    f = await sftp.open("/pending", "wb")
    await f.write(b"partial")
    assert (await sftp.stat("/pending")).size == 7
    assert (await sftp.lstat("/pending")).size == 7
    listed = {n.filename: n.attrs.size for n in await sftp.readdir("/")}
    assert listed["pending"] == 7
    async with connect(server.port, "other", "secret") as conn, conn.start_sftp_client() as other:
        assert not await other.exists("/pending")
        assert "pending" not in await other.listdir("/")
    with pytest.raises(sftpd.NoSuchFile):
        await memory_backend.stat("/pending", S)
    await f.close()
    async with connect(server.port, "other", "secret") as conn, conn.start_sftp_client() as other:
        assert (await other.stat("/pending")).size == 7
    assert await get(sftp, "/pending") == b"partial"


async def test_abandoned_upload_leaves_nothing(
    server: sftpd.Server, memory_backend: sftpd.MemoryBackend
) -> None:
    """A client that disconnects mid-upload leaves no file, and a replaced file is intact."""
    await memory_backend.write_file("/keep", b"original", S)
    async with connect(server.port) as conn:
        client = await conn.start_sftp_client()
        new = await client.open("/abandoned", "wb")
        await new.write(b"x" * 100_000)
        old = await client.open("/keep", "wb")
        await old.write(b"overwritten")
    for _ in range(100):
        if server.active_sessions == 0:
            break
        await asyncio.sleep(0.02)
    with pytest.raises(sftpd.NoSuchFile):
        await memory_backend.stat("/abandoned", S)
    assert await memory_backend.read_file("/keep", S) == b"original"


async def test_setstat_keeps_mtime_and_accepts_mode(sftp: asyncssh.SFTPClient) -> None:
    """utime sets mtime; chmod sets permission bits; both show in stat."""
    await put(sftp, "/m", b"m")
    await sftp.utime("/m", (1_600_000_000, 1_600_000_000))
    await sftp.chmod("/m", 0o600)
    attrs = await sftp.stat("/m")
    assert attrs.mtime == 1_600_000_000
    assert attrs.permissions is not None
    assert attrs.permissions & 0o7777 == 0o600


async def test_fstat_reports_size_of_upload_in_progress(sftp: asyncssh.SFTPClient) -> None:
    """fstat on a write handle reports the bytes written so far."""
    async with sftp.open("/grow", "wb") as f:
        await f.write(b"12345")
        assert (await f.stat()).size == 5


async def test_realpath_and_traversal_stay_inside(sftp: asyncssh.SFTPClient) -> None:
    """.., //, . and trailing slashes normalize; nothing climbs above the top."""
    assert await sftp.realpath(".") == "/"
    assert await sftp.realpath("/../../..") == "/"
    assert await sftp.realpath("a//b/./../c/") == "/a/c"
    await put(sftp, "/top.txt", b"t")
    assert await get(sftp, "/../../../top.txt") == b"t"
    assert await get(sftp, "../..//./top.txt") == b"t"


async def test_statvfs_extension(sftp: asyncssh.SFTPClient) -> None:
    """statvfs reports a capacity with free space."""
    info = await sftp.statvfs("/")
    assert info.blocks > 0
    assert 0 < info.bavail <= info.blocks


async def test_symlinks_and_hard_links(sftp: asyncssh.SFTPClient) -> None:
    """symlink, readlink and link work on the memory backend; a link is followed on open."""
    await put(sftp, "/f", b"content")
    await sftp.symlink("/f", "/l")
    assert await sftp.readlink("/l") == "/f"
    assert (await sftp.lstat("/l")).type == asyncssh.FILEXFER_TYPE_SYMLINK
    assert await get(sftp, "/l") == b"content"
    await sftp.link("/f", "/h")
    assert await get(sftp, "/h") == b"content"
    with pytest.raises(asyncssh.SFTPFailure, match="already exists"):
        await sftp.symlink("/f", "/h")


async def test_invalid_utf8_path_is_refused(sftp: asyncssh.SFTPClient) -> None:
    """A path that is not UTF-8 gets a clear failure."""
    with pytest.raises(asyncssh.SFTPError):
        await sftp.stat(b"/\xff\xfe")


async def test_top_directory_cannot_be_removed_or_renamed(sftp: asyncssh.SFTPClient) -> None:
    """rmdir / and rename / fail with permission denied."""
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        await sftp.rmdir("/")
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        await sftp.rename("/", "/x")


async def test_sftp_v6_client(server: sftpd.Server) -> None:
    """A client that negotiates SFTP v6 can write, read and list."""
    async with connect(server.port) as conn, conn.start_sftp_client(sftp_version=6) as client:
        await put(client, "/v6.txt", b"six")
        assert await get(client, "/v6.txt") == b"six"
        assert "v6.txt" in await client.listdir("/")
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await client.remove("/nope")


@pytest.mark.parametrize("kind", ["memory", "local"])
async def test_exclusive_create_has_one_winner(kind: str, tmp_path: Path) -> None:
    """Of two exclusive creates of one file, the second to close fails; the first stays."""
    backend = sftpd.MemoryBackend() if kind == "memory" else sftpd.LocalBackend(tmp_path)
    async with running_server(backend=backend) as server:
        assert await exclusive_race(server.port) == (b"first", "File already exists")
