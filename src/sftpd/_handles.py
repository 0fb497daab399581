"""Open files: how reads and writes on one SFTP handle reach the backend.

Reads use the backend's ``read_range`` when it has one, else one whole-file read per
handle. Writes go to the backend's streaming :class:`~sftpd.backend.Writer` when it has
one, else to a spool (memory, then a temporary file) that is written whole at close.
Either way the file becomes visible only when the handle is closed and the commit
succeeds; a failed or abandoned upload is aborted and leaves nothing.

Requests on one handle may run concurrently (see :mod:`sftpd._sftp.engine`): reads
always, writes only where the writer says it is safe (``concurrent_writes``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ._binding import BoundBackend, BoundWriter, bind_writer
from ._digests import DigestTap
from ._ingest import Ingest, Inspector
from ._quota import QuotaLedger
from .backend import AttrChanges, FileAttrs, FileType, Reader
from .errors import (
    Failure,
    InvalidParameter,
    PermissionDenied,
    QuotaExceeded,
    Unsupported,
    is_expected,
    to_sftp_error,
)

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["FileHandle", "OpenMode"]

log = logging.getLogger("sftpd")

SPOOL_MEMORY_LIMIT = 8 << 20
"""Bytes a buffered upload keeps in memory before it spills to a temporary file."""

COPY_CHUNK = 255 << 10
"""Bytes per step when copy-data copies through reads and writes."""


T = TypeVar("T")


async def within(seconds: float, call: Awaitable[T]) -> T:
    """Await ``call``, raising :class:`TimeoutError` after ``seconds``.

    On Python 3.11 and later a deadline on the running task (one timer), not
    ``asyncio.wait_for``'s extra task, waiter and callbacks on every open and close.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await call
    try:  # pragma: no cover - Python 3.10
        return await asyncio.wait_for(call, seconds)
    except asyncio.TimeoutError:  # pragma: no cover - not the builtin before 3.11
        raise TimeoutError from None


@dataclass(frozen=True, slots=True)
class OpenMode:
    """What an open request asked for, in plain words."""

    read: bool
    write: bool
    append: bool
    create: bool
    truncate: bool
    exclusive: bool

    @property
    def label(self) -> str:
        """``read``, ``write`` or ``read_write``."""
        if self.read and self.write:
            return "read_write"
        return "write" if self.write else "read"


async def _read_back(writer: BoundWriter, offset: int, length: int) -> bytes:
    """Read an upload back (a handle open for reading always has a writer that can)."""
    if writer.read is None:
        raise PermissionDenied("File not open for reading")
    return await writer.read(offset, length)


class _Spool:
    """A buffered upload for backends without streaming writes.

    It keeps writes in memory up to :data:`SPOOL_MEMORY_LIMIT` (and while the server's
    upload memory has room: it never waits for it), then in an anonymous temporary file,
    and hands the whole content to ``write_file`` at commit. Its methods
    never await between a seek and the write or read after it, so writes may come
    concurrently.
    """

    concurrent_writes = True

    def __init__(self, backend: BoundBackend, path: str, session: Session, initial: bytes):
        self._backend = backend
        self._path = path
        self._session = session
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_LIMIT)  # noqa: SIM115
        self._size = 0
        self._memory = session.upload_memory
        self._held = 0  # bytes of the server's upload memory kept while in memory
        self._spilled = False
        if initial:
            self._hold(len(initial))
            self._file.write(initial)
            self._size = len(initial)

    def _hold(self, end: int) -> None:
        """Keep the first ``end`` bytes in memory if the server's budget allows, else spill."""
        if self._spilled or end <= self._held:
            return
        if end <= SPOOL_MEMORY_LIMIT and self._memory.try_take(end - self._held):
            self._held = end
            return
        self._file.rollover()  # to the temporary file: this upload holds no memory now
        self._spilled = True
        self._release()

    def _release(self) -> None:
        self._memory.give(self._held)
        self._held = 0

    async def write(self, offset: int, data: bytes) -> None:
        self._hold(offset + len(data))
        self._file.seek(offset)
        self._file.write(data)
        self._size = max(self._size, offset + len(data))

    async def read(self, offset: int, length: int) -> bytes:
        self._file.seek(offset)
        return self._file.read(max(0, min(length, self._size - offset)))

    async def truncate(self, size: int) -> None:
        self._file.truncate(size)
        self._size = size

    async def commit(self) -> None:
        self._file.seek(0)
        data = self._file.read()
        self._file.close()
        self._release()
        await self._backend.write_file(self._path, data, self._session)

    async def abort(self) -> None:
        self._file.close()
        self._release()


class FileHandle:
    """One open file of one session."""

    def __init__(
        self,
        *,
        backend: BoundBackend,
        session: Session,
        path: str,
        client_path: str,
        mode: OpenMode,
        attrs: FileAttrs | None,
        close_timeout: float,
        handle_id: int,
        source: FileHandle | None = None,
        inspector: Inspector | None = None,
        digests: Sequence[str] = (),
        quota: QuotaLedger | None = None,
    ) -> None:
        self._quota = (quota.upload(None if attrs is None else attrs.size)
                       if quota is not None and mode.write else None)  # fmt: skip
        self._ingest = Ingest(inspector) if inspector is not None else None
        keeps = attrs is not None and not mode.truncate and attrs.size > 0
        self._tap = DigestTap(digests, whole=not keeps) if mode.write and digests else None
        self._copied_from: str | None = None  # copied inside the storage: its digests apply
        self.backend = backend
        self.session = session
        self.path = path
        self.client_path = client_path
        self.mode = mode
        self.id = handle_id
        self.close_timeout = close_timeout
        self._attrs = attrs
        self._source = source  # for reads: an upload of this session still being written
        self._size = attrs.size if attrs is not None and not mode.truncate else 0
        self._writer: BoundWriter | None = None
        self._reader: Reader | None = None
        self._whole: bytes | None = None
        self._pending_changes: AttrChanges | None = None
        self._dirty = False
        self._failed = False
        self._failure = ""  # why, for the close's error: "No space left", "Files may be..."
        self._closed = False
        self.bytes_read = 0
        self.bytes_written = 0
        self.opened = time.monotonic_ns()

    async def start(self) -> FileHandle:
        """Open the backend side: a writer (or spool) for writes, a reader if offered."""
        if self._quota is not None:
            await self._quota.opened()  # a new file takes one of the quota's files
        try:
            await self._open_backend()
        except BaseException:
            await self._quota_aborted()
            raise
        return self

    async def _open_backend(self) -> None:
        mode, attrs = self.mode, self._attrs
        if mode.write:
            keep = attrs is not None and not mode.truncate
            if self.backend.open_writer is not None:
                # An exclusive create is checked at open; where the backend can, again at
                # commit, so two clients creating the same new file cannot both succeed.
                extra = {}
                if (
                    mode.create
                    and mode.exclusive
                    and "exclusive_writes" in self.backend.capabilities
                ):
                    extra["exclusive"] = True
                writer = await self.backend.open_writer(
                    self.path, self.session, keep_existing=keep, **extra
                )
                if mode.read and writer.read is None:
                    # The backend's writer cannot read back: buffer this handle instead.
                    await writer.abort()
                    writer = await self._spool(keep)
                self._writer = writer
            else:
                self._writer = await self._spool(keep)
            # Creating or truncating changes the file even if nothing is written.
            self._dirty = attrs is None or mode.truncate
        elif self._source is not None and self._source.readable_upload:
            pass  # reads come from the upload this session is writing
        elif self.backend.open_reader is not None:
            self._reader = await self.backend.open_reader(self.path, self.session)

    async def _spool(self, keep_existing: bool) -> BoundWriter:
        initial = await self.backend.read_file(self.path, self.session) if keep_existing else b""
        return bind_writer(_Spool(self.backend, self.path, self.session, initial))

    @property
    def concurrent_writes(self) -> bool:
        """True when writes of this handle may reach the backend together."""
        return self._writer is not None and self._writer.concurrent_writes

    @property
    def readable_upload(self) -> bool:
        """True for an upload whose content can be read back before it is committed."""
        return not self._closed and self._writer is not None and self._writer.read is not None

    def set_initial_permissions(self, permissions: int) -> None:
        """Give a new file the mode the client asked for at open (applied at commit).

        A writer with a ``permissions`` attribute applies it itself as it commits;
        otherwise ``set_attrs`` follows the commit.
        """
        if self._writer is not None and self._writer.keeps_permissions:
            self._writer.give_permissions(permissions)
            return
        previous = self._pending_changes or AttrChanges()
        self._pending_changes = AttrChanges(
            permissions=permissions, atime=previous.atime, mtime=previous.mtime
        )

    @property
    def size(self) -> int:
        """The file's size as this handle sees it (including unwritten uploads)."""
        return self._size

    async def read(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes at ``offset``; ``b""`` at end of file."""
        if not self.mode.read:
            raise PermissionDenied("File not open for reading")
        if offset < 0 or length < 0:
            raise InvalidParameter("Negative offset or length")
        if self._source is not None and not self._source.readable_upload:
            # The upload this handle read from was closed (stored or aborted): read what
            # is stored now (found by fuzzing: its writer's file was read after its close).
            self._source = None
            if self.backend.open_reader is not None and self._reader is None:
                self._reader = await self.backend.open_reader(self.path, self.session)
        if self._writer is not None:
            data = await _read_back(self._writer, offset, length)
        elif self._source is not None and self._source._writer is not None:
            data = await _read_back(self._source._writer, offset, length)
        elif self._reader is not None:
            data = await self._reader.read(offset, length)
        elif self.backend.read_range is not None:
            data = await self.backend.read_range(self.path, offset, length, self.session)
        else:
            if self._whole is None:
                self._whole = await self.backend.read_file(self.path, self.session)
            data = self._whole[offset : offset + length]
        self.bytes_read += len(data)
        return data

    async def write(self, offset: int, data: bytes) -> int:
        """Store ``data`` at ``offset`` (at the end for append opens); returns the offset."""
        if self._writer is None:
            raise PermissionDenied("File not open for writing")
        if offset < 0:
            raise InvalidParameter("Negative offset")
        if self.mode.append:
            offset = self._size
        await self._check_limit(offset + len(data))
        if self._tap is not None:
            self._tap.write(offset, data)
            if self._tap.behind:
                await self._tap.settle()
        if self._ingest is not None:
            self._ingest.write(offset, data)
            await self._ingest.room()
        try:
            await self._writer.write(offset, data)
        except BaseException as exc:
            self._fail(exc)
            raise
        self._grow(offset + len(data), len(data))
        return offset

    async def copy_from(
        self, source: FileHandle, offset: int, length: int, target_offset: int
    ) -> None:
        """copy-data: ``length`` bytes of ``source`` from ``offset`` (0: to its end).

        A writer with ``copy_from(path, offset, length, target_offset)`` copies on the
        storage side (the stored file, not an upload still open); otherwise the bytes go
        through reads and writes here, never through the client. Copying within one
        handle is refused (OpenSSH's client always opens the file twice).
        """
        if source is self:
            raise Unsupported("copy-data within one open handle; open the file twice")
        if self._writer is None:
            raise PermissionDenied("File not open for writing")
        if not source.mode.read:
            raise PermissionDenied("File not open for reading")
        if source is self and self.mode.write:
            raise InvalidParameter("Cannot copy a file onto itself")
        end = source.size if length == 0 else min(offset + length, source.size)
        if end <= offset:
            return
        if self.mode.append:
            target_offset = self._size
        await self._check_limit(target_offset + end - offset)
        copy = self._writer.copy_from
        if self._ingest is not None:  # bytes the inspector would never see: copy through
            copy = None
        if copy is not None and source._writer is None and source._source is None:
            try:
                await copy(source.path, offset, end - offset, target_offset)
            except Unsupported:
                pass  # not this copy: through reads and writes below
            except BaseException as exc:
                self._fail(exc)
                raise
            else:
                self._grow(target_offset + end - offset, end - offset)
                source.bytes_read += end - offset
                if self._tap is not None:
                    self._tap.broken = True
                    self._copied_from = source.path if offset == 0 == target_offset else None
                return
        position = offset
        while position < end:
            data = await source.read(position, min(COPY_CHUNK, end - position))
            if not data:
                break
            await self.write(target_offset + position - offset, data)
            position += len(data)

    def _fail(self, exc: BaseException) -> None:
        """A write failed: the upload will store nothing, and its close says why."""
        self._failed = True
        if not self._failure and isinstance(exc, Exception):
            self._failure = to_sftp_error(exc).reason

    def _grow(self, end: int, written: int) -> None:
        self._dirty = True
        self._size = max(self._size, end)
        self.bytes_written += written

    async def _check_limit(self, size: int) -> None:
        """Refuse to grow the file past the session's limits (its largest file, its
        quota, which reserves the room); the upload then stores nothing.
        """
        limit = self.session.max_file_size
        if limit is not None and size > limit:
            error = QuotaExceeded(f"Files may be at most {limit} bytes")
            self._fail(error)
            raise error
        if self._quota is not None and size > self._size:
            try:
                await self._quota.grow(size)
            except Exception as exc:
                self._fail(exc)
                raise

    def attrs(self) -> FileAttrs:
        """Attributes for ``fstat``: the stored ones with this handle's size and changes."""
        base = self._attrs
        if base is None:
            base = FileAttrs(type=FileType.FILE, mtime=time.time())
        changes = self._pending_changes
        return FileAttrs(
            type=base.type,
            size=self._size,
            mtime=changes.mtime if changes and changes.mtime is not None else base.mtime,
            atime=changes.atime if changes and changes.atime is not None else base.atime,
            permissions=(
                changes.permissions
                if changes and changes.permissions is not None
                else base.permissions
            ),
            uid=base.uid,
            gid=base.gid,
        )

    async def set_attrs(self, changes: AttrChanges) -> None:
        """Apply ``fsetstat``: size now, times and permissions after the commit."""
        if changes.size is not None:
            if self._writer is None:
                raise PermissionDenied("File not open for writing")
            await self._check_limit(changes.size)
            if self._ingest is not None and changes.size != self._size:
                self._ingest.broken = "it was resized"
            if self._tap is not None:
                self._tap.broken = True
            truncate = self._writer.truncate
            if truncate is None:
                raise InvalidParameter("This storage cannot resize an upload")
            await truncate(changes.size)
            self._size = changes.size
            self._dirty = True
        if self._writer is None:
            if self.backend.set_attrs is not None and not changes.is_empty():
                await self.backend.set_attrs(self.path, changes, self.session)
            return
        previous = self._pending_changes or AttrChanges()
        self._pending_changes = AttrChanges(
            permissions=changes.permissions
            if changes.permissions is not None
            else previous.permissions,
            atime=changes.atime if changes.atime is not None else previous.atime,
            mtime=changes.mtime if changes.mtime is not None else previous.mtime,
        )

    async def close(self, *, commit: bool = True) -> bool:
        """Finish the handle: commit an upload (bounded by ``close_timeout``) or abort it.

        Returns:
            True when an upload was stored.

        Raises:
            Failure: the commit failed or timed out; the upload was aborted.
        """
        if self._closed:
            return False
        self._closed = True
        if self._reader is not None:
            try:
                await self._reader.close()
            except Exception:
                log.warning("closing a reader of %s failed", self.path, exc_info=True)
        writer = self._writer
        if writer is None:
            return False
        ingest = self._ingest
        if ingest is not None and (not commit or self._failed or not self._dirty):
            ingest.cancel()
        if not commit or self._failed:
            await self._abort(writer)
            if self._failed and commit:
                why = f" ({self._failure})" if self._failure else ""
                raise Failure(f"Upload failed{why}; nothing was stored")
            return False
        if not self._dirty:
            await self._abort(writer)
            await self._apply_pending()
            return False
        if ingest is not None:
            refusal = await ingest.verdict()
            if refusal is not None:
                await self._abort(writer)
                raise PermissionDenied(f"Upload refused: {refusal}")
        digests = await self._digests_to_keep()
        writer_keeps = writer.keeps_digests  # it stores them with the file (S3)
        if writer_keeps and digests:
            writer.give_digests(digests)
        try:
            await within(self.close_timeout, writer.commit())
        except TimeoutError:
            await self._abort(writer)
            raise Failure("Storing the file timed out; nothing was stored") from None
        except BaseException:
            await self._abort(writer)
            raise
        if self._quota is not None:
            await self._quota.stored(self._size)
        await self._apply_pending()
        if self._tap is not None and not writer_keeps:
            await self._keep_digests(digests)
        return True

    async def _digests_to_keep(self) -> Mapping[str, str] | None:
        """The upload's digests, or those of the file it copied inside the storage."""
        if self._tap is None:
            return None
        await self._tap.settle()
        digests: Mapping[str, str] | None = self._tap.result(self._size)
        read = self.backend.read_digests
        if digests is None and self._copied_from is not None and read is not None:
            try:
                digests = await read(self._copied_from, self.session)
            except Exception:  # the source may be gone: then there are none to carry
                log.debug("no digests of %s to carry", self._copied_from, exc_info=True)
        return digests

    async def _keep_digests(self, digests: Mapping[str, str] | None) -> None:
        """Store the upload's digests (else forget stale ones). The file is stored
        already: a failure here is logged, never the client's.
        """
        store = self.backend.store_digests
        if store is None:
            return
        try:
            await store(self.path, digests or {}, self.session)
        except Exception as exc:
            if is_expected(exc):  # removed or renamed since the commit: nothing to keep
                log.debug("not keeping the digests of %s: %s", self.path, exc)
            else:
                log.warning("keeping the digests of %s failed", self.path, exc_info=True)

    async def _apply_pending(self) -> None:
        changes = self._pending_changes
        if changes is None or changes.is_empty() or self.backend.set_attrs is None:
            return
        try:
            await self.backend.set_attrs(self.path, changes, self.session)
        except Exception:
            # The data is stored; a time or mode the storage refuses is not worth failing.
            log.debug("set_attrs after commit failed for %s", self.path, exc_info=True)

    async def _quota_aborted(self) -> None:
        if self._quota is not None:
            await self._quota.aborted()

    async def _abort(self, writer: BoundWriter) -> None:
        """Nothing is stored: the writer leaves nothing, the quota reservation goes."""
        try:
            await writer.abort()
        except Exception:
            log.warning("aborting an upload of %s failed", self.path, exc_info=True)
        await self._quota_aborted()
