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

import enum
import inspect
import stat as stat_module
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from . import paths
from ._memory import UploadMemory
from .errors import ConfigError

if TYPE_CHECKING:
    from ._session import Session

__all__ = [
    "AttrChanges",
    "Backend",
    "Capability",
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
        content changes.
        """

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


#: The methods every backend has (:class:`Backend`).
REQUIRED_METHODS = tuple(
    name for name in vars(Backend) if not name.startswith("_") and callable(vars(Backend)[name])
)


class Capability(str, enum.Enum):
    """An optional part of the contract, each one a Protocol above.

    The methods each needs are read from its Protocol, so detection
    (:func:`supports`), the server's binding and the conformance suite's skips all
    answer from this one table. A capability compares equal to its value
    (``Capability.SET_ATTRS == "set_attrs"``).
    """

    RANGE_READS = "range_reads"
    READERS = "readers"
    STREAMING_WRITES = "streaming_writes"
    #: ``open_writer`` takes ``exclusive``: an O_EXCL create is checked again at commit.
    EXCLUSIVE_WRITES = "exclusive_writes"
    SET_ATTRS = "set_attrs"
    DISK_USAGE = "disk_usage"
    DIGESTS = "digests"
    SYMLINKS = "symlinks"
    HARD_LINKS = "hard_links"
    SESSION_HOOKS = "session_hooks"
    STARTUP = "startup"
    SHUTDOWN = "shutdown"

    @property
    def protocol(self) -> type:
        """The Protocol that describes this capability."""
        return _PROTOCOLS[self]

    @property
    def methods(self) -> tuple[str, ...]:
        """The backend methods this capability needs."""
        found = vars(self.protocol)
        return tuple(n for n in found if not n.startswith("_") and callable(found[n]))


_PROTOCOLS: dict[Capability, type] = {
    Capability.RANGE_READS: RangeReads,
    Capability.READERS: Readers,
    Capability.STREAMING_WRITES: StreamingWrites,
    Capability.EXCLUSIVE_WRITES: StreamingWrites,
    Capability.SET_ATTRS: SetAttrs,
    Capability.DISK_USAGE: DiskUsage,
    Capability.DIGESTS: Digests,
    Capability.SYMLINKS: Symlinks,
    Capability.HARD_LINKS: HardLinks,
    Capability.SESSION_HOOKS: SessionHooks,
    Capability.STARTUP: Startup,
    Capability.SHUTDOWN: Shutdown,
}


def supports(backend: object, capability: Capability | str) -> bool:
    """Tell whether ``backend`` implements an optional capability.

    Args:
        backend: Any object.
        capability: A :class:`Capability` or its value (``"range_reads"``...).

    Raises:
        ValueError: ``capability`` names none.
    """
    try:
        wanted = Capability(capability)
    except ValueError:
        known = ", ".join(c.value for c in Capability)
        raise ValueError(f"unknown capability {capability!r}; known: {known}") from None
    if not all(callable(getattr(backend, name, None)) for name in wanted.methods):
        return False
    if wanted is Capability.EXCLUSIVE_WRITES:
        open_writer = getattr(backend, "open_writer")  # noqa: B009
        return "exclusive" in inspect.signature(open_writer).parameters
    return True


def capabilities_of(backend: object) -> frozenset[Capability]:
    """Every optional capability ``backend`` implements."""
    return frozenset(c for c in Capability if supports(backend, c))


def check_backend(backend: object) -> None:
    """Check that ``backend`` has every required method.

    Raises:
        ConfigError: a required method is missing; the message lists them.
    """
    missing = [n for n in REQUIRED_METHODS if not callable(getattr(backend, n, None))]
    if missing:
        raise ConfigError(
            f"backend {type(backend).__name__} does not implement the required method(s) "
            f"{', '.join(missing)}; see sftpd.backend.Backend"
        )
