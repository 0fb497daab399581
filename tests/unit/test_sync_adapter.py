"""Unit: sync backends reach the pool once per MiB; quick ones skip it for small calls."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import sftpd
from sftpd import _binding as backend_module
from sftpd._binding import BATCH, Offload, _AsyncReader, _AsyncWriter, bind_backend
from sftpd.backends.local import file_system_of
from sftpd.testing import make_session

KiB = 1 << 10


class FileWriter:
    """A sync writer into a bytearray that counts its calls."""

    concurrent_writes = True

    def __init__(self, fail_at: int | None = None) -> None:
        self.content = bytearray()
        self.calls = 0
        self.committed = False
        self.fail_at = fail_at

    def write(self, offset: int, data: bytes) -> None:
        self.calls += 1
        if self.fail_at is not None and offset <= self.fail_at < offset + len(data):
            raise OSError(28, "No space left on device")
        end = offset + len(data)
        if len(self.content) < end:
            self.content.extend(bytes(end - len(self.content)))
        self.content[offset:end] = data

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.content[offset : offset + length])

    def commit(self) -> None:
        self.committed = True

    def abort(self) -> None:
        self.content.clear()


class FileReader:
    """A sync reader over bytes that counts its calls."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    def read(self, offset: int, length: int) -> bytes:
        self.calls += 1
        return self.data[offset : offset + length]

    def close(self) -> None:
        pass


@pytest.fixture
def pool() -> Offload:
    """A small thread pool standing in for the backend's."""
    return Offload(ThreadPoolExecutor(4))


async def test_32k_writes_reach_a_sync_writer_a_mib_at_a_time(pool: Offload) -> None:
    """4 MiB of 32 KiB writes, 64 at once, arrive whole in 4 thread-pool calls."""
    inner = FileWriter()
    writer = _AsyncWriter(inner, pool)
    data = os.urandom(4 * BATCH)
    chunks = range(0, len(data), 32 * KiB)
    await asyncio.gather(*(writer.write(o, data[o : o + 32 * KiB]) for o in chunks))
    await writer.commit()
    assert inner.committed
    assert bytes(inner.content) == data
    assert inner.calls <= 5


async def test_a_rewrite_lands_after_what_it_replaces(pool: Offload) -> None:
    """Writing a range again, after writes elsewhere, leaves the later bytes."""
    inner = FileWriter()
    writer = _AsyncWriter(inner, pool)
    await writer.write(0, b"a" * 100)
    await writer.write(5000, b"b" * 100)  # not contiguous: the first batch goes out
    await writer.write(0, b"c" * 50)
    assert await writer.read(0, 100) == b"c" * 50 + b"a" * 50  # a read sees every write
    await writer.commit()
    assert bytes(inner.content[:100]) == b"c" * 50 + b"a" * 50
    assert bytes(inner.content[5000:5100]) == b"b" * 100


async def test_concurrent_writes_after_a_jump_ahead_all_land(pool: Offload) -> None:
    """A write far ahead, then a region written by many concurrent requests: every byte
    lands (a request that waited for the far batch replaced the batch another had just
    started, and its bytes were lost)."""
    inner = FileWriter()
    writer = _AsyncWriter(inner, pool)
    tail, head = os.urandom(200 * KiB), os.urandom(300 * KiB)
    await writer.write(20 * BATCH, tail)
    chunks = range(0, len(head), 16 * KiB)
    await asyncio.gather(*(writer.write(o, head[o : o + 16 * KiB]) for o in chunks))
    await writer.commit()
    assert bytes(inner.content[: len(head)]) == head
    assert bytes(inner.content[20 * BATCH :]) == tail


async def test_a_refused_batch_fails_the_commit(pool: Offload) -> None:
    """A write the storage refuses while batched fails the commit; nothing is committed."""
    inner = FileWriter(fail_at=10)
    writer = _AsyncWriter(inner, pool)
    await writer.write(0, b"x" * 100)  # only gathered: the storage has not seen it yet
    with pytest.raises(OSError, match="No space"):
        await writer.commit()
    assert not inner.committed


async def test_32k_reads_of_a_sync_reader_cost_one_call_per_mib(pool: Offload) -> None:
    """4 MiB read in 32 KiB requests, 64 outstanding, takes about 4 reads of the storage,
    and every read returns the right bytes, the last one short at the end of the file."""
    data = os.urandom(4 * BATCH - 100)
    inner = FileReader(data)
    reader = _AsyncReader(inner, pool)
    offsets = list(range(0, len(data) + 32 * KiB, 32 * KiB))
    pieces = await asyncio.gather(*(reader.read(o, 32 * KiB) for o in offsets))
    assert b"".join(pieces) == data
    assert pieces[-1] == b""
    assert inner.calls <= 6
    await reader.close()


class ThreadRecorder:
    """A sync writer that notes which thread each call ran on."""

    def __init__(self) -> None:
        self.threads: dict[str, str] = {}

    def write(self, offset: int, data: bytes) -> None:
        self.threads["write"] = threading.current_thread().name

    def commit(self) -> None:
        self.threads["commit"] = threading.current_thread().name

    def abort(self) -> None:
        self.threads["abort"] = threading.current_thread().name


async def test_a_quick_backend_commits_small_files_inline_and_bulk_in_the_pool() -> None:
    """With inline calls a small file's last write and commit run on the loop's thread; a
    1 MiB batch and the commit of a large upload go to the pool; without inline calls, or
    when the writer's commit is slow (replacing a large file), everything does."""
    loop_thread = threading.current_thread().name
    quick = Offload(ThreadPoolExecutor(2, thread_name_prefix="pool"), inline=True)
    small = ThreadRecorder()
    writer = _AsyncWriter(small, quick)
    await writer.write(0, b"x" * 4096)
    await writer.commit()
    assert small.threads == {"write": loop_thread, "commit": loop_thread}
    bulk = ThreadRecorder()
    writer = _AsyncWriter(bulk, quick)
    await writer.write(0, b"x" * (BATCH + 10))
    await writer.commit()
    assert bulk.threads["write"].startswith("pool")
    assert bulk.threads["commit"].startswith("pool")
    slow = ThreadRecorder()
    slow.quick_commit = False  # type: ignore[attr-defined]
    writer = _AsyncWriter(slow, quick)
    await writer.write(0, b"x" * 4096)
    await writer.commit()
    assert slow.threads["commit"].startswith("pool")
    pooled = ThreadRecorder()
    writer = _AsyncWriter(pooled, Offload(ThreadPoolExecutor(2, thread_name_prefix="pool")))
    await writer.write(0, b"x" * 4096)
    await writer.commit()
    assert pooled.threads["commit"].startswith("pool")


async def test_a_slow_inline_call_sends_calls_to_the_pool(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An inline call slower than SLOW_CALL is logged and the calls after it run in the
    pool until POOL_AFTER_SLOW has passed; then they are inline again."""
    monkeypatch.setattr(backend_module, "SLOW_CALL", 0.01)
    monkeypatch.setattr(backend_module, "POOL_AFTER_SLOW", 0.2)
    offload = Offload(ThreadPoolExecutor(2, thread_name_prefix="pool"), inline=True)

    def where() -> str:
        return threading.current_thread().name

    loop_thread = where()
    assert await offload.call(where) == loop_thread
    await offload.call(time.sleep, 0.03)
    assert "thread pool for the next" in caplog.text
    assert (await offload.call(where)).startswith("pool")
    await asyncio.sleep(0.25)
    assert await offload.call(where) == loop_thread


def test_local_backend_goes_inline_only_where_calls_are_quick(tmp_path: Path) -> None:
    """auto: inline on tmpfs or on a disk file system without fsync, threads where each
    commit waits for the disk; an unknown io value is a start-up error."""
    kind = file_system_of(tmp_path)
    backend = sftpd.LocalBackend(tmp_path)
    quick_fs = kind in {"tmpfs", "ramfs"}
    assert backend.inline_calls is quick_fs
    assert sftpd.LocalBackend(tmp_path, fsync=False).inline_calls is (
        quick_fs or kind in {"ext4", "xfs", "btrfs", "overlay", "ext3", "ext2", "f2fs", "zfs"}
    )
    assert sftpd.LocalBackend(tmp_path, io="inline").inline_calls is True
    assert sftpd.LocalBackend(tmp_path, io="threads").inline_calls is False
    assert bind_backend(sftpd.LocalBackend(tmp_path, io="threads")) is not None
    with pytest.raises(sftpd.ConfigError, match="auto, inline or threads"):
        sftpd.LocalBackend(tmp_path, io="fast")


def test_file_system_type_is_the_longest_mount_holding_the_path(tmp_path: Path) -> None:
    """Mount points are matched by whole components, the deepest one wins, and escaped
    spaces in mount points are understood."""
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "30 22 0:5 / /srv/data rw - nfs4 server:/x rw\n"
        "31 22 0:6 / /srv/data\\040room rw shared:1 - tmpfs tmpfs rw\n"
    )
    assert file_system_of(Path("/srv/data/a"), str(info)) == "nfs4"
    assert file_system_of(Path("/srv/database"), str(info)) == "ext4"
    assert file_system_of(Path("/srv/data room/x"), str(info)) == "tmpfs"
    assert file_system_of(Path("/x"), str(tmp_path / "missing")) == ""


class PieceWriter(FileWriter):
    """A sync writer that takes consecutive pieces as they came."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[int]] = []

    def write_many(self, offset: int, chunks: list[bytes]) -> None:
        self.batches.append([len(c) for c in chunks])
        self.write(offset, b"".join(chunks))


async def test_a_writer_with_write_many_gets_the_pieces_unjoined(pool: Offload) -> None:
    """2 MiB of 32 KiB writes reach write_many as two batches of 32 pieces, bytes intact."""
    inner = PieceWriter()
    writer = _AsyncWriter(inner, pool)
    data = os.urandom(2 * BATCH)
    for offset in range(0, len(data), 32 * KiB):
        await writer.write(offset, data[offset : offset + 32 * KiB])
    await writer.commit()
    assert inner.batches == [[32 * KiB] * 32, [32 * KiB] * 32]
    assert bytes(inner.content) == data


class ThreadNoting:
    """Just enough of a sync backend to see which thread each call runs on."""

    inline_calls = True
    pool_calls = ("remove_file",)

    def __init__(self) -> None:
        self.threads: dict[str, str] = {}

    def _note(self, name: str) -> None:
        self.threads[name] = threading.current_thread().name

    def stat(self, path: str, session: object) -> None:
        self._note("stat")

    def list_dir(self, path: str, session: object) -> list[object]:
        return []

    def make_dir(self, path: str, session: object) -> None:
        self._note("make_dir")

    def remove_dir(self, path: str, session: object) -> None:
        self._note("remove_dir")

    def remove_file(self, path: str, session: object) -> None:
        self._note("remove_file")

    def rename(self, src: str, dst: str, session: object) -> None:
        self._note("rename")

    def read_file(self, path: str, session: object) -> bytes:
        self._note("read_file")
        return b""

    def write_file(self, path: str, data: bytes, session: object) -> None:
        self._note("write_file")


async def test_pool_calls_and_whole_file_calls_never_run_inline() -> None:
    """An inline backend's small calls run on the loop's thread, while the calls it names in
    pool_calls and the whole-file read_file/write_file run in the pool."""
    backend = ThreadNoting()
    bound = bind_backend(backend)
    session = make_session()
    await bound.stat("/a", session)
    await bound.make_dir("/d", session)
    await bound.remove_file("/a", session)
    await bound.read_file("/a", session)
    await bound.write_file("/a", b"", session)
    loop_thread = threading.current_thread().name
    assert backend.threads["stat"] == loop_thread
    assert backend.threads["make_dir"] == loop_thread
    for name in ("remove_file", "read_file", "write_file"):
        assert backend.threads[name].startswith("sftpd-backend"), name


def test_local_commit_is_quick_unless_it_replaces_a_large_file(tmp_path: Path) -> None:
    """A local upload of a new or small file may commit inline; one replacing a file over
    1 MiB may not (the rename frees the old file's pages), and it still stores its bytes."""
    backend = sftpd.LocalBackend(tmp_path, io="inline")
    session = sftpd.Session(username="dev", peer=sftpd.Peer("127.0.0.1", 1))
    (tmp_path / "big.bin").write_bytes(b"b" * (2 << 20))
    (tmp_path / "small.bin").write_bytes(b"s" * 100)
    fresh = backend.open_writer("/new.bin", session, keep_existing=False)
    small = backend.open_writer("/small.bin", session, keep_existing=False)
    big = backend.open_writer("/big.bin", session, keep_existing=False)
    assert (fresh.quick_commit, small.quick_commit, big.quick_commit) == (True, True, False)
    big.write_many(0, [b"1" * 10, b"2" * 5])
    big.commit()
    fresh.abort()
    small.abort()
    assert (tmp_path / "big.bin").read_bytes() == b"1" * 10 + b"2" * 5
