"""The storage contract: what a backend must and may implement.

A backend is one object shared by every session. Each method takes a normalized absolute
POSIX path (see :mod:`sftpd.paths`; already scoped into the session's root) and the
:class:`~sftpd.Session`. Methods may be ``async def`` or plain ``def``; plain ones run in a
thread pool. That choice is detected once, when the server starts.

Required (:class:`Backend`)::

    stat(path, session) -> FileAttrs
    list_dir(path, session) -> (async) iterator of DirEntry   # without "." and ".."
    make_dir(path, session)
    remove_dir(path, session)
    remove_file(path, session)
    rename(src, dst, session, *, overwrite)
    read_file(path, session) -> bytes
    write_file(path, data, session)

Optional, each its own small protocol, detected once at start-up:

- :class:`RangeReads` ``read_range(path, offset, length, session) -> bytes``: reads
  without loading whole files; ``b""`` at end of file.
- :class:`Readers` ``open_reader(path, session) -> Reader``: a reader per open file, for
  read-ahead or pinned versions; preferred over ``read_range``.
- :class:`StreamingWrites` ``open_writer(path, session, *, keep_existing) -> Writer``:
  uploads that stream to storage; the :class:`Writer` makes the file visible only at
  ``commit()`` and leaves nothing behind on ``abort()``. If ``open_writer`` also takes
  ``exclusive``, exclusive creates (``O_EXCL``) pass ``exclusive=True``: ``commit()``
  must then raise :class:`~sftpd.errors.FileAlreadyExists` if the file appeared since
  the open, instead of replacing it (without it, only the check at open is made).
  A writer may also offer ``truncate(size)`` (resizing an open upload),
  ``copy_from(path, offset, length, target_offset)`` (copy-data on the storage side), a
  ``permissions`` attribute (``None``, or the mode a new file gets at commit) and
  ``concurrent_writes = True`` when non-overlapping writes may run at the same time.
- :class:`SetAttrs` ``set_attrs(path, changes, session)``: mtime, permissions, size.
- :class:`Symlinks` ``read_link(path, session) -> str`` and
  ``make_symlink(target, link, session)``: symbolic links, stored as written; sftpd
  follows them itself, inside the session's root (backends never follow links).
- :class:`HardLinks` ``make_link(existing, new, session)``: ``hardlink@openssh.com``.
- :class:`DiskUsage` ``disk_usage(path, session) -> SpaceInfo``: for ``df``/statvfs.
- :class:`SessionHooks` ``session_opened(session)`` / ``session_closed(session)``.
- :class:`Startup` ``startup()``: connect and check the configuration when the server
  starts, so a misconfiguration stops the start with a message, not the first upload.
- :class:`Shutdown` ``shutdown()``: release connections when the server has stopped (or
  its start failed after ``startup()`` began).

Errors: raise the exceptions of :mod:`sftpd.errors` (or the builtin ones they subclass,
``FileNotFoundError``, ``PermissionError``, ``FileExistsError``...). Each method's
docstring below says which exception means what to the client.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import stat as stat_module
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from . import paths
from ._memory import UNLIMITED, UploadMemory
from .errors import ConfigError

if TYPE_CHECKING:
    from ._session import Session

__all__ = [
    "AttrChanges",
    "Backend",
    "Digests",
    "DirEntry",
    "DiskUsage",
    "FileAttrs",
    "FileType",
    "HardLinks",
    "RangeReads",
    "Reader",
    "Readers",
    "SessionHooks",
    "SetAttrs",
    "Shutdown",
    "SpaceInfo",
    "Startup",
    "StreamingWrites",
    "Symlinks",
    "UploadMemory",
    "Writer",
    "directory_info",
    "file_info",
    "is_root_path",
    "normalize_path",
    "supports",
]


class FileType(enum.Enum):
    """What a path names."""

    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileAttrs:
    """Metadata of one path, as a backend reports it.

    Attributes:
        type: File, directory or symlink.
        size: Size in bytes (0 for directories).
        mtime: Modification time, seconds since the epoch.
        atime: Access time; defaults to ``mtime``.
        permissions: Permission bits without the type bits (``0o644``).
        uid: Owner id, if the storage has one.
        gid: Group id, if the storage has one.
    """

    type: FileType
    size: int = 0
    mtime: float = 0.0
    atime: float | None = None
    permissions: int = 0o644
    uid: int | None = None
    gid: int | None = None

    @property
    def is_dir(self) -> bool:
        """True for directories."""
        return self.type is FileType.DIRECTORY

    @property
    def is_file(self) -> bool:
        """True for regular files."""
        return self.type is FileType.FILE

    @property
    def mode(self) -> int:
        """``st_mode``: type bits plus permission bits."""
        type_bits = {
            FileType.FILE: stat_module.S_IFREG,
            FileType.DIRECTORY: stat_module.S_IFDIR,
            FileType.SYMLINK: stat_module.S_IFLNK,
        }[self.type]
        return type_bits | (self.permissions & 0o7777)


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One entry of a directory listing: its name (no slashes) and its attributes."""

    name: str
    attrs: FileAttrs


@dataclass(frozen=True, slots=True, kw_only=True)
class AttrChanges:
    """What a client asked ``setstat`` to change; ``None`` means leave as is."""

    size: int | None = None
    permissions: int | None = None
    atime: float | None = None
    mtime: float | None = None

    def is_empty(self) -> bool:
        """True when nothing is to change."""
        return self.size is None and self.permissions is None and self.mtime is None


@dataclass(frozen=True, slots=True, kw_only=True)
class SpaceInfo:
    """Capacity of the storage behind a path, in bytes (for ``statvfs``)."""

    total: int
    free: int
    block_size: int = 4096
    max_name_length: int = 255


def file_info(size: int, mtime: float | None = None, *, permissions: int = 0o644) -> FileAttrs:
    """Build the attributes of a regular file (``mtime`` defaults to now)."""
    return FileAttrs(
        type=FileType.FILE,
        size=size,
        mtime=time.time() if mtime is None else mtime,
        permissions=permissions,
    )


def directory_info(mtime: float | None = None, *, permissions: int = 0o755) -> FileAttrs:
    """Build the attributes of a directory (``mtime`` defaults to now)."""
    return FileAttrs(
        type=FileType.DIRECTORY,
        mtime=time.time() if mtime is None else mtime,
        permissions=permissions,
    )


def normalize_path(path: str) -> str:
    """Return a path as an object key: normalized, without the leading slash."""
    return paths.to_key(path)


def is_root_path(path: str) -> bool:
    """Tell whether a path names the top directory (``/``, ``""``, ``.``...)."""
    return paths.is_root(path)


# --------------------------------------------------------------------------- contracts


@runtime_checkable
class Backend(Protocol):
    """The operations every backend implements (``async def`` or plain ``def``)."""

    async def stat(self, path: str, session: Session) -> FileAttrs:
        """Return the attributes of ``path``.

        Raises:
            NoSuchFile: nothing exists there (the client sees "no such file").
        """

    def list_dir(self, path: str, session: Session) -> AsyncIterator[DirEntry]:
        """Yield the entries of a directory, without ``.`` and ``..``.

        Raises:
            NoSuchFile: the directory does not exist.
            NotADirectory: ``path`` is a file.
        """

    async def make_dir(self, path: str, session: Session) -> None:
        """Create one directory; its parent exists.

        Raises:
            FileAlreadyExists: something exists there already.
            NoSuchFile: the parent does not exist.
        """

    async def remove_dir(self, path: str, session: Session) -> None:
        """Remove an empty directory.

        Raises:
            NoSuchFile: it does not exist.
            DirectoryNotEmpty: it has entries.
            NotADirectory: it is a file.
        """

    async def remove_file(self, path: str, session: Session) -> None:
        """Remove a file.

        Raises:
            NoSuchFile: it does not exist.
            IsADirectory: it is a directory.
        """

    async def rename(self, src: str, dst: str, session: Session, *, overwrite: bool) -> None:
        """Move a file or a whole directory (its children move with it).

        Raises:
            NoSuchFile: ``src`` does not exist, or ``dst``'s parent does not.
            FileAlreadyExists: ``dst`` exists and ``overwrite`` is false.
        """

    async def read_file(self, path: str, session: Session) -> bytes:
        """Return a whole file.

        Raises:
            NoSuchFile: it does not exist.
            IsADirectory: it is a directory.
        """

    async def write_file(self, path: str, data: bytes, session: Session) -> None:
        """Create or replace a whole file, atomically.

        Raises:
            NoSuchFile: the parent directory does not exist.
            IsADirectory: ``path`` is a directory.
        """


@runtime_checkable
class RangeReads(Protocol):
    """Optional: read part of a file without loading all of it."""

    async def read_range(self, path: str, offset: int, length: int, session: Session) -> bytes:
        """Return up to ``length`` bytes from ``offset``; ``b""`` at or past the end.

        Raises:
            NoSuchFile: the file does not exist (any more).
        """


@runtime_checkable
class Reader(Protocol):
    """One open download, for backends that keep state per handle (read-ahead)."""

    async def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``; ``b""`` at or past the end."""

    async def close(self) -> None:
        """Release what the reader holds."""


@runtime_checkable
class Readers(Protocol):
    """Optional: a stateful reader per open file (preferred over ``read_range``)."""

    async def open_reader(self, path: str, session: Session) -> Reader:
        """Open ``path`` for reading.

        Raises:
            NoSuchFile: it does not exist.
        """


@runtime_checkable
class Writer(Protocol):
    """One upload in progress. Nothing is visible until :meth:`commit`."""

    async def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``; offsets may come in any order and leave holes."""

    async def commit(self) -> None:
        """Make the file visible with everything written so far.

        Raises:
            StorageError: the upload could not be completed; the client's close fails.
        """

    async def abort(self) -> None:
        """Drop the upload; nothing of it may remain. Must not raise for a lost upload."""


@runtime_checkable
class ReadableWriter(Writer, Protocol):
    """A writer that can also read back what the file holds (for read+write opens)."""

    async def read(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes of the file as written so far."""


@runtime_checkable
class StreamingWrites(Protocol):
    """Optional: uploads that stream to storage instead of being buffered."""

    async def open_writer(self, path: str, session: Session, *, keep_existing: bool) -> Writer:
        """Start an upload to ``path``.

        Args:
            path: The file to create or replace at commit.
            session: Who uploads.
            keep_existing: Start from the file's current content (resume, append, or an
                open without truncation) instead of from empty.

        Raises:
            NoSuchFile: the parent directory does not exist.
            IsADirectory: ``path`` is a directory.
        """


@runtime_checkable
class SetAttrs(Protocol):
    """Optional: change mtime, permissions or size (``setstat``)."""

    async def set_attrs(self, path: str, changes: AttrChanges, session: Session) -> None:
        """Apply ``changes`` to ``path``.

        Raises:
            NoSuchFile: it does not exist.
            Unsupported: the storage cannot make this change.
        """


@runtime_checkable
class Symlinks(Protocol):
    """Optional: symbolic links. sftpd resolves them, in the client's view of the tree."""

    async def read_link(self, path: str, session: Session) -> str:
        """Return the target of the link at ``path`` exactly as it was written.

        Raises:
            NoSuchFile: nothing exists there.
            InvalidParameter: ``path`` is not a symbolic link.
        """

    async def make_symlink(self, target: str, link: str, session: Session) -> None:
        """Create a link at ``link`` whose content is ``target`` (not checked, not scoped).

        Raises:
            FileAlreadyExists: something exists at ``link``.
            NoSuchFile: the parent of ``link`` does not exist.
        """


@runtime_checkable
class HardLinks(Protocol):
    """Optional: a second name for a file (``hardlink@openssh.com``, OpenSSH's ``ln``)."""

    async def make_link(self, existing: str, new: str, session: Session) -> None:
        """Make ``new`` name the same file as ``existing``.

        Raises:
            NoSuchFile: ``existing`` does not exist, or ``new``'s parent does not.
            FileAlreadyExists: something exists at ``new``.
        """


@runtime_checkable
class DiskUsage(Protocol):
    """Optional: report capacity (``statvfs``, ``df`` in OpenSSH's client)."""

    async def disk_usage(self, path: str, session: Session) -> SpaceInfo:
        """Return the capacity of the storage that holds ``path``."""


@runtime_checkable
class Digests(Protocol):
    """Optional: keep a file's digests with it (computed as it was uploaded).

    Digests are hex strings by algorithm name (``{"md5": "...", "sha256": "..."}``).
    ``check-file`` and rclone's hash commands answer from them with no read of the file.
    """

    async def store_digests(self, path: str, digests: Mapping[str, str], session: Session) -> None:
        """Keep ``digests`` for the file at ``path`` (empty: forget any kept), until its
        content changes."""

    async def read_digests(self, path: str, session: Session) -> Mapping[str, str] | None:
        """The digests kept for ``path`` if they still describe its content, else None."""


@runtime_checkable
class SessionHooks(Protocol):
    """Optional: hear about sessions starting and ending."""

    async def session_opened(self, session: Session) -> None:
        """Called once after a session authenticated, before its first request."""

    async def session_closed(self, session: Session) -> None:
        """Called once when a session ends, after its open files were closed."""


@runtime_checkable
class Startup(Protocol):
    """Optional: get ready when the server starts."""

    async def startup(self) -> None:
        """Called once by ``Server.start`` before it listens (again on each start).

        Connect, warm caches, check that the storage is reachable. Raise
        :class:`~sftpd.errors.ConfigError` with a message that says what to fix; any other
        exception also stops the start, wrapped in a ``ConfigError``.
        """


@runtime_checkable
class Shutdown(Protocol):
    """Optional: release resources when the server stops."""

    async def shutdown(self) -> None:
        """Called once by a server's stop, after its sessions and background work ended.

        Also called when a start fails after ``startup()`` began (``startup()`` itself
        failed, or the port was taken), so release whatever was opened so far. A later
        ``Server.start`` calls ``startup()`` again. Failures are logged.
        """


_REQUIRED = (
    "stat",
    "list_dir",
    "make_dir",
    "remove_dir",
    "remove_file",
    "rename",
    "read_file",
    "write_file",
)

_OPTIONAL: dict[str, tuple[str, ...]] = {
    "range_reads": ("read_range",),
    "readers": ("open_reader",),
    "streaming_writes": ("open_writer",),
    "set_attrs": ("set_attrs",),
    "disk_usage": ("disk_usage",),
    "digests": ("read_digests", "store_digests"),
    "symlinks": ("read_link", "make_symlink"),
    "hard_links": ("make_link",),
    "session_hooks": ("session_opened", "session_closed"),
    "startup": ("startup",),
    "shutdown": ("shutdown",),
}


def supports(backend: object, capability: str) -> bool:
    """Tell whether ``backend`` implements an optional capability.

    Args:
        backend: Any object.
        capability: One of ``range_reads``, ``readers``, ``streaming_writes``, ``set_attrs``,
            ``disk_usage``, ``symlinks``, ``hard_links``, ``session_hooks``, ``startup``,
            ``shutdown``.
    """
    try:
        names = _OPTIONAL[capability]
    except KeyError:
        known = ", ".join(sorted(_OPTIONAL))
        raise ValueError(f"unknown capability {capability!r}; known: {known}") from None
    return all(callable(getattr(backend, name, None)) for name in names)


# ------------------------------------------------------------- adapting sync backends


@dataclass(slots=True)
class BoundBackend:
    """A backend with every method made async, and its capabilities, decided once.

    The server builds one at start-up; the request layer only talks to this.
    """

    backend: object
    name: str
    kind: str
    stat: Callable[..., Any]
    list_dir: Callable[..., AsyncIterator[DirEntry]]
    make_dir: Callable[..., Any]
    remove_dir: Callable[..., Any]
    remove_file: Callable[..., Any]
    rename: Callable[..., Any]
    read_file: Callable[..., Any]
    write_file: Callable[..., Any]
    read_range: Callable[..., Any] | None = None
    open_reader: Callable[..., Any] | None = None
    open_writer: Callable[..., Any] | None = None
    set_attrs: Callable[..., Any] | None = None
    disk_usage: Callable[..., Any] | None = None
    read_digests: Callable[..., Any] | None = None
    store_digests: Callable[..., Any] | None = None
    read_link: Callable[..., Any] | None = None
    make_symlink: Callable[..., Any] | None = None
    make_link: Callable[..., Any] | None = None
    session_opened: Callable[..., Any] | None = None
    session_closed: Callable[..., Any] | None = None
    startup: Callable[..., Any] | None = None
    shutdown: Callable[..., Any] | None = None
    capabilities: frozenset[str] = field(default_factory=frozenset)


_log = logging.getLogger("sftpd")


class Offload:
    """Where a sync backend's calls run: its thread pool, or the event loop itself.

    A sync backend runs in a thread pool, so a slow disk or a network mount never stalls
    the other sessions. A thread hop costs 50 to 150 microseconds, far more than a stat or
    a rename on a local file system, and a small upload makes three of them. A backend
    whose calls are quick says so with ``inline_calls = True``; its small calls (metadata,
    opens, commits of small files, listing batches) then run on the event loop, and only
    bulk reads and writes go to the pool. A guard keeps that safe: an inline call that
    takes longer than :data:`SLOW_CALL` seconds sends every call to the pool for the next
    :data:`POOL_AFTER_SLOW` seconds, and says so in the log.
    """

    def __init__(self, executor: ThreadPoolExecutor | None, *, inline: bool = False) -> None:
        self.executor = executor
        self.inline = inline
        self._pool_until = 0.0

    def pool(self, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``func`` in the pool."""
        return asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run a small call: inline if the backend's calls are quick and lately were."""
        if not self.inline or time.monotonic() < self._pool_until:
            return await self.pool(func, *args)
        start = time.perf_counter()
        try:
            return func(*args)
        finally:
            took = time.perf_counter() - start
            if took > SLOW_CALL:
                self._pool_until = time.monotonic() + POOL_AFTER_SLOW
                _log.warning(
                    "a backend call (%s) took %.1f ms on the event loop; backend calls run "
                    "in the thread pool for the next %.0f s",
                    getattr(func, "__qualname__", func), took * 1000, POOL_AFTER_SLOW,
                )  # fmt: skip


#: Calls that move whole files: never inline (a backend may add its own in ``pool_calls``).
_BULK_CALLS = ("read_file", "write_file", "read_range")

#: Seconds an inline backend call may take before the guard sends calls to the pool.
SLOW_CALL = 0.005
#: Seconds the calls of a backend stay in the pool after one inline call was slow.
POOL_AFTER_SLOW = 30.0


def asyncify(
    func: Callable[..., Any], executor: ThreadPoolExecutor | Offload | None = None
) -> Callable[..., Any]:
    """Return ``func`` if it is ``async def``, else a coroutine running it in ``executor``.

    ``None`` means the event loop's default executor; an :class:`Offload` may run the call
    inline. Decided once, here, not per call.
    """
    if inspect.iscoroutinefunction(func):
        return func
    offload = executor if isinstance(executor, Offload) else Offload(executor)

    @functools.wraps(func)
    async def call_in_thread(*args: Any, **kwargs: Any) -> Any:
        result = await offload.call(functools.partial(func, *args, **kwargs))
        if inspect.isawaitable(result):  # a plain def that returns a coroutine
            return await result
        return result

    return call_in_thread


def _asyncify_iter(
    func: Callable[..., Any], offload: Offload, batch: int = 256
) -> Callable[..., AsyncIterator[DirEntry]]:
    if inspect.isasyncgenfunction(func):
        return func

    async def iterate(*args: Any, **kwargs: Any) -> AsyncIterator[DirEntry]:
        if inspect.iscoroutinefunction(func):
            result = await func(*args, **kwargs)
        else:
            result = await offload.call(functools.partial(func, *args, **kwargs))
        if hasattr(result, "__aiter__"):
            async for entry in result:
                yield entry
            return
        iterator: Iterator[DirEntry] = iter(result)

        def next_batch() -> list[DirEntry]:
            out: list[DirEntry] = []
            for entry in iterator:
                out.append(entry)
                if len(out) >= batch:
                    break
            return out

        while True:
            chunk = await offload.call(next_batch)
            for entry in chunk:
                yield entry
            if len(chunk) < batch:
                return

    return iterate


#: Bytes a sync reader fetches per thread-pool call, and a sync writer gathers before one.
BATCH = 1 << 20
#: The largest upload whose commit may run inline (see :class:`Offload`).
SMALL_WRITE = 64 << 10


class _AsyncWriter:
    """A sync writer whose methods run in the backend's thread pool.

    Contiguous writes are gathered and handed over :data:`BATCH` bytes at a time, so a
    client writing 32 KiB requests costs one thread-pool call per MiB, not per request.
    A writer with ``write_many(offset, chunks)`` gets the client's pieces as they came
    (the local backend writes them with one ``pwritev``); others get them joined. A write
    the storage refuses fails the next write or the commit, so the client's close fails
    and nothing is stored. Made for every upload: nothing is wrapped up front.

    The commit of a small upload (at most :data:`SMALL_WRITE` bytes in all) may run inline
    (see :class:`Offload`), unless the writer says its commit is slow (``quick_commit``
    false: the local backend's, when it replaces a large file whose pages it frees).
    """

    def __init__(self, writer: Any, offload: Offload, memory: UploadMemory = UNLIMITED) -> None:
        self._writer = writer
        self._offload = offload
        self._memory = memory
        self._held = 0  # bytes of the gathered batch, taken from the server's upload memory
        self._chunks: list[bytes] = []
        self._pending_size = 0
        self._pending_at = 0
        self._written = 0
        self._write_many = getattr(writer, "write_many", None)
        self._flushing = asyncio.Lock()  # flushes in order: a rewrite never overtakes
        self.concurrent_writes = bool(getattr(writer, "concurrent_writes", False))
        if hasattr(writer, "permissions"):
            self.permissions: int | None = writer.permissions
        if hasattr(writer, "digests"):  # the writer keeps them itself (given before commit)
            self.digests: Mapping[str, str] | None = writer.digests
        for optional in ("read", "truncate", "copy_from"):
            if not callable(getattr(writer, optional, None)):
                setattr(self, optional, None)

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        return self._offload.pool(method, *args)

    def _take(self) -> tuple[int, list[bytes], int]:
        """The gathered batch, handed over: its offset, pieces and upload memory held."""
        chunks, self._chunks, self._pending_size = self._chunks, [], 0
        held, self._held = self._held, 0
        return self._pending_at, chunks, held

    def _store(self, offset: int, chunks: list[bytes]) -> None:
        """Write a batch (in a pool thread)."""
        if self._write_many is not None:
            self._write_many(offset, chunks)
        else:
            self._writer.write(offset, chunks[0] if len(chunks) == 1 else b"".join(chunks))

    async def _flush(self) -> None:
        if not self._chunks:
            return
        async with self._flushing:
            if self._chunks:
                offset, chunks, held = self._take()
                try:
                    await self._call(self._store, offset, chunks)
                finally:
                    self._memory.give(held)

    async def write(self, offset: int, data: bytes) -> None:
        self._written += len(data)
        if not self._memory.try_take(len(data)):
            # The server's upload memory is spent: write this out now rather than keep it.
            await self._flush()
            async with self._flushing:
                await self._call(self._store, offset, [data])
            return
        while True:
            if self._chunks and offset == self._pending_at + self._pending_size:
                self._chunks.append(data)
                self._pending_size += len(data)
                break
            if not self._chunks:
                self._chunks = [data]
                self._pending_size = len(data)
                self._pending_at = offset
                break
            # Another batch is pending: write it out first. Other writes of this upload
            # may run while this one waits, so look again after: a batch one of them
            # started must be joined or written, never replaced (found by a test of
            # out-of-order concurrent writes, which lost one).
            await self._flush()
        self._held += len(data)
        if self._pending_size >= BATCH:
            await self._flush()

    async def commit(self) -> None:
        async with self._flushing:  # the last batch and the commit in one pool call
            if hasattr(self, "permissions"):
                self._writer.permissions = self.permissions
            if hasattr(self, "digests"):
                self._writer.digests = self.digests
            offset, chunks, held = self._take()
            quick = getattr(self._writer, "quick_commit", True)
            try:
                if self._written <= SMALL_WRITE and quick:  # a small file: a metadata call
                    await self._offload.call(self._write_and_commit, offset, chunks)
                else:
                    await self._call(self._write_and_commit, offset, chunks)
            finally:
                self._memory.give(held)

    def _write_and_commit(self, offset: int, chunks: list[bytes]) -> None:
        if chunks:
            self._store(offset, chunks)
        self._writer.commit()

    async def abort(self) -> None:
        self._memory.give(self._take()[2])
        await self._offload.call(self._writer.abort)

    async def read(self, offset: int, length: int) -> bytes:
        await self._flush()
        data: bytes = await self._call(self._writer.read, offset, length)
        return data

    async def truncate(self, size: int) -> None:
        await self._flush()
        await self._call(self._writer.truncate, size)

    async def copy_from(self, path: str, offset: int, length: int, target_offset: int) -> None:
        await self._flush()
        await self._call(self._writer.copy_from, path, offset, length, target_offset)


class _AsyncReader:
    """A sync reader whose reads run in the backend's thread pool, :data:`BATCH` at a time.

    A read fetches the window of :data:`BATCH` bytes from its offset; the reads after it
    (a client keeps many outstanding) are served from that window, so 32 KiB requests cost
    one thread-pool call per MiB. The last two windows are kept for reads that arrive
    a little out of order.
    """

    def __init__(self, reader: Any, offload: Offload) -> None:
        self._reader = reader
        self._offload = offload
        self._windows: list[tuple[int, asyncio.Future[bytes]]] = []

    async def read(self, offset: int, length: int) -> bytes:
        for start, window in self._windows:
            if start <= offset and offset + length <= start + BATCH:
                data = await asyncio.shield(window)  # others may be waiting for it too
                if offset + length <= start + len(data) or len(data) < BATCH:
                    return data[offset - start : offset - start + length]
        if length > BATCH:
            result: bytes = await self._offload.pool(self._reader.read, offset, length)
            return result
        window = self._offload.pool(self._reader.read, offset, BATCH)
        self._windows = [*self._windows[-1:], (offset, window)]
        data = await asyncio.shield(window)
        return data[:length]

    async def close(self) -> None:
        self._windows = []
        await self._offload.call(self._reader.close)


def _adapting_readers(open_reader: Callable[..., Any], offload: Offload) -> Callable[..., Any]:
    async def open_adapted(*args: Any, **kwargs: Any) -> Any:
        reader = await open_reader(*args, **kwargs)
        if inspect.iscoroutinefunction(reader.read):
            return reader
        return _AsyncReader(reader, offload)

    return open_adapted


def _adapting_writers(open_writer: Callable[..., Any], offload: Offload) -> Callable[..., Any]:
    async def open_adapted(*args: Any, **kwargs: Any) -> Any:
        writer = await open_writer(*args, **kwargs)
        if inspect.iscoroutinefunction(writer.write):
            return writer
        session = kwargs.get("session", args[1] if len(args) > 1 else None)
        return _AsyncWriter(writer, offload, getattr(session, "upload_memory", UNLIMITED))

    return open_adapted


def check_backend(backend: object) -> None:
    """Check that ``backend`` has every required method.

    Raises:
        ConfigError: a required method is missing; the message lists them.
    """
    missing = [name for name in _REQUIRED if not callable(getattr(backend, name, None))]
    if missing:
        raise ConfigError(
            f"backend {type(backend).__name__} does not implement the required method(s) "
            f"{', '.join(missing)}; see sftpd.backend.Backend"
        )


def bind_backend(backend: object, *, max_threads: int = 16) -> BoundBackend:
    """Check a backend against the contract and adapt it, once, for the request layer.

    Raises:
        ConfigError: a required method is missing; the message lists them.
    """
    check_backend(backend)
    executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="sftpd-backend")
    offload = Offload(executor, inline=getattr(backend, "inline_calls", False) is True)
    pooled = Offload(executor)
    in_pool = {*_BULK_CALLS, *getattr(backend, "pool_calls", ())}
    capabilities = {cap for cap in _OPTIONAL if supports(backend, cap)}
    names = [*_REQUIRED, *(name for cap in capabilities for name in _OPTIONAL[cap])]
    methods: dict[str, Any] = {}
    for name in names:
        func = getattr(backend, name)
        where = pooled if name in in_pool else offload
        methods[name] = _asyncify_iter(func, where) if name == "list_dir" else asyncify(func, where)
    if "streaming_writes" in capabilities:
        methods["open_writer"] = _adapting_writers(methods["open_writer"], offload)
        if "exclusive" in inspect.signature(backend.open_writer).parameters:  # type: ignore[attr-defined]
            capabilities.add("exclusive_writes")
    if "readers" in capabilities:
        methods["open_reader"] = _adapting_readers(methods["open_reader"], offload)
    return BoundBackend(
        backend=backend,
        name=type(backend).__name__,
        kind="async" if inspect.iscoroutinefunction(backend.stat) else "sync",  # type: ignore[attr-defined]
        capabilities=frozenset(capabilities),
        **methods,
    )


async def start_backend(backend: BoundBackend) -> None:
    """Run the backend's optional ``startup()``; any failure becomes a ConfigError."""
    if backend.startup is None:
        return
    try:
        await backend.startup()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{backend.name} failed to start: {exc}") from exc


async def stop_backend(backend: BoundBackend) -> None:
    """Run the backend's optional ``shutdown()``; a failure is logged, the stop goes on."""
    if backend.shutdown is None:
        return
    try:
        await backend.shutdown()
    except Exception:
        _log.exception("%s failed to shut down", backend.name)
