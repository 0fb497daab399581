"""Binding a backend: the contract of :mod:`sftpd.backend` made one typed, async object.

A backend is any object; its methods may be ``async def`` or plain ``def``, and most of
them are optional. :func:`bind_backend` decides all of that once, at start-up, and hands
the request layer a :class:`BoundBackend`: every method async and typed, each optional
one ``None`` where the backend lacks it, plain ones running in the backend's own thread
pool (which the bound backend owns and closes). Uploads come back as a
:class:`BoundWriter`, whose optional parts are likewise found once, at open.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._memory import UNLIMITED, UploadMemory
from .backend import (
    REQUIRED_METHODS,
    AttrChanges,
    Capability,
    DirEntry,
    FileAttrs,
    Reader,
    SpaceInfo,
    capabilities_of,
    check_backend,
)
from .errors import ConfigError

if TYPE_CHECKING:
    from ._session import Session

__all__ = [
    "BATCH",
    "BoundBackend",
    "BoundWriter",
    "Offload",
    "asyncify",
    "bind_backend",
    "bind_writer",
    "start_backend",
    "stop_backend",
]

_log = logging.getLogger("sftpd")

R = TypeVar("R")


class SyncWriter(Protocol):
    """A plain (sync) backend's writer; ``read``, ``truncate``, ``copy_from``,
    ``write_many``, ``permissions``, ``digests`` and ``quick_commit`` are optional.
    """

    def write(self, offset: int, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class SyncReader(Protocol):
    """A plain (sync) backend's reader."""

    def read(self, offset: int, length: int) -> bytes: ...
    def close(self) -> None: ...


# The bound forms of the contract's methods (see sftpd.backend for what each means).
PathCall = Callable[[str, "Session"], Awaitable[None]]
PairCall = Callable[[str, str, "Session"], Awaitable[None]]
SessionCall = Callable[["Session"], Awaitable[None]]
PlainCall = Callable[[], Awaitable[None]]


class Rename(Protocol):
    """``rename(src, dst, session, *, overwrite)``."""

    def __call__(
        self, src: str, dst: str, session: Session, /, *, overwrite: bool
    ) -> Awaitable[None]: ...


class OpenWriter(Protocol):
    """``open_writer(path, session, *, keep_existing, exclusive=...)``."""

    def __call__(
        self, path: str, session: Session, /, *, keep_existing: bool, exclusive: bool = ...
    ) -> Awaitable[BoundWriter]: ...


@dataclass(slots=True)
class BoundWriter:
    """An open upload as the request layer sees it, its optional parts found once.

    ``read``, ``truncate`` and ``copy_from`` are ``None`` where the writer lacks them.
    A writer that stores permissions or digests with the file itself has
    ``keeps_permissions`` / ``keeps_digests``; they are handed over before the commit.
    """

    write: Callable[[int, bytes], Awaitable[None]]
    commit: Callable[[], Awaitable[None]]
    abort: Callable[[], Awaitable[None]]
    read: Callable[[int, int], Awaitable[bytes]] | None = None
    truncate: Callable[[int], Awaitable[None]] | None = None
    copy_from: Callable[[str, int, int, int], Awaitable[None]] | None = None
    concurrent_writes: bool = False
    keeps_permissions: bool = False
    keeps_digests: bool = False
    target: object = None

    def give_permissions(self, permissions: int) -> None:
        """The mode the new file gets at commit (only where ``keeps_permissions``)."""
        setattr(self.target, "permissions", permissions)  # noqa: B010

    def give_digests(self, digests: Mapping[str, str]) -> None:
        """Digests stored with the file at commit (only where ``keeps_digests``)."""
        setattr(self.target, "digests", digests)  # noqa: B010


def _method(obj: object, name: str) -> Any:
    """``obj.name`` if it is callable, else ``None``."""
    found = getattr(obj, name, None)
    return found if callable(found) else None


def bind_writer(writer: object) -> BoundWriter:
    """Describe an async writer (one with ``write``, ``commit`` and ``abort``) once."""
    if isinstance(writer, BoundWriter):
        return writer
    return BoundWriter(
        write=getattr(writer, "write"),  # noqa: B009
        commit=getattr(writer, "commit"),  # noqa: B009
        abort=getattr(writer, "abort"),  # noqa: B009
        read=_method(writer, "read"),
        truncate=_method(writer, "truncate"),
        copy_from=_method(writer, "copy_from"),
        concurrent_writes=bool(getattr(writer, "concurrent_writes", False)),
        keeps_permissions=hasattr(writer, "permissions"),
        keeps_digests=hasattr(writer, "digests"),
        target=writer,
    )


@dataclass(slots=True, eq=False)
class BoundBackend:
    """A backend with every method made async and typed, and its capabilities.

    The server builds one at start-up; the request layer only talks to this. It owns
    the thread pool its plain methods run in: :func:`stop_backend` closes it.
    """

    backend: object
    name: str
    kind: str
    stat: Callable[[str, Session], Awaitable[FileAttrs]]
    list_dir: Callable[[str, Session], AsyncIterator[DirEntry]]
    make_dir: PathCall
    remove_dir: PathCall
    remove_file: PathCall
    rename: Rename
    read_file: Callable[[str, Session], Awaitable[bytes]]
    write_file: Callable[[str, bytes, Session], Awaitable[None]]
    read_range: Callable[[str, int, int, Session], Awaitable[bytes]] | None = None
    open_reader: Callable[[str, Session], Awaitable[Reader]] | None = None
    open_writer: OpenWriter | None = None
    set_attrs: Callable[[str, AttrChanges, Session], Awaitable[None]] | None = None
    disk_usage: Callable[[str, Session], Awaitable[SpaceInfo]] | None = None
    read_digests: Callable[[str, Session], Awaitable[Mapping[str, str] | None]] | None = None
    store_digests: Callable[[str, Mapping[str, str], Session], Awaitable[None]] | None = None
    read_link: Callable[[str, Session], Awaitable[str]] | None = None
    make_symlink: PairCall | None = None
    make_link: PairCall | None = None
    session_opened: SessionCall | None = None
    session_closed: SessionCall | None = None
    startup: PlainCall | None = None
    shutdown: PlainCall | None = None
    capabilities: frozenset[Capability] = field(default_factory=frozenset)
    pool: _Pool | None = None

    def close(self) -> None:
        """Let the thread pool's threads end (a later call starts a new pool)."""
        if self.pool is not None:
            self.pool.close()


class _Pool:
    """A thread pool made at its first use, so an async backend never starts threads."""

    def __init__(self, max_threads: int) -> None:
        self._max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None

    def get(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._max_threads, thread_name_prefix="sftpd-backend"
            )
        return self._executor

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


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

    def __init__(
        self, executor: ThreadPoolExecutor | _Pool | None, *, inline: bool = False
    ) -> None:
        self.executor = executor
        self.inline = inline
        self._pool_until = 0.0

    def pool(self, func: Callable[..., R], *args: object) -> asyncio.Future[R]:
        """Run ``func`` in the pool."""
        executor = self.executor.get() if isinstance(self.executor, _Pool) else self.executor
        return asyncio.get_running_loop().run_in_executor(executor, func, *args)

    async def call(self, func: Callable[..., R], *args: object) -> R:
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
    async def call_in_thread(*args: object, **kwargs: object) -> object:
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

    async def iterate(*args: object, **kwargs: object) -> AsyncIterator[DirEntry]:
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

    def __init__(
        self, writer: SyncWriter, offload: Offload, memory: UploadMemory = UNLIMITED
    ) -> None:
        self._writer = writer
        self._offload = offload
        self._memory = memory
        self._held = 0  # bytes of the gathered batch, taken from the server's upload memory
        self._chunks: list[bytes] = []
        self._pending_size = 0
        self._pending_at = 0
        self._written = 0
        self._write_many: Callable[[int, list[bytes]], None] | None = _method(writer, "write_many")
        self._read: Callable[[int, int], bytes] | None = _method(writer, "read")
        self._truncate: Callable[[int], None] | None = _method(writer, "truncate")
        self._copy_from: Callable[[str, int, int, int], None] | None = _method(writer, "copy_from")
        self._flushing = asyncio.Lock()  # flushes in order: a rewrite never overtakes
        self.concurrent_writes = bool(getattr(writer, "concurrent_writes", False))
        if hasattr(writer, "permissions"):
            self.permissions: int | None = writer.permissions
        if hasattr(writer, "digests"):  # the writer keeps them itself (given before commit)
            self.digests: Mapping[str, str] | None = writer.digests

    def bound(self) -> BoundWriter:
        """This writer as the request layer sees it (only the parts the sync one has)."""
        return BoundWriter(
            write=self.write,
            commit=self.commit,
            abort=self.abort,
            read=self.read if self._read is not None else None,
            truncate=self.truncate if self._truncate is not None else None,
            copy_from=self.copy_from if self._copy_from is not None else None,
            concurrent_writes=self.concurrent_writes,
            keeps_permissions=hasattr(self, "permissions"),
            keeps_digests=hasattr(self, "digests"),
            target=self,
        )

    def _call(self, method: Callable[..., R], *args: object) -> asyncio.Future[R]:
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
        """Gather ``data`` into the pending batch; write a full batch out."""
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
        """Write the last batch and commit, in one pool call (inline for a small file)."""
        async with self._flushing:
            if hasattr(self, "permissions"):
                setattr(self._writer, "permissions", self.permissions)  # noqa: B010
            if hasattr(self, "digests"):
                setattr(self._writer, "digests", self.digests)  # noqa: B010
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
        """Drop the pending batch and abort the upload."""
        self._memory.give(self._take()[2])
        await self._offload.call(self._writer.abort)

    async def read(self, offset: int, length: int) -> bytes:
        """Read back what the upload holds (pending writes first)."""
        await self._flush()
        assert self._read is not None  # offered only when the writer has it (bound())
        return await self._call(self._read, offset, length)

    async def truncate(self, size: int) -> None:
        """Resize the upload."""
        await self._flush()
        assert self._truncate is not None
        await self._call(self._truncate, size)

    async def copy_from(self, path: str, offset: int, length: int, target_offset: int) -> None:
        """Copy a range of a stored file into the upload, on the storage side."""
        await self._flush()
        assert self._copy_from is not None
        await self._call(self._copy_from, path, offset, length, target_offset)


class _AsyncReader:
    """A sync reader whose reads run in the backend's thread pool, :data:`BATCH` at a time.

    A read fetches the window of :data:`BATCH` bytes from its offset; the reads after it
    (a client keeps many outstanding) are served from that window, so 32 KiB requests cost
    one thread-pool call per MiB. The last two windows are kept for reads that arrive
    a little out of order.
    """

    def __init__(self, reader: SyncReader, offload: Offload) -> None:
        self._reader = reader
        self._offload = offload
        self._windows: list[tuple[int, asyncio.Future[bytes]]] = []

    async def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``, from a window read ahead where it can."""
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
        """Close the reader."""
        self._windows = []
        await self._offload.call(self._reader.close)


def _adapting_readers(
    open_reader: Callable[..., Awaitable[Any]], offload: Offload
) -> Callable[[str, Session], Awaitable[Reader]]:
    async def open_adapted(path: str, session: Session) -> Reader:
        reader = await open_reader(path, session)
        if inspect.iscoroutinefunction(reader.read):
            return reader  # type: ignore[no-any-return]
        return _AsyncReader(reader, offload)

    return open_adapted


def _adapting_writers(open_writer: Callable[..., Awaitable[Any]], offload: Offload) -> OpenWriter:
    async def open_adapted(
        path: str, session: Session, /, *, keep_existing: bool, **extra: bool
    ) -> BoundWriter:
        writer = await open_writer(path, session, keep_existing=keep_existing, **extra)
        if isinstance(writer, BoundWriter) or inspect.iscoroutinefunction(writer.write):
            return bind_writer(writer)
        memory = getattr(session, "upload_memory", UNLIMITED)
        return _AsyncWriter(writer, offload, memory).bound()

    return open_adapted


def bind_backend(backend: object, *, max_threads: int = 16) -> BoundBackend:
    """Check a backend against the contract and adapt it, once, for the request layer.

    Raises:
        ConfigError: a required method is missing; the message lists them.
    """
    check_backend(backend)
    pool = _Pool(max_threads)
    offload = Offload(pool, inline=getattr(backend, "inline_calls", False) is True)
    pooled = Offload(pool)
    in_pool = {*_BULK_CALLS, *getattr(backend, "pool_calls", ())}
    capabilities = capabilities_of(backend)
    # Once each: exclusive writes name open_writer too.
    names = dict.fromkeys([*REQUIRED_METHODS, *(n for cap in capabilities for n in cap.methods)])
    methods: dict[str, Any] = {}
    for name in names:
        func = getattr(backend, name)
        where = pooled if name in in_pool else offload
        methods[name] = _asyncify_iter(func, where) if name == "list_dir" else asyncify(func, where)
    if Capability.STREAMING_WRITES in capabilities:
        methods["open_writer"] = _adapting_writers(methods["open_writer"], offload)
    if Capability.READERS in capabilities:
        methods["open_reader"] = _adapting_readers(methods["open_reader"], offload)
    return BoundBackend(
        backend=backend,
        name=type(backend).__name__,
        kind="async" if inspect.iscoroutinefunction(getattr(backend, "stat")) else "sync",  # noqa: B009
        capabilities=capabilities,
        pool=pool,
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
    """Run the backend's optional ``shutdown()`` and close its thread pool.

    A failing shutdown is logged; the stop goes on.
    """
    try:
        if backend.shutdown is not None:
            await backend.shutdown()
    except Exception:
        _log.exception("%s failed to shut down", backend.name)
    finally:
        backend.close()
