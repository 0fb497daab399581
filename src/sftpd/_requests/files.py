"""Requests on files: open, read, write, close (the commit), attributes, digests."""

from __future__ import annotations

import inspect
import time

from .._digests import ALGORITHMS, HashCommand, choose_algorithm, hash_range
from .._handles import FileHandle, OpenMode, within
from .._ingest import Inspector
from .._policy import Operation
from .._sftp import codec
from .._sftp.codec import WireAttrs
from .._upload import Upload
from ..backend import FileAttrs, FileType
from ..errors import (
    FileAlreadyExists,
    IsADirectory,
    NoSuchFile,
    PermissionDenied,
    SftpStatus,
    Unsupported,
)
from ..telemetry import Meta
from .base import UMASK, DirHandle, Refused, RequestBase
from .wire import flag_names, open_mode, to_changes, wire_attrs

__all__ = ["FileRequests"]


def close_meta(handle: FileHandle, *, abandoned: bool) -> Meta:
    return {
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


class FileRequests(RequestBase):
    """Requests on files and their attributes."""

    async def open(self, raw: bytes, pflags: int, attrs: WireAttrs) -> bytes:
        """Open a file (SFTP v3 flags); returns the handle."""
        meta: Meta = {"path": raw, "requested_modes": flag_names(pflags)}
        return await self._run("open", self._open(raw, pflags, attrs, meta), meta)

    async def _open(self, raw: bytes, pflags: int, attrs: WireAttrs, meta: Meta) -> bytes:
        mode = open_mode(pflags)
        meta["mode"] = mode.label
        meta["open_timeout"] = self._settings.open_timeout
        path = self._path(raw)
        name = self._new_handle()
        try:
            handle = await within(
                self._settings.open_timeout, self._open_backend(path, mode, attrs, int(name))
            )
        except TimeoutError:
            self._state.open_handles -= 1
            raise SftpStatus(codec.FX_FAILURE, "Opening the file timed out") from None
        except BaseException:
            self._state.open_handles -= 1
            raise
        self._handles[name] = handle
        if mode.write:
            self._state.uploads.setdefault(handle.path, []).append(handle)
        meta["handle"] = handle.id
        return name

    async def _open_backend(
        self, path: str, mode: OpenMode, attrs: WireAttrs, handle_id: int
    ) -> FileHandle:
        self._hidden(path)
        resolved, existing = await self._resolve(path, walk_missing=not mode.create)
        self._check_open(resolved, existing, mode)
        if mode.read:
            await self._veto("read", path)
        if mode.write:
            await self._veto("write", path)
        try:
            return await self._open_handle(resolved, existing, mode, attrs, handle_id)
        except (FileNotFoundError, PermissionError):
            if existing is not None or self._backend.read_link is None:
                raise
            # A new file whose directories may hold a link: walk them, then try again.
            walked = await self._resolve_dirs(resolved)
            if walked == resolved:
                raise
            resolved, existing = await self._resolve(walked)
            self._check_open(resolved, existing, mode)
            return await self._open_handle(resolved, existing, mode, attrs, handle_id)

    def _check_open(self, path: str, existing: FileAttrs | None, mode: OpenMode) -> None:
        """An open is a download, an upload of a new file or an overwrite of one."""
        self._hidden(path)
        own = self._own(path)
        permissions = self._session.permissions
        if existing is not None and not existing.is_dir and not own and permissions.own_files_only:
            # A drop box sees no file but its own: refuse as if it were not there to
            # read, and as existing (never overwritten) to write.
            if mode.write and not mode.read:
                raise Refused("The file exists; overwriting is not allowed", "drop box")
            raise NoSuchFile()
        if mode.read:
            self._check("download", path)
        if mode.write:
            if existing is None:
                self._check("upload", path)
                self._check_name(path)
            else:
                self._check("overwrite", path)

    async def _open_handle(
        self,
        path: str,
        existing: FileAttrs | None,
        mode: OpenMode,
        attrs: WireAttrs,
        handle_id: int,
    ) -> FileHandle:
        if existing is not None and existing.is_dir:
            raise IsADirectory()
        if mode.write:
            if path == self._root:
                raise IsADirectory()
            if existing is not None and mode.create and mode.exclusive:
                raise FileAlreadyExists()
            if existing is None and not mode.create:
                raise NoSuchFile()
        elif existing is None:
            raise NoSuchFile()
        upload = self._state.upload_of(path)
        if upload is not None and existing is not None and not mode.truncate:
            # The file is being written by this session: a new handle starts from what
            # that upload holds, not from the stored file it will replace.
            existing = upload.attrs()
        inspector = await self._inspector(path, mode, existing)
        handle = FileHandle(
            backend=self._backend,
            session=self._session,
            path=path,
            client_path=self._client(path),
            mode=mode,
            attrs=existing,
            close_timeout=self._settings.close_timeout,
            handle_id=handle_id,
            source=upload if upload is not None and not mode.write else None,
            inspector=inspector,
            digests=self._settings.upload_digests,
            quota=self._state.ledger,
        )
        await handle.start()
        if mode.write and existing is None and attrs.permissions is not None:
            # A new file gets the mode the client asked for, less the usual umask (022),
            # as OpenSSH's sftp-server creates it.
            handle.set_initial_permissions(attrs.permissions & 0o7777 & ~UMASK)
        return handle

    async def _inspector(
        self, path: str, mode: OpenMode, existing: FileAttrs | None
    ) -> Inspector | None:
        """The server's inspector for an upload of ``path``, if it wants to see this one."""
        make = self._settings.inspector
        if make is None or not mode.write:
            return None
        inspector = make(Operation(self._session, "write", self._client(path)))
        if inspect.isawaitable(inspector):
            inspector = await inspector
        if inspector is None:
            return None
        if existing is not None and not mode.truncate and existing.size:
            raise PermissionDenied("Uploads here are inspected whole: appending to or "
                                   "resuming a stored file is not allowed")  # fmt: skip
        return inspector

    async def close(self, name: bytes) -> None:
        """Close a handle; an upload is committed, and a failed commit fails the close."""
        found = self._handles.get(name)
        if isinstance(found, DirHandle):
            self._forget(name)
            await self._close_dir(found)
            return
        handle = self._file(name)
        meta = close_meta(handle, abandoned=False)
        try:
            stored = await self._run("close", self._close_file(handle, True, meta), meta)
        finally:
            self._forget(name)
        if stored:
            self._state.own_files.add(handle.path)
            self._notify(handle)

    def _notify(self, handle: FileHandle) -> None:
        callback = self._settings.on_upload
        if callback is not None:
            callback(
                Upload(
                    session=self._session,
                    path=handle.client_path,
                    backend_path=handle.path,
                    size=handle.size,
                    bytes_written=handle.bytes_written,
                )
            )

    async def read(self, name: bytes, offset: int, length: int) -> bytes:
        """Read from an open file; ``b""`` at the end."""
        handle = self._file(name)
        meta: Meta = {"handle": handle.id, "offset": offset, "bytes_requested": length}
        data = await self._run("read", handle.read(offset, length), meta)
        self._state.bytes_out += len(data)
        if self._state.shaper is not None:
            await self._state.shaper.pace("download", len(data))
        return data

    async def write(self, name: bytes, offset: int, data: bytes) -> None:
        """Write to an open file."""
        handle = self._file(name)
        meta: Meta = {"handle": handle.id, "offset": offset, "bytes": len(data)}
        await self._run("write", handle.write(offset, data), meta)
        self._state.bytes_in += len(data)
        if self._state.shaper is not None:
            await self._state.shaper.pace("upload", len(data))

    async def fstat(self, name: bytes) -> bytes:
        """Attributes of an open file, including what was written so far."""
        found = self._handles.get(name)
        if isinstance(found, DirHandle):  # the directory may be gone: a status, not a crash
            meta: Meta = {"path": found.client_path.encode("utf-8")}
            return wire_attrs(await self._run("read_link_info", self._lstat(found.path), meta))
        return wire_attrs(self._file(name).attrs())

    async def fsetstat(self, name: bytes, attrs: WireAttrs) -> None:
        """Change an open file's size, times or permissions."""
        found = self._handles.get(name)
        if isinstance(found, DirHandle):
            await self.setstat(found.client_path.encode("utf-8"), attrs)
            return
        handle = self._file(name)
        meta: Meta = {"handle": handle.id, "path": handle.client_path}
        await self._run("write_file_info", self._fsetstat(handle, attrs), meta)

    async def _fsetstat(self, handle: FileHandle, attrs: WireAttrs) -> None:
        changes = to_changes(attrs)
        self._check_setstat(handle.path, changes, handle.size, handle.mode.write)
        await self._veto("setstat", handle.path)
        await handle.set_attrs(changes)

    async def fstatvfs(self, name: bytes) -> bytes:
        """Capacity of the storage holding an open file."""
        found = self._handles.get(name)  # a file or a directory
        if found is None:
            raise SftpStatus(codec.FX_FAILURE, "Invalid handle")
        meta: Meta = {"path": found.client_path}
        return await self._run("disk_usage", self._statvfs(found.path), meta)

    async def copy_data(
        self, source: bytes, offset: int, length: int, target: bytes, target_offset: int
    ) -> None:
        """copy-data: copy a range of one open file into another, on the server."""
        src, dst = self._file(source), self._file(target)
        meta: Meta = {"handle": dst.id, "src_path": src.client_path, "dst_path": dst.client_path}
        await self._run("copy_data", dst.copy_from(src, offset, length, target_offset), meta)

    async def check_file(
        self, *, handle: bytes | None, raw: bytes | None, algorithms: bytes, offset: int,
        length: int, block_size: int,
    ) -> bytes:  # fmt: skip
        """check-file-handle / check-file-name: digests of a range of a file, as the
        extended reply's body (``check-file``, the algorithm used, the digests).
        """
        meta: Meta = {"offset": offset, "length": length, "path": raw}

        async def check() -> bytes:  # inside the request: every failure is a status
            algorithm = meta["algorithm"] = choose_algorithm(algorithms)
            if handle is not None:
                found = self._file(handle)
                meta["path"] = found.client_path
                digests = await self._hash_handle(found, algorithm, offset, length, block_size)
            else:
                assert raw is not None
                digests = await self._hash_path(raw, algorithm, offset, length, block_size)
            return codec.string(b"check-file") + codec.string(algorithm.encode()) + digests

        result: bytes = await self._run("check_file", check(), meta)
        return result

    async def _hash_handle(
        self, handle: FileHandle, algorithm: str, offset: int, length: int, block_size: int
    ) -> bytes:
        if not handle.mode.read:
            raise PermissionDenied("File not open for reading")
        if not handle.mode.write and self._state.upload_of(handle.path) is None:
            stored = await self._stored_digest(handle.path, handle.size, algorithm, offset,
                                               length, block_size)  # fmt: skip
            if stored is not None:
                return stored
        return await hash_range(handle.read, algorithm, offset, length, block_size)

    async def _stored_digest(
        self, path: str, size: int, algorithm: str, offset: int, length: int, block_size: int
    ) -> bytes | None:
        """The digest kept with the file, when the request is for the whole of it."""
        read = self._backend.read_digests
        whole = offset == 0 and block_size == 0 and length in (0, size)
        if read is None or not whole:
            return None
        digests = await read(path, self._session)
        value = digests.get(algorithm) if digests else None
        return bytes.fromhex(value) if value else None

    async def _hash_path(
        self, raw: bytes, algorithm: str, offset: int = 0, length: int = 0, block_size: int = 0
    ) -> bytes:
        path = self._path(raw)
        reading = OpenMode(read=True, write=False, append=False, create=False, truncate=False,
                           exclusive=False)  # fmt: skip
        handle = await within(self._settings.open_timeout,
                              self._open_backend(path, reading, WireAttrs(), -1))  # fmt: skip
        try:
            return await self._hash_handle(handle, algorithm, offset, length, block_size)
        finally:
            await handle.close(commit=False)

    async def hash_command(self, command: HashCommand) -> tuple[bytes, bytes, int]:
        """Answer one of rclone's exec commands: stdout, stderr and exit status, as the
        real command would print them.
        """
        if command.kind == "probe":
            return b"%ComSpec%\n", b"", 0  # what a POSIX sh prints: no Windows here
        tool = "md5sum" if command.algorithm == "md5" else "sha1sum"
        if command.kind == "empty":
            empty = ALGORITHMS[command.algorithm]().hexdigest()
            return f"{empty}  -\n".encode(), b"", 0
        name = command.path.decode("utf-8", "replace")
        try:
            meta: Meta = {"path": command.path, "algorithm": command.algorithm, "command": tool}
            work = self._hash_path(command.path, command.algorithm)
            digest = await self._run("check_file", work, meta)
        except SftpStatus as status:
            return b"", f"{tool}: {name}: {status.reason}\n".encode(), 1
        return f"{digest.hex()}  {name}\n".encode(), b"", 0

    async def fsync(self, name: bytes) -> None:
        """Not offered: an upload is stored when it is closed, and not before."""
        raise Unsupported("Data is stored when the file is closed")

    async def setstat(self, raw: bytes, attrs: WireAttrs, *, link: bool = False) -> None:
        """Change a path's size, times or permissions (``link``: of a link itself)."""
        await self._run("write_file_info", self._setstat(raw, attrs, link), {"path": raw})

    async def _setstat(self, raw: bytes, attrs: WireAttrs, link: bool) -> None:
        path = self._path(raw)
        self._hidden(path)
        if link:
            current: FileAttrs | None = await self._lstat(path)
        else:
            path, current = await self._resolve(path)
        if current is None:
            raise NoSuchFile()
        self._outside_drop_box(path, current)
        changes = to_changes(attrs)
        upload = self._state.upload_of(path)
        self._check_setstat(path, changes, current.size, upload is not None)
        await self._veto("setstat", path)
        if changes.size is not None and current.is_dir:
            raise IsADirectory()
        if changes.is_empty():
            return
        upload = self._state.upload_of(path)
        if upload is not None:
            await upload.set_attrs(changes)
            return
        if current.type is FileType.SYMLINK:
            return  # links have no mode or times of their own here; as on Linux
        if self._backend.set_attrs is not None:
            resized = changes.size is not None and changes.size != current.size
            ledger = self._state.ledger
            if resized and ledger is not None and changes.size is not None:
                if changes.size > current.size:  # room first; a shrink gives it back after
                    await ledger.change(changes.size - current.size, 0)
                    await self._backend.set_attrs(path, changes, self._session)
                    return
                await self._backend.set_attrs(path, changes, self._session)
                await ledger.change(changes.size - current.size, 0)
                return
            await self._backend.set_attrs(path, changes, self._session)
        elif changes.size is not None and changes.size != current.size:
            raise Unsupported("This storage cannot resize files")
        # Without set_attrs, times and modes are accepted and ignored: clients such as
        # WinSCP set them after every upload and must not fail because of it.
