"""The SFTP request adapter: asyncssh's SFTPServer, pointed at a backend.

asyncssh's default ``SFTPServer`` methods act on the host's file system. This subclass
overrides every one of them (a test walks the class to prove it), so each request is
decoded, normalized, scoped into the session's root, checked, handed to the backend and
its errors translated, in one place: :meth:`SftpAdapter._run`.
"""

from __future__ import annotations

import asyncio
import logging
import stat as stat_module
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncssh
from asyncssh import SFTPAttrs, SFTPName, SFTPVFSAttrs

from . import paths
from ._handles import FileHandle, OpenMode
from ._upload import Upload
from .backend import AttrChanges, FileAttrs, FileType
from .errors import (
    Failure,
    FileAlreadyExists,
    InvalidParameter,
    IsADirectory,
    NoSuchFile,
    NotADirectory,
    PermissionDenied,
    Unsupported,
    is_expected,
    to_sftp_error,
)

if TYPE_CHECKING:
    from ._server import ServerContext
    from ._server import _Connection as Connection
    from ._session import Session

__all__ = ["SftpAdapter"]

log = logging.getLogger("sftpd")

T = TypeVar("T")

#: Read replies the client has not taken yet, in bytes, above which the next read waits.
#: asyncssh queues every reply in the channel whatever the client's window, so a client
#: with many reads outstanding (OpenSSH: 64 of 255 KiB), or one that stops reading, would
#: otherwise make the server hold all of them. Above the usual 2 MiB window, so a client
#: that keeps up never waits.
REPLY_BACKLOG = 4 << 20


async def wait_for_client(channel: Any, limit: int = REPLY_BACKLOG) -> None:
    """Wait while more than ``limit`` bytes of replies wait for the client to take them."""
    delay = 0.001
    while channel.get_write_buffer_size() > limit:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)


_TYPES = {
    FileType.FILE: asyncssh.FILEXFER_TYPE_REGULAR,
    FileType.DIRECTORY: asyncssh.FILEXFER_TYPE_DIRECTORY,
    FileType.SYMLINK: asyncssh.FILEXFER_TYPE_SYMLINK,
}


def to_sftp_attrs(attrs: FileAttrs) -> SFTPAttrs:
    """Convert backend attributes to what goes on the wire."""
    mtime = int(attrs.mtime)
    atime = int(attrs.atime if attrs.atime is not None else attrs.mtime)
    return SFTPAttrs(
        type=_TYPES[attrs.type],
        size=attrs.size,
        uid=attrs.uid if attrs.uid is not None else 0,
        gid=attrs.gid if attrs.gid is not None else 0,
        permissions=attrs.mode,
        atime=atime,
        mtime=mtime,
        nlink=2 if attrs.is_dir else 1,
    )


def to_changes(attrs: SFTPAttrs) -> AttrChanges:
    """Read what a setstat request asks to change (owner changes are ignored)."""
    return AttrChanges(
        size=attrs.size,
        permissions=attrs.permissions & 0o7777 if attrs.permissions is not None else None,
        atime=float(attrs.atime) if attrs.atime is not None else None,
        mtime=float(attrs.mtime) if attrs.mtime is not None else None,
    )


def open_mode(pflags: int) -> OpenMode:
    """Decode SFTP v3 open flags."""
    read = bool(pflags & asyncssh.FXF_READ)
    write = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND))
    if not read and not write:
        read = True
    mode = OpenMode(
        read=read,
        write=write,
        append=bool(pflags & asyncssh.FXF_APPEND),
        create=bool(pflags & asyncssh.FXF_CREAT),
        truncate=bool(pflags & asyncssh.FXF_TRUNC),
        exclusive=bool(pflags & asyncssh.FXF_EXCL),
    )
    if (mode.truncate or mode.create) and not mode.write:
        raise InvalidParameter("Create and truncate need write access")
    return mode


def v56_to_pflags(desired_access: int, flags: int) -> int:
    """Translate SFTP v5/v6 access and disposition flags into v3 open flags."""
    pflags = 0
    if desired_access & asyncssh.ACE4_READ_DATA:
        pflags |= asyncssh.FXF_READ
    if desired_access & (asyncssh.ACE4_WRITE_DATA | asyncssh.ACE4_APPEND_DATA):
        pflags |= asyncssh.FXF_WRITE
    disposition = flags & asyncssh.FXF_ACCESS_DISPOSITION
    pflags |= {
        asyncssh.FXF_CREATE_NEW: asyncssh.FXF_CREAT | asyncssh.FXF_EXCL,
        asyncssh.FXF_CREATE_TRUNCATE: asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC,
        asyncssh.FXF_OPEN_OR_CREATE: asyncssh.FXF_CREAT,
        asyncssh.FXF_TRUNCATE_EXISTING: asyncssh.FXF_TRUNC,
    }.get(disposition, 0)
    if desired_access & asyncssh.ACE4_APPEND_DATA or flags & asyncssh.FXF_APPEND_DATA:
        pflags |= asyncssh.FXF_APPEND | asyncssh.FXF_WRITE
    return pflags


_FLAG_NAMES = (
    (asyncssh.FXF_READ, "read"),
    (asyncssh.FXF_WRITE, "write"),
    (asyncssh.FXF_APPEND, "append"),
    (asyncssh.FXF_CREAT, "create"),
    (asyncssh.FXF_TRUNC, "truncate"),
    (asyncssh.FXF_EXCL, "exclusive"),
)


def _flag_names(pflags: int) -> list[str]:
    return [name for bit, name in _FLAG_NAMES if pflags & bit]


async def _unsupported(reason: str) -> Any:
    raise Unsupported(reason)


class SftpAdapter(asyncssh.SFTPServer):
    """Serves one SFTP channel of one session from the configured backend."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], context: ServerContext) -> None:
        super().__init__(chan)
        self._ctx = context
        self._backend = context.backend
        owner = cast("Connection", chan.get_connection().get_owner())
        session = owner.session
        if session is None:  # asyncssh opens channels only after authentication
            raise PermissionDenied("Not authenticated")
        self._session: Session = session
        self._root = session.root
        self._handles: set[FileHandle] = set()
        self._in_flight = 0
        self._next_handle = 0
        self._owner = owner
        self._bus = context.bus
        owner.adapters.add(self)

    # ------------------------------------------------------------------ plumbing

    @property
    def session(self) -> Session:
        """The session this channel belongs to."""
        return self._session

    @property
    def in_flight(self) -> bool:
        """True while a request runs."""
        return self._in_flight > 0

    @property
    def busy(self) -> bool:
        """True while a request runs or a file is open (a graceful stop waits for these)."""
        return self._in_flight > 0 or bool(self._handles)

    async def _run(
        self, operation: str, call: Awaitable[T], meta: dict[str, Any] | None = None
    ) -> T:
        """Run one request: count it, emit its event, translate what it raises.

        Args:
            operation: The catalog name (``read``, ``make_dir``...), also the event name.
            call: The work.
            meta: Event metadata; ``bytes`` here becomes a measurement.
        """
        self._in_flight += 1
        self._owner.last_active = time.monotonic()
        name = ("sftpd", "sftp", operation)
        listening = self._bus.listening(name)
        start = time.monotonic_ns() if listening else 0
        try:
            result = await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._failed(operation, exc, start if listening else None, meta) from exc
        else:
            if listening:
                info = dict(meta or {})
                if operation == "read":
                    info["bytes"] = len(cast(bytes, result))
                    info["result"] = "ok" if result else "eof"
                else:
                    info["result"] = "ok"
                self._emit(name, start, info)
            return result
        finally:
            self._in_flight -= 1

    def _failed(
        self, operation: str, exc: Exception, start: int | None, meta: dict[str, Any] | None
    ) -> asyncssh.SFTPError:
        """Log a failed request, emit its event (when ``start`` is given), map it."""
        expected = is_expected(exc)
        if expected:
            log.debug("%s failed for %s: %s", operation, self._session.username, exc)
        else:
            log.exception(
                "unexpected error in %s for session %s (%s)",
                operation,
                self._session.id,
                self._session.username,
            )
        mapped = to_sftp_error(exc)
        if start is not None:
            info = dict(meta or {})
            if expected:
                info.update(result="error", reason=mapped.reason, code=mapped.code)
            else:
                info.update(result="exception", kind=type(exc).__name__, reason=str(exc))
            self._emit(("sftpd", "sftp", operation), start, info)
        return mapped

    def _emit(self, name: tuple[str, ...], start: int, info: dict[str, Any]) -> None:
        measurements: dict[str, float] = {"duration": time.monotonic_ns() - start}
        if "bytes" in info:
            measurements["bytes"] = info.pop("bytes")
        for key in ("path", "src_path", "dst_path"):
            value = info.get(key)
            if isinstance(value, bytes):
                info[key] = paths.normalize(value.decode("utf-8", "replace"))
        info["backend"] = self._backend.name
        info["backend_kind"] = self._backend.kind
        self._bus.execute(name, measurements, info, self._session)

    def _path(self, raw: bytes) -> str:
        """Decode a client path and scope it into the session root."""
        return paths.scope(self._root, paths.decode(raw))

    async def _stat(self, path: str) -> FileAttrs:
        attrs: FileAttrs = await self._backend.stat(path, self._session)
        return attrs

    async def _stat_or_none(self, path: str) -> FileAttrs | None:
        try:
            return await self._stat(path)
        except FileNotFoundError:
            return None

    def _allow(self, operation: str, refusal: str) -> None:
        if not getattr(self._session.permissions, operation):
            raise PermissionDenied(refusal)

    def _refuse_root(self, path: str, action: str) -> None:
        if path == self._root:
            raise PermissionDenied(f"Cannot {action} the top directory")

    # ------------------------------------------------------------------ file handles

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> FileHandle:
        """Open a file (SFTP v3 flags)."""
        meta: dict[str, Any] = {"path": path, "requested_modes": _flag_names(pflags)}
        return await self._run("open", self._open(path, pflags, meta), meta)

    async def open56(
        self, path: bytes, desired_access: int, flags: int, attrs: SFTPAttrs
    ) -> FileHandle:
        """Open a file (SFTP v5/v6 flags, translated to v3)."""
        pflags = v56_to_pflags(desired_access, flags)
        meta: dict[str, Any] = {"path": path, "requested_modes": _flag_names(pflags)}
        return await self._run("open", self._open(path, pflags, meta), meta)

    async def _open(self, raw: bytes, pflags: int, meta: dict[str, Any]) -> FileHandle:
        mode = open_mode(pflags)
        meta["mode"] = mode.label
        meta["open_timeout"] = self._ctx.config.open_timeout
        path = self._path(raw)
        client_path = paths.unscope(self._root, path)
        limit = self._ctx.config.max_open_files
        if len(self._handles) >= limit:  # requests of a session are served one at a time
            raise Failure(f"Too many open files (at most {limit} per session)")
        try:
            handle = await asyncio.wait_for(
                self._open_backend(path, client_path, mode), self._ctx.config.open_timeout
            )
        except asyncio.TimeoutError:
            raise Failure("Opening the file timed out") from None
        self._handles.add(handle)
        meta["handle"] = handle.id
        return handle

    async def _open_backend(self, path: str, client_path: str, mode: OpenMode) -> FileHandle:
        if mode.read:
            self._allow("read", "Downloads are not allowed")
        if mode.write:
            self._allow("write", "Uploads are not allowed")
        existing = await self._stat_or_none(path)
        if existing is not None and existing.is_dir:
            raise IsADirectory()
        if existing is not None and existing.type is FileType.SYMLINK:
            raise PermissionDenied("Symbolic links are not followed")
        if mode.write:
            if path == self._root:
                raise IsADirectory()
            if existing is not None and mode.create and mode.exclusive:
                raise FileAlreadyExists()
            if existing is None and not mode.create:
                raise NoSuchFile()
        elif existing is None:
            raise NoSuchFile()
        self._next_handle += 1
        return await FileHandle(
            backend=self._backend,
            session=self._session,
            path=path,
            client_path=client_path,
            mode=mode,
            attrs=existing,
            close_timeout=self._ctx.config.close_timeout,
            handle_id=self._next_handle,
        ).start()

    async def close(self, file_obj: object) -> None:
        """Close a file; an upload is committed, and a failed commit fails the close."""
        # asyncssh also calls close() for files still open when the channel goes away;
        # that is an abandoned upload and must be aborted, never committed.
        caller = sys._getframe(1).f_code.co_name
        abandoned = caller == "_cleanup"
        handle = cast(FileHandle, file_obj)
        try:
            meta: dict[str, Any] = {
                "handle": handle.id,
                "path": handle.client_path,
                "mode": handle.mode.label,
                "close_timeout": handle.close_timeout,
                "abandoned": abandoned,
                "bytes_read": handle.bytes_read,
                "bytes_written": handle.bytes_written,
                "open_for": time.monotonic_ns() - handle.opened,
                "stored": False,
            }
            stored = await self._run("close", self._close(handle, abandoned, meta), meta)
        finally:
            self._handles.discard(handle)
        if stored:
            self._ctx.notify_upload(
                Upload(
                    session=self._session,
                    path=handle.client_path,
                    backend_path=handle.path,
                    size=handle.size,
                    bytes_written=handle.bytes_written,
                )
            )

    async def _close(self, handle: FileHandle, abandoned: bool, meta: dict[str, Any]) -> bool:
        stored = await handle.close(commit=not abandoned)
        meta["stored"] = stored
        return stored

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        """Read from an open file."""
        handle = cast(FileHandle, file_obj)
        await wait_for_client(self.channel)
        data = await self._run(
            "read", handle.read(offset, size),
            {"handle": handle.id, "offset": offset, "bytes_requested": size},
        )  # fmt: skip
        self._owner.bytes_out += len(data)
        return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        """Write to an open file."""
        handle = cast(FileHandle, file_obj)
        await self._run(
            "write", handle.write(offset, data),
            {"handle": handle.id, "offset": offset, "bytes": len(data)},
        )  # fmt: skip
        self._owner.bytes_in += len(data)
        return len(data)

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        """Attributes of an open file, including what was written so far."""
        return to_sftp_attrs(cast(FileHandle, file_obj).attrs())

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        """Change an open file's size, times or permissions."""
        handle = cast(FileHandle, file_obj)
        await self._run(
            "write_file_info", self._fsetstat(handle, attrs),
            {"handle": handle.id, "path": handle.client_path},
        )  # fmt: skip

    async def _fsetstat(self, handle: FileHandle, attrs: SFTPAttrs) -> None:
        self._allow("write", "Changing files is not allowed")
        await handle.set_attrs(to_changes(attrs))

    async def fstatvfs(self, file_obj: object) -> SFTPVFSAttrs:
        """Capacity of the storage holding an open file."""
        handle = cast(FileHandle, file_obj)
        return await self._run(
            "disk_usage", self._statvfs(handle.path), {"path": handle.client_path}
        )

    async def fsync(self, file_obj: object) -> None:
        """Refused: data is stored when the file is closed, not before."""
        raise to_sftp_error(Unsupported("Data is stored when the file is closed"))

    async def lock(self, file_obj: object, offset: int, length: int, flags: int) -> None:
        """Refused: byte-range locks are not supported."""
        raise to_sftp_error(Unsupported("Locking is not supported"))

    async def unlock(self, file_obj: object, offset: int, length: int) -> None:
        """Refused: byte-range locks are not supported."""
        raise to_sftp_error(Unsupported("Locking is not supported"))

    # ------------------------------------------------------------------ paths

    async def stat(self, path: bytes) -> SFTPAttrs:
        """Attributes of a path."""
        return await self._run("read_file_info", self._stat_attrs(path), {"path": path})

    async def lstat(self, path: bytes) -> SFTPAttrs:
        """Attributes of a path (there are no symlinks to not follow)."""
        return await self._run("read_link_info", self._stat_attrs(path), {"path": path})

    async def _stat_attrs(self, raw: bytes) -> SFTPAttrs:
        return to_sftp_attrs(await self._stat(self._path(raw)))

    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Change a path's size, times or permissions."""
        await self._run("write_file_info", self._setstat(path, attrs), {"path": path})

    async def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Same as setstat: there are no symlinks."""
        await self._run("write_file_info", self._setstat(path, attrs), {"path": path})

    async def _setstat(self, raw: bytes, attrs: SFTPAttrs) -> None:
        self._allow("write", "Changing files is not allowed")
        path = self._path(raw)
        current = await self._stat(path)
        changes = to_changes(attrs)
        if changes.size is not None and current.is_dir:
            raise IsADirectory()
        if changes.is_empty():
            return
        if self._backend.set_attrs is not None:
            await self._backend.set_attrs(path, changes, self._session)
        elif changes.size is not None and changes.size != current.size:
            raise Unsupported("This storage cannot resize files")
        # Without set_attrs, times and modes are accepted and ignored: clients such as
        # WinSCP set them after every upload and must not fail because of it.

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        """List a directory, ``.`` and ``..`` first, in batches as the backend yields.

        The backend's entries are streamed: a huge directory is never held in memory, and
        the first batch goes out before the backend has finished listing.
        """
        name = ("sftpd", "sftp", "list_dir")
        start = time.monotonic_ns()
        count = 0
        try:
            self._owner.last_active = time.monotonic()
            self._allow("list", "Listing directories is not allowed")
            directory = self._path(path)
            attrs = await self._stat(directory)
            if not attrs.is_dir:
                raise NotADirectory()
            yield SFTPName(b".", attrs=to_sftp_attrs(attrs))
            parent = paths.parent(directory) if directory != self._root else directory
            parent_attrs = attrs if parent == directory else await self._stat(parent)
            yield SFTPName(b"..", attrs=to_sftp_attrs(parent_attrs))
            async for entry in self._backend.list_dir(directory, self._session):
                if entry.name in (".", "..") or "/" in entry.name:
                    continue
                count += 1
                yield SFTPName(entry.name.encode("utf-8"), attrs=to_sftp_attrs(entry.attrs))
                if count % 128 == 0:
                    self._owner.last_active = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            started = start if self._bus.listening(name) else None
            meta = {"path": path, "entries": count}
            raise self._failed("list_dir", exc, started, meta) from exc
        if self._bus.listening(name):
            self._emit(name, start, {"path": path, "entries": count, "result": "ok"})

    async def remove(self, path: bytes) -> None:
        """Remove a file."""
        await self._run("delete", self._remove(path), {"path": path})

    async def _remove(self, raw: bytes) -> None:
        self._allow("delete", "Deleting is not allowed")
        path = self._path(raw)
        self._refuse_root(path, "remove")
        await self._backend.remove_file(path, self._session)

    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Create a directory."""
        await self._run("make_dir", self._mkdir(path, attrs), {"path": path})

    async def _mkdir(self, raw: bytes, attrs: SFTPAttrs) -> None:
        self._allow("mkdir", "Creating directories is not allowed")
        path = self._path(raw)
        if path == self._root:
            raise FileAlreadyExists()
        await self._backend.make_dir(path, self._session)
        if attrs.permissions is not None and self._backend.set_attrs is not None:
            changes = AttrChanges(permissions=attrs.permissions & 0o7777)
            await self._backend.set_attrs(path, changes, self._session)

    async def rmdir(self, path: bytes) -> None:
        """Remove an empty directory."""
        await self._run("del_dir", self._rmdir(path), {"path": path})

    async def _rmdir(self, raw: bytes) -> None:
        self._allow("delete", "Deleting is not allowed")
        path = self._path(raw)
        self._refuse_root(path, "remove")
        await self._backend.remove_dir(path, self._session)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        """Rename without replacing an existing target (SFTP v3 semantics)."""
        await self._run(
            "rename", self._rename(oldpath, newpath, overwrite=False),
            {"src_path": oldpath, "dst_path": newpath, "overwrite": False},
        )  # fmt: skip

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        """Rename, replacing an existing target (posix-rename@openssh.com)."""
        await self._run(
            "rename", self._rename(oldpath, newpath, overwrite=True),
            {"src_path": oldpath, "dst_path": newpath, "overwrite": True},
        )  # fmt: skip

    async def _rename(self, raw_src: bytes, raw_dst: bytes, *, overwrite: bool) -> None:
        self._allow("rename", "Renaming is not allowed")
        src, dst = self._path(raw_src), self._path(raw_dst)
        self._refuse_root(src, "rename")
        self._refuse_root(dst, "replace")
        await self._backend.rename(src, dst, self._session, overwrite=overwrite)

    async def realpath(self, path: bytes) -> bytes:
        """Canonical form of a client path, as the client sees it."""
        return await self._run("get_cwd", self._realpath(path), {"path": path})

    async def _realpath(self, raw: bytes) -> bytes:
        return paths.normalize(paths.decode(raw)).encode("utf-8")

    async def statvfs(self, path: bytes) -> SFTPVFSAttrs:
        """Capacity of the storage holding a path."""
        return await self._run("disk_usage", self._statvfs(self._path(path)), {"path": path})

    async def _statvfs(self, path: str) -> SFTPVFSAttrs:
        if self._backend.disk_usage is None:
            raise Unsupported("This storage does not report its capacity")
        info = await self._backend.disk_usage(path, self._session)
        block = max(1, info.block_size)
        return SFTPVFSAttrs(
            bsize=block,
            frsize=block,
            blocks=info.total // block,
            bfree=info.free // block,
            bavail=info.free // block,
            files=0,
            ffree=0,
            favail=0,
            fsid=0,
            flag=0,
            namemax=info.max_name_length,
        )

    async def readlink(self, path: bytes) -> bytes:
        """Refused: this storage has no symbolic links."""
        return await self._run("read_link", _unsupported("Symbolic links are not supported"),
                               {"path": path})  # fmt: skip

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        """Refused: this storage has no symbolic links."""
        await self._run("make_symlink", _unsupported("Symbolic links are not supported"),
                        {"src_path": oldpath, "dst_path": newpath})  # fmt: skip

    async def link(self, oldpath: bytes, newpath: bytes) -> None:
        """Refused: this storage has no hard links."""
        raise to_sftp_error(Unsupported("Hard links are not supported"))

    # ------------------------------------------------------------------ host-FS defaults

    def map_path(self, path: bytes) -> bytes:
        """Map a client path to the backend path (never a host path)."""
        return self._path(path).encode("utf-8")

    def reverse_map_path(self, path: bytes) -> bytes:
        """Map a backend path back to what the client sees."""
        return paths.unscope(self._root, paths.decode(path)).encode("utf-8")

    async def convert_attrs(self, result: Any) -> SFTPAttrs:
        """Normalize a stat result (always SFTPAttrs or FileAttrs here)."""
        if isinstance(result, Awaitable):
            result = await result
        if isinstance(result, FileAttrs):
            return to_sftp_attrs(result)
        return cast(SFTPAttrs, result)

    async def _to_sftpname(self, parent: bytes, name: bytes) -> SFTPName:
        """Build a name entry from the backend, never from the host file system."""
        full = paths.join(paths.normalize(paths.decode(parent)), paths.decode(name))
        attrs = await self.lstat(full.encode("utf-8"))
        return SFTPName(name, attrs=attrs)

    def format_user(self, uid: int | None) -> str:
        """Owner shown by ``ls -l``: the session's user (no host user database lookup)."""
        return self._session.username if not uid else str(uid)

    def format_group(self, gid: int | None) -> str:
        """Group shown by ``ls -l`` (no host group database lookup)."""
        return self._session.username if not gid else str(gid)

    def format_longname(self, name: SFTPName) -> None:
        """Fill in the ``ls -l`` line of a listing entry."""
        attrs = name.attrs
        mode = stat_module.filemode(attrs.permissions) if attrs.permissions is not None else ""
        nlink = str(attrs.nlink) if attrs.nlink else "1"
        size = str(attrs.size) if attrs.size is not None else ""
        if attrs.mtime is not None:
            now = time.time()
            when = time.localtime(attrs.mtime)
            recent = now - 182 * 86400 < attrs.mtime <= now + 86400
            stamp = time.strftime("%b %e %H:%M" if recent else "%b %e  %Y", when)
        else:
            stamp = ""
        user = self.format_user(attrs.uid)
        group = self.format_group(attrs.gid)
        detail = f"{mode:10s} {nlink:>4s} {user:8s} {group:8s} {size:>8s} {stamp:12s} "
        name.longname = detail.encode("utf-8") + cast(bytes, name.filename)

    async def exit(self) -> None:
        """The channel closed: abort whatever is still open."""
        for handle in list(self._handles):
            try:
                await handle.close(commit=False)
            except Exception:
                log.warning("aborting %s at session end failed", handle.path, exc_info=True)
        self._handles.clear()
        owner = self.channel.get_connection().get_owner()
        adapters = getattr(owner, "adapters", None)
        if adapters is not None:
            adapters.discard(self)
