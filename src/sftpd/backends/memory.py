"""In-memory storage: a real directory tree in one process, for development and tests.

It has full file-system semantics (nested directories, size, mtime, permissions, moves of
whole directories, writes at any offset with holes read as zeros) and implements every
optional capability, so it doubles as the reference backend. File contents live in 1 MiB
blocks: memory stays close to the bytes stored, an upload never holds two copies, and a
resumed upload copies only the blocks it changes.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from .. import paths
from .._session import Session
from ..backend import AttrChanges, DirEntry, FileAttrs, FileType, SpaceInfo
from ..errors import (
    DirectoryNotEmpty,
    FileAlreadyExists,
    InvalidParameter,
    IsADirectory,
    NoSpace,
    NoSuchFile,
    NotADirectory,
    PermissionDenied,
)

__all__ = ["MemoryBackend"]

BLOCK_SIZE = 1 << 20


class _Extents:
    """A block written front to back: the received pieces themselves, never copied.

    Uploads arrive in order as exact-size ``bytes`` objects; keeping (views of) them is
    cheaper than copying them into a block, and uses no more memory.
    """

    __slots__ = ("length", "pieces", "starts")

    def __init__(self) -> None:
        self.pieces: list[memoryview] = []
        self.starts: list[int] = []
        self.length = 0

    def append(self, piece: memoryview) -> None:
        self.pieces.append(piece)
        self.starts.append(self.length)
        self.length += len(piece)

    def clone(self) -> _Extents:
        other = _Extents()
        other.pieces = list(self.pieces)
        other.starts = list(self.starts)
        other.length = self.length
        return other

    def views(self, start: int, stop: int) -> list[memoryview]:
        """Views covering ``[start, stop)`` (``stop <= length``)."""
        out: list[memoryview] = []
        i = bisect.bisect_right(self.starts, start) - 1
        while start < stop:
            piece, base = self.pieces[i], self.starts[i]
            take = min(stop, base + len(piece)) - start
            out.append(piece[start - base : start - base + take])
            start += take
            i += 1
        return out

    def join(self) -> bytes:
        return b"".join(self.pieces)


_Slot = bytes | bytearray | _Extents | None


class Blob:
    """File content in blocks of up to 1 MiB, copy-on-write between copies.

    A block holds the bytes from its start up to the last byte written in it; anything
    past a block's length, and any missing block, reads as zeros. A block written front
    to back keeps the uploaded pieces as they came (:class:`_Extents`): an upload is not
    copied at all after asyncssh decoded it. Other writes turn a block into a bytearray.
    """

    __slots__ = ("_blocks", "_owned", "size")

    def __init__(self, data: bytes = b"") -> None:
        self._blocks: list[_Slot] = []
        self._owned: set[int] = set()
        self.size = 0
        if data:
            self.write(0, data)

    def copy(self) -> Blob:
        """Return a copy sharing all blocks; whichever is written copies a block first."""
        other = Blob()
        other._blocks = list(self._blocks)
        other.size = self.size
        self._owned.clear()
        return other

    def read(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``offset`` (holes read as zeros)."""
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        pieces: list[bytes | memoryview] = []
        pos = offset
        while pos < end:
            index = pos // BLOCK_SIZE
            start = pos - index * BLOCK_SIZE
            take = min(BLOCK_SIZE - start, end - pos)
            block = self._blocks[index] if index < len(self._blocks) else None
            if block is None:
                pieces.append(bytes(take))
            else:
                filled = block.length if isinstance(block, _Extents) else len(block)
                have = max(0, min(take, filled - start))
                if isinstance(block, _Extents):
                    pieces.extend(block.views(start, start + have))
                elif have:
                    pieces.append(memoryview(block)[start : start + have])
                if have < take:
                    pieces.append(bytes(take - have))
            pos += take
        if len(pieces) == 1:
            return bytes(pieces[0])
        return b"".join(pieces)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``offset``, growing the file (with a hole) if needed."""
        if not isinstance(data, bytes):
            data = bytes(data)  # keep our own copy of mutable input
        view = memoryview(data)
        pos = offset
        while view:
            index = pos // BLOCK_SIZE
            start = pos - index * BLOCK_SIZE
            take = min(BLOCK_SIZE - start, len(view))
            piece = view[:take]
            if index >= len(self._blocks):
                self._blocks.extend([None] * (index + 1 - len(self._blocks)))
            slot = self._blocks[index]
            if slot is None and start == 0:
                slot = _Extents()
                self._blocks[index] = slot
                self._owned.add(index)
            if isinstance(slot, _Extents) and start == slot.length:
                if index not in self._owned:
                    slot = slot.clone()
                    self._blocks[index] = slot
                    self._owned.add(index)
                slot.append(piece)
            else:
                block = self._writable(index)
                if start > len(block):
                    block += bytes(start - len(block))
                block[start : start + take] = piece
            view = view[take:]
            pos += take
        self.size = max(self.size, offset + len(data))

    def truncate(self, size: int) -> None:
        """Cut or extend (with zeros) the content to ``size`` bytes."""
        if size < self.size:
            keep = (size + BLOCK_SIZE - 1) // BLOCK_SIZE
            del self._blocks[keep:]
            self._owned = {i for i in self._owned if i < keep}
            tail = size - (keep - 1) * BLOCK_SIZE if keep else 0
            if keep and len(self._blocks) == keep and self._blocks[keep - 1] is not None:
                block = self._writable(keep - 1)
                if len(block) > tail:
                    del block[tail:]
        self.size = size

    def _writable(self, index: int) -> bytearray:
        """The block at ``index`` as a bytearray owned by this blob (created if a hole)."""
        slot = self._blocks[index]
        if isinstance(slot, bytearray) and index in self._owned:
            return slot
        if isinstance(slot, _Extents):
            block = bytearray(slot.join())
        else:
            block = bytearray(slot) if slot is not None else bytearray()
        self._blocks[index] = block
        self._owned.add(index)
        return block

    def to_bytes(self) -> bytes:
        """Return the whole content."""
        return self.read(0, self.size)


@dataclass(slots=True)
class _Node:
    type: FileType
    mtime: float
    permissions: int
    atime: float | None = None
    blob: Blob | None = None
    children: dict[str, _Node] = field(default_factory=dict)
    target: str | None = None  # of a symbolic link
    links: int = 1  # names this node has (hard links)
    digests: dict[str, str] | None = None  # of the blob, as uploaded

    def attrs(self) -> FileAttrs:
        size = self.blob.size if self.blob is not None else 0
        if self.target is not None:
            size = len(self.target.encode("utf-8"))
        return FileAttrs(
            type=self.type,
            size=size,
            mtime=self.mtime,
            atime=self.atime,
            permissions=self.permissions,
        )


class MemoryBackend:
    """A directory tree held in memory, shared by every session of a server.

    Args:
        files: Initial files, ``{"/path/name.txt": b"content"}``; parent directories are
            created as needed.
        max_bytes: Capacity; an upload that would exceed it fails with "no space".
            ``None`` means only the machine's memory is the limit.
    """

    def __init__(
        self, files: Mapping[str, bytes] | None = None, *, max_bytes: int | None = None
    ) -> None:
        self._root = _Node(FileType.DIRECTORY, time.time(), 0o755)
        self.max_bytes = max_bytes
        self._used = 0
        for path, data in (files or {}).items():
            norm = paths.normalize(path)
            self._makedirs(paths.parent(norm))
            self._store(norm, Blob(data))

    # ------------------------------------------------------------------ tree helpers

    def _lookup(self, path: str) -> _Node:
        node = self._root
        if path == "/":
            return node
        for part in path[1:].split("/"):
            if node.type is not FileType.DIRECTORY:
                raise NoSuchFile()
            try:
                node = node.children[part]
            except KeyError:
                raise NoSuchFile() from None
        return node

    def _parent_dir(self, path: str) -> _Node:
        if path == "/":
            raise PermissionDenied("Cannot change the root directory")
        node = self._lookup(paths.parent(path))
        if node.type is not FileType.DIRECTORY:
            raise NoSuchFile("Parent is not a directory")
        return node

    def _makedirs(self, path: str) -> None:
        node = self._root
        if path == "/":
            return
        for part in path[1:].split("/"):
            child = node.children.get(part)
            if child is None:
                child = _Node(FileType.DIRECTORY, time.time(), 0o755)
                node.children[part] = child
            node = child

    def _store(self, path: str, blob: Blob, permissions: int = 0o644) -> None:
        parent = self._parent_dir(path)
        name = paths.basename(path)
        existing = parent.children.get(name)
        if existing is not None and existing.type is FileType.DIRECTORY:
            raise IsADirectory()
        if existing is not None and (existing.links > 1 or existing.target is not None):
            # Replacing a name that shares its file (or is a link) gives it a new file,
            # as a rename over it would: the other names keep the old content.
            self._unlink(existing)
            existing = None
        old_size = existing.blob.size if existing is not None and existing.blob else 0
        self._reserve(blob.size - old_size)
        now = time.time()
        if existing is not None:
            existing.blob = blob
            existing.mtime = now
            existing.digests = None
        else:
            parent.children[name] = _Node(FileType.FILE, now, permissions, blob=blob)
        parent.mtime = now

    def _unlink(self, node: _Node) -> None:
        """One name of ``node`` is gone; its bytes are freed with its last name."""
        node.links -= 1
        if node.links == 0 and node.blob is not None:
            self._used -= node.blob.size

    def _reserve(self, delta: int) -> None:
        if self.max_bytes is not None and delta > 0 and self._used + delta > self.max_bytes:
            raise NoSpace()
        self._used += delta

    @property
    def used_bytes(self) -> int:
        """Bytes held by committed files."""
        return self._used

    # ------------------------------------------------------------------ required

    async def stat(self, path: str, session: Session) -> FileAttrs:
        """Return the attributes of ``path``; :class:`NoSuchFile` if it is missing."""
        return self._lookup(path).attrs()

    async def list_dir(self, path: str, session: Session) -> AsyncIterator[DirEntry]:
        """Yield the entries of a directory, sorted by name."""
        node = self._lookup(path)
        if node.type is not FileType.DIRECTORY:
            raise NotADirectory()
        for name in sorted(node.children):
            child = node.children.get(name)
            if child is not None:
                yield DirEntry(name, child.attrs())

    async def make_dir(self, path: str, session: Session) -> None:
        """Create a directory; :class:`FileAlreadyExists` if the name is taken."""
        parent = self._parent_dir(path)
        name = paths.basename(path)
        if name in parent.children:
            raise FileAlreadyExists()
        now = time.time()
        parent.children[name] = _Node(FileType.DIRECTORY, now, 0o755)
        parent.mtime = now

    async def remove_dir(self, path: str, session: Session) -> None:
        """Remove an empty directory."""
        parent = self._parent_dir(path)
        node = self._lookup(path)
        if node.type is not FileType.DIRECTORY:
            raise NotADirectory()
        if node.children:
            raise DirectoryNotEmpty()
        del parent.children[paths.basename(path)]
        parent.mtime = time.time()

    async def remove_file(self, path: str, session: Session) -> None:
        """Remove a file; :class:`IsADirectory` for a directory."""
        parent = self._parent_dir(path)
        node = self._lookup(path)
        if node.type is FileType.DIRECTORY:
            raise IsADirectory()
        del parent.children[paths.basename(path)]
        self._unlink(node)
        parent.mtime = time.time()

    async def rename(self, src: str, dst: str, session: Session, *, overwrite: bool) -> None:
        """Move a file or a directory with everything under it."""
        src_parent = self._parent_dir(src)
        node = self._lookup(src)
        dst_parent = self._parent_dir(dst)
        if src == dst:
            return
        if dst.startswith(src + "/"):
            raise InvalidParameter("Cannot move a directory into itself")
        dst_name = paths.basename(dst)
        existing = dst_parent.children.get(dst_name)
        if existing is not None:
            if not overwrite:
                raise FileAlreadyExists()
            if existing.type is FileType.DIRECTORY:
                if node.type is not FileType.DIRECTORY:
                    raise IsADirectory()
                if existing.children:
                    raise DirectoryNotEmpty()
            elif node.type is FileType.DIRECTORY:
                raise NotADirectory()
            self._unlink(existing)
        del src_parent.children[paths.basename(src)]
        dst_parent.children[dst_name] = node
        now = time.time()
        src_parent.mtime = dst_parent.mtime = now

    async def read_file(self, path: str, session: Session) -> bytes:
        """Return a whole file."""
        return self._file(path).to_bytes()

    async def write_file(self, path: str, data: bytes, session: Session) -> None:
        """Create or replace a whole file."""
        self._store(path, Blob(data))

    # ------------------------------------------------------------------ optional

    async def read_range(self, path: str, offset: int, length: int, session: Session) -> bytes:
        """Return up to ``length`` bytes from ``offset``; ``b""`` at the end."""
        return self._file(path).read(offset, length)

    async def open_writer(
        self, path: str, session: Session, *, keep_existing: bool, exclusive: bool = False
    ) -> MemoryWriter:
        """Start an upload that becomes visible at commit (exclusive: only if still new)."""
        parent = self._parent_dir(path)
        existing = parent.children.get(paths.basename(path))
        if existing is not None and existing.type is FileType.DIRECTORY:
            raise IsADirectory()
        blob = Blob()
        if keep_existing and existing is not None and existing.blob is not None:
            blob = existing.blob.copy()
        return MemoryWriter(self, path, blob, exclusive=exclusive)

    async def set_attrs(self, path: str, changes: AttrChanges, session: Session) -> None:
        """Apply mtime, atime, permissions and size (truncate or extend) changes."""
        node = self._lookup(path)
        if changes.size is not None:
            if node.blob is None:
                raise IsADirectory()
            self._reserve(changes.size - node.blob.size)
            blob = node.blob.copy()
            blob.truncate(changes.size)
            node.blob = blob
            node.mtime = time.time()
            node.digests = None
        if changes.permissions is not None:
            node.permissions = changes.permissions & 0o7777
        if changes.mtime is not None:
            node.mtime = changes.mtime
        if changes.atime is not None:
            node.atime = changes.atime

    async def store_digests(self, path: str, digests: Mapping[str, str], session: Session) -> None:
        """Keep the file's digests beside its content (forgotten when it changes)."""
        node = self._lookup(path)
        if node.blob is not None:
            node.digests = dict(digests) or None

    async def read_digests(self, path: str, session: Session) -> Mapping[str, str] | None:
        """The digests kept with the file, if any."""
        node = self._lookup(path)
        return dict(node.digests) if node.digests else None

    async def read_link(self, path: str, session: Session) -> str:
        """The target of a symbolic link, as written."""
        node = self._lookup(path)
        if node.target is None:
            raise InvalidParameter("Not a symbolic link")
        return node.target

    async def make_symlink(self, target: str, link: str, session: Session) -> None:
        """Create a symbolic link whose content is ``target``."""
        parent = self._parent_dir(link)
        name = paths.basename(link)
        if name in parent.children:
            raise FileAlreadyExists()
        now = time.time()
        parent.children[name] = _Node(FileType.SYMLINK, now, 0o777, target=target)
        parent.mtime = now

    async def make_link(self, existing: str, new: str, session: Session) -> None:
        """Give a file a second name; both name the same content from now on."""
        node = self._lookup(existing)
        if node.type is FileType.DIRECTORY:
            raise PermissionDenied("Directories cannot be hard-linked")
        parent = self._parent_dir(new)
        name = paths.basename(new)
        if name in parent.children:
            raise FileAlreadyExists()
        node.links += 1
        parent.children[name] = node
        parent.mtime = time.time()

    async def disk_usage(self, path: str, session: Session) -> SpaceInfo:
        """Report ``max_bytes`` (or the machine's memory) as the capacity."""
        if self.max_bytes is not None:
            total = self.max_bytes
        else:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return SpaceInfo(total=total, free=max(0, total - self._used))

    def _file(self, path: str) -> Blob:
        node = self._lookup(path)
        if node.target is not None:
            raise PermissionDenied("Symbolic links are not followed")
        if node.blob is None:
            raise IsADirectory()
        return node.blob


class MemoryWriter:
    """An upload into a :class:`MemoryBackend`; readable, so read+write opens stream too.

    Its methods never await, so concurrent writes are safe.
    """

    concurrent_writes = True

    def __init__(
        self, backend: MemoryBackend, path: str, blob: Blob, *, exclusive: bool = False
    ) -> None:
        self._backend = backend
        self._path = path
        self._blob: Blob | None = blob
        self._exclusive = exclusive
        self.permissions: int | None = None  # of a new file, applied at commit

    def _live(self) -> Blob:
        if self._blob is None:
            raise InvalidParameter("Upload already finished")
        return self._blob

    async def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``."""
        blob = self._live()
        limit = self._backend.max_bytes
        if limit is not None and offset + len(data) - blob.size + self._backend.used_bytes > limit:
            raise NoSpace()
        blob.write(offset, data)

    async def read(self, offset: int, length: int) -> bytes:
        """Read back what the upload holds."""
        return self._live().read(offset, length)

    async def truncate(self, size: int) -> None:
        """Cut or extend the upload to ``size`` bytes."""
        self._live().truncate(size)

    async def copy_from(self, path: str, offset: int, length: int, target_offset: int) -> None:
        """copy-data: a whole file into an empty upload shares its blocks; else copies."""
        source = self._backend._file(path)
        blob = self._live()
        if offset == 0 and target_offset == 0 and length >= source.size and blob.size == 0:
            self._blob = source.copy()
            return
        await self.write(target_offset, source.read(offset, length))

    async def commit(self) -> None:
        """Put the file in place, replacing any previous content (unless exclusive)."""
        blob = self._live()
        if (
            self._exclusive
            and paths.basename(self._path) in self._backend._parent_dir(self._path).children
        ):
            self._blob = None
            raise FileAlreadyExists()
        mode = 0o644 if self.permissions is None else self.permissions
        self._backend._store(self._path, blob, mode)
        self._blob = None

    async def abort(self) -> None:
        """Forget the upload."""
        self._blob = None
