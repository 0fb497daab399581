"""Requests on the tree: stat, listings, removes, renames, links, paths, capacity."""

from __future__ import annotations

import time

from .. import paths
from .._sftp.codec import WireAttrs
from ..backend import AttrChanges, FileAttrs, FileType
from ..errors import (
    FileAlreadyExists,
    InvalidParameter,
    NoSuchFile,
    NotADirectory,
    PermissionDenied,
    Unsupported,
)
from ..telemetry import SFTP_EVENTS, Meta
from .base import READDIR_BATCH, UMASK, DirHandle, RequestBase
from .wire import longname, wire_attrs

__all__ = ["TreeRequests"]


class TreeRequests(RequestBase):
    """Requests on names and directories."""

    async def stat(self, raw: bytes) -> bytes:
        """Attributes of a path, following symbolic links."""
        return await self._run("read_file_info", self._stat(raw, follow=True), {"path": raw})

    async def lstat(self, raw: bytes) -> bytes:
        """Attributes of a path itself (a symbolic link is reported as one)."""
        return await self._run("read_link_info", self._stat(raw, follow=False), {"path": raw})

    async def _stat(self, raw: bytes, *, follow: bool) -> bytes:
        path = self._path(raw)
        self._hidden(path)
        if not follow:
            attrs: FileAttrs | None = await self._lstat(path)
        else:
            path, attrs = await self._resolve(path)
        if attrs is None:
            raise NoSuchFile()
        self._hidden(path)
        self._may_see(path, attrs)
        return wire_attrs(attrs)

    async def opendir(self, raw: bytes) -> bytes:
        """Open a directory for listing; fails here if it is missing or a file."""
        meta: Meta = {"path": raw, "entries": 0}
        return await self._run("list_dir", self._opendir(raw), meta, report=False)

    async def _opendir(self, raw: bytes) -> bytes:
        self._hidden(self._path(raw))
        self._check("list", self._path(raw))
        await self._veto("list", self._path(raw))
        directory, attrs = await self._resolve(self._path(raw))
        if attrs is None:
            raise NoSuchFile()
        if not attrs.is_dir:
            raise NotADirectory()
        self._check("list", directory)
        parent = paths.parent(directory) if directory != self._root else directory
        parent_attrs = attrs if parent == directory else await self._lstat(parent)
        prefix = directory.rstrip("/") + "/"
        uploads = {
            path[len(prefix) :]: handles[-1]
            for path, handles in self._state.uploads.items()
            if handles and paths.parent(path) == directory and path.startswith(prefix)
        }
        name = self._new_handle()
        self._handles[name] = DirHandle(
            directory,
            self._client(directory),
            [(".", attrs), ("..", parent_attrs)],
            self._backend.list_dir(directory, self._session).__aiter__(),
            uploads,
        )
        return name

    async def readdir(self, name: bytes) -> list[tuple[bytes, bytes, bytes]]:
        """The next batch of a listing; empty at the end."""
        found = self._get(name, DirHandle)
        meta: Meta = {"path": found.client_path, "entries": found.count}
        batch = await self._run("list_dir", self._readdir(found, meta), meta, report=False)
        if found.entries is None and not found.reported:
            found.reported = True
            event = SFTP_EVENTS["list_dir"]
            if self._bus.listening(event):
                meta["result"] = "ok"
                self._emit(event, found.started, meta)
        return batch

    async def _readdir(self, directory: DirHandle, meta: Meta) -> list[tuple[bytes, bytes, bytes]]:
        batch: list[tuple[str, FileAttrs]] = directory.head
        directory.head = []
        entries = directory.entries
        while entries is not None and len(batch) < READDIR_BATCH:
            try:
                entry = await entries.__anext__()
            except StopAsyncIteration:
                directory.entries = entries = None
                batch.extend((n, h.attrs()) for n, h in directory.uploads.items())
                directory.uploads = {}
                break
            if entry.name in (".", "..") or "/" in entry.name:
                continue
            if not self._listed(directory.path, entry.name, entry.attrs):
                continue
            upload = directory.uploads.pop(entry.name, None)
            batch.append((entry.name, upload.attrs() if upload is not None else entry.attrs))
        self._state.last_active = time.monotonic()
        directory.count += sum(1 for n, _ in batch if n not in (".", ".."))
        meta["entries"] = directory.count
        owner = self._session.username
        return [
            (n.encode("utf-8"), longname(n, a, owner).encode("utf-8"), wire_attrs(a))
            for n, a in batch
        ]

    def _listed(self, directory: str, name: str, attrs: FileAttrs) -> bool:
        """Whether a listing shows this entry: not a hidden name, and for a drop box
        only directories and the session's own files.
        """
        permissions = self._session.permissions
        if permissions.hidden_names and permissions.hides(name):
            return False
        if permissions.own_files_only and not attrs.is_dir:
            return self._own(paths.join(directory, name))
        return True

    async def remove(self, raw: bytes) -> None:
        """Remove a file."""
        await self._run("delete", self._remove(raw), {"path": raw})

    async def _remove(self, raw: bytes) -> None:
        path = self._path(raw)
        self._hidden(path)
        self._check("delete", path)
        self._refuse_root(path, "remove")
        await self._veto("remove", path)
        ledger = self._state.ledger
        gone = await self._file_size(path) if ledger is not None else None
        await self._backend.remove_file(path, self._session)
        self._state.own_files.discard(path)
        if ledger is not None and gone is not None:
            await ledger.change(-gone, -1)

    async def mkdir(self, raw: bytes, attrs: WireAttrs) -> None:
        """Create a directory."""
        await self._run("make_dir", self._mkdir(raw, attrs), {"path": raw})

    async def _mkdir(self, raw: bytes, attrs: WireAttrs) -> None:
        path = self._path(raw)
        self._hidden(path)
        self._check("mkdir", path)
        self._check_name(path)
        if path == self._root:
            raise FileAlreadyExists()
        await self._veto("mkdir", path)
        await self._backend.make_dir(path, self._session)
        if attrs.permissions is not None and self._backend.set_attrs is not None:
            changes = AttrChanges(permissions=attrs.permissions & 0o7777 & ~UMASK)
            await self._backend.set_attrs(path, changes, self._session)

    async def rmdir(self, raw: bytes) -> None:
        """Remove an empty directory."""
        await self._run("del_dir", self._rmdir(raw), {"path": raw})

    async def _rmdir(self, raw: bytes) -> None:
        path = self._path(raw)
        self._hidden(path)
        self._check("rmdir", path)
        self._refuse_root(path, "remove")
        await self._veto("rmdir", path)
        await self._backend.remove_dir(path, self._session)

    async def rename(self, old: bytes, new: bytes, *, overwrite: bool) -> None:
        """Rename; ``overwrite`` (posix-rename) replaces an existing target."""
        meta: Meta = {"src_path": old, "dst_path": new, "overwrite": overwrite}
        await self._run("rename", self._rename(old, new, overwrite), meta)

    async def _rename(self, raw_src: bytes, raw_dst: bytes, overwrite: bool) -> None:
        src, dst = self._path(raw_src), self._path(raw_dst)
        self._hidden(src)
        self._hidden(dst)
        self._check("rename", src)
        self._check("rename", dst)
        self._check_name(dst)
        self._refuse_root(src, "rename")
        self._refuse_root(dst, "replace")
        if self._session.permissions.own_files_only and not self._own(src):
            raise NoSuchFile()
        ledger = self._state.ledger
        counted = ledger is not None and src != dst  # a replaced file gives its space back
        guarded = overwrite and not self._session.permissions.allows(
            "overwrite", self._client(dst))[0]  # fmt: skip
        # One stat of the target serves both: the overwrite check and the quota.
        replaced = await self._file_size(dst) if guarded or counted else None
        if guarded and replaced is not None:
            self._check("overwrite", dst)
        await self._veto("rename", src, dst)
        # Settled here for every backend: onto itself nothing moves (if it is there, as
        # rename(2)); a directory cannot move into itself.
        if src == dst:
            await self._lstat(src)
            return
        if dst.startswith(src + "/") and (await self._lstat(src)).is_dir:
            raise InvalidParameter("Cannot move a directory into itself")
        await self._backend.rename(src, dst, self._session, overwrite=overwrite)
        if src in self._state.own_files:
            self._state.own_files.discard(src)
            self._state.own_files.add(dst)
        if ledger is not None and counted and replaced is not None:
            await ledger.change(-replaced, -1)

    async def realpath(self, raw: bytes) -> str:
        """Canonical form of a client path, as the client sees it."""
        return await self._run("get_cwd", self._realpath(raw), {"path": raw})

    async def _realpath(self, raw: bytes) -> str:
        return paths.normalize(paths.decode(raw), self._home_dir)

    async def expand_path(self, raw: bytes) -> str:
        """expand-path: like realpath, with ``~`` and ``~/...`` taken from the home."""
        return await self._run("get_cwd", self._expand(raw), {"path": raw})

    async def _expand(self, raw: bytes) -> str:
        text = paths.decode(raw)
        if text == "~" or text.startswith("~/"):
            text = self._home_dir + "/" + text[2:]
        elif text.startswith("~"):
            user = text[1:].partition("/")[0]
            if user != self._session.username:
                raise NoSuchFile("Unknown user")
            text = self._home_dir + "/" + text[1 + len(user) :].lstrip("/")
        return paths.normalize(text, self._home_dir)

    async def home_directory(self, raw_user: bytes) -> str:
        """home-directory: the session's home (``/`` unless the ``home`` attribute says),
        for its own user only.
        """
        return await self._run("get_cwd", self._home(raw_user), {"path": b"/"})

    async def _home(self, raw_user: bytes) -> str:
        user = raw_user.decode("utf-8", "replace")
        if user and user != self._session.username:
            raise NoSuchFile("Unknown user")
        return self._home_dir

    async def statvfs(self, raw: bytes) -> bytes:
        """Capacity of the storage holding a path."""
        return await self._run("disk_usage", self._statvfs(raw), {"path": raw})

    async def readlink(self, raw: bytes) -> str:
        """The target of a symbolic link, as it was written."""
        return await self._run("read_link", self._readlink(raw), {"path": raw})

    async def _readlink(self, raw: bytes) -> str:
        path = self._path(raw)
        if self._backend.read_link is None:
            raise Unsupported("Symbolic links are not supported")
        attrs = await self._lstat(path)
        if attrs.type is not FileType.SYMLINK:
            raise InvalidParameter("Not a symbolic link")
        target: str = await self._backend.read_link(path, self._session)
        return target

    async def symlink(self, raw_target: bytes, raw_link: bytes) -> None:
        """Create a symbolic link at ``raw_link`` that points to ``raw_target``."""
        meta: Meta = {"src_path": raw_target, "dst_path": raw_link}
        await self._run("make_symlink", self._symlink(raw_target, raw_link), meta)

    async def _symlink(self, raw_target: bytes, raw_link: bytes) -> None:
        link = self._path(raw_link)
        self._hidden(link)
        self._check("symlink", link)
        self._check_name(link)
        if self._backend.make_symlink is None:
            raise Unsupported("Symbolic links are not supported")
        self._refuse_root(link, "replace")
        target = paths.decode(raw_target)
        if not target:
            raise InvalidParameter("Empty link target")
        await self._veto("symlink", link)
        await self._backend.make_symlink(target, link, self._session)

    async def hardlink(self, raw_old: bytes, raw_new: bytes) -> None:
        """hardlink@openssh.com: a second name for an existing file."""
        meta: Meta = {"src_path": raw_old, "dst_path": raw_new}
        await self._run("make_link", self._hardlink(raw_old, raw_new), meta)

    async def _hardlink(self, raw_old: bytes, raw_new: bytes) -> None:
        old, new = self._path(raw_old), self._path(raw_new)
        self._hidden(old)
        self._hidden(new)
        self._check("link", new)
        self._check("download", old)  # a second name to read it by
        self._check_name(new)
        if self._backend.make_link is None:
            raise Unsupported("Hard links are not supported")
        self._refuse_root(new, "replace")
        attrs = await self._lstat(old)
        if attrs.is_dir:
            raise PermissionDenied("Directories cannot be hard-linked")
        await self._veto("link", old, new)
        await self._backend.make_link(old, new, self._session)
