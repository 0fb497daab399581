"""A folder on the local disk, safe for untrusted clients.

Symlink policy: **this backend never follows a symbolic link.** Every path is opened one
component at a time from the root directory with ``O_NOFOLLOW`` (``openat``), so neither
a symlink inside the root that points outside, nor one swapped in while a request runs,
can lead out of the root. Links are listed as links, and clients may create them
(``ln -s``) and read them; sftpd itself resolves a link's target in the client's view of
the tree, scoped into the session's root again, so a link that says ``/etc/passwd`` or
``../../..`` leads to that path *inside* the root, never outside. Hard links
(``hardlink@openssh.com``, OpenSSH's ``ln``) are made with ``linkat`` between two
no-follow directory descriptors.

Uploads go to an anonymous ``O_TMPFILE`` in the target directory (a hidden temporary file
where the file system lacks it) and are renamed into place at close: atomic, nothing
partial is ever visible, and a crashed server leaves nothing behind (an anonymous file
vanishes with its process; hidden leftovers are removed at the next start).

Methods are plain ``def``; sftpd runs them in its thread pool, or, where the file system
answers in microseconds, its small calls on the event loop (``io``, below).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

from .. import paths
from .._session import Session
from ..backend import AttrChanges, DirEntry, FileAttrs, FileType, SpaceInfo
from ..errors import (
    ConfigError,
    DirectoryNotEmpty,
    InvalidParameter,
    IsADirectory,
    NoSuchFile,
    NotADirectory,
    PermissionDenied,
)
from ._posix import (
    LocalReader,
    _copy_range,
    _forget_digests,
    _read_digests,
    _rename_noreplace,
    _write_digests,
)

__all__ = ["LocalBackend"]

TEMP_PREFIX = ".sftpd-upload-"
_IOV_MAX = 1024  # Linux's limit on the pieces of one pwritev
#: Largest file an inline commit may replace (freeing a file's pages takes time).
_QUICK_REPLACE = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _attrs(st: os.stat_result) -> FileAttrs:
    if stat.S_ISDIR(st.st_mode):
        kind = FileType.DIRECTORY
    elif stat.S_ISLNK(st.st_mode):
        kind = FileType.SYMLINK
    else:
        kind = FileType.FILE
    return FileAttrs(
        type=kind,
        size=st.st_size if kind is FileType.FILE else 0,
        mtime=st.st_mtime,
        atime=st.st_atime,
        permissions=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
    )


def _translate(exc: OSError) -> OSError:
    """Turn the errors of a no-follow walk into what the client should hear."""
    if exc.errno == errno.ELOOP:
        return PermissionDenied("Symbolic links are not followed")
    if exc.errno == errno.ENOTDIR:
        return NoSuchFile()
    return exc


#: File systems held in memory: no call on them waits for a device.
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})
#: Local disk file systems: metadata calls are served from the kernel's caches, and
#: only a commit with fsync waits for the disk.
DISK_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "overlay"})


def file_system_of(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the file system holding ``path`` (Linux), or ``""`` when unknown."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return ""
    best, kind = "", ""
    target = str(path)
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount = fields[4].replace("\\040", " ")
        after = line.split(" - ", 1)[1].split()
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if after and inside and len(mount) >= len(best):
            best, kind = mount, after[0]
    return kind


class LocalBackend:
    """Serve one directory of the local file system.

    Args:
        root: The directory to serve; it must exist (or pass ``create=True``).
        create: Create ``root`` (and parents) if missing.
        fsync: Flush uploads to disk before they become visible (slower, durable).
        io: Where the small calls (stat, open, rename, the commit of a small upload,
            listing batches) run. ``"threads"``: all in sftpd's thread pool. ``"inline"``:
            on the event loop, which saves a thread hop (50-150 us) per call; bulk reads
            and writes stay in the pool. ``"auto"`` (default): inline when ``root`` is on
            a memory file system (tmpfs, ramfs), or on a local disk file system with
            ``fsync`` off; threads on network and FUSE file systems, and when every commit
            waits for the disk. Inline or not, a call that takes over 5 ms sends every
            call to the pool for 30 s.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        create: bool = False,
        fsync: bool = True,
        io: str = "auto",
    ):
        path = Path(root)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            raise ConfigError(f"local backend root {path} is not a directory; create it first")
        if io not in ("auto", "inline", "threads"):
            raise ConfigError(f"local backend io must be auto, inline or threads, not {io!r}")
        self.root = path.resolve()
        self.fsync = fsync
        self.file_system = file_system_of(self.root)
        if io == "auto":
            quick = self.file_system in MEMORY_FILE_SYSTEMS or (
                self.file_system in DISK_FILE_SYSTEMS and not fsync
            )
            io = "inline" if quick else "threads"
        self.inline_calls = io == "inline"
        self._remove_stale_uploads()

    #: Never inline, even with ``io="inline"``: removing or renaming over a large file
    #: frees its pages before the call returns (tens of ms for a few hundred MiB).
    pool_calls = ("remove_file", "rename")

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    # ------------------------------------------------------------------ walking

    @contextmanager
    def _dir(self, path: str) -> Iterator[int]:
        """A file descriptor of directory ``path``, reached without following symlinks."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            if path != "/":
                for part in path[1:].split("/"):
                    try:
                        child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        raise _translate(exc) from exc
                    os.close(fd)
                    fd = child
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        """The parent directory's descriptor and the last name of ``path``."""
        if path == "/":
            raise PermissionDenied("Cannot change the top directory")
        with self._dir(paths.parent(path)) as fd:
            yield fd, paths.basename(path)

    def _lstat(self, fd: int, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)

    @contextmanager
    def _open_file(self, path: str, flags: int) -> Iterator[int]:
        with self._parent(path) as (dirfd, name):
            try:
                fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError as exc:
                raise _translate(exc) from exc
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    raise IsADirectory()
                yield fd
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ required

    def stat(self, path: str, session: Session) -> FileAttrs:
        """Attributes of ``path`` (a symlink is reported as one, not followed)."""
        if path == "/":
            return _attrs(os.stat(self.root))
        with self._parent(path) as (fd, name):
            return _attrs(self._lstat(fd, name))

    def list_dir(self, path: str, session: Session) -> Iterator[DirEntry]:
        """Entries of a directory, without in-progress uploads."""
        with self._dir(path) as fd, os.scandir(fd) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield DirEntry(entry.name, _attrs(st))

    def make_dir(self, path: str, session: Session) -> None:
        """Create one directory."""
        with self._parent(path) as (fd, name):
            os.mkdir(name, 0o755, dir_fd=fd)

    def remove_dir(self, path: str, session: Session) -> None:
        """Remove an empty directory."""
        with self._parent(path) as (fd, name):
            st = self._lstat(fd, name)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectory()
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise DirectoryNotEmpty() from exc
                raise

    def remove_file(self, path: str, session: Session) -> None:
        """Remove a file (or a symlink itself, never its target)."""
        with self._parent(path) as (fd, name):
            if stat.S_ISDIR(self._lstat(fd, name).st_mode):
                raise IsADirectory()
            os.unlink(name, dir_fd=fd)

    def rename(self, src: str, dst: str, session: Session, *, overwrite: bool) -> None:
        """Rename atomically; without ``overwrite`` an existing target is never replaced."""
        if dst == src:
            return
        if dst.startswith(src + "/"):
            raise InvalidParameter("Cannot move a directory into itself")
        with self._parent(src) as (src_fd, src_name), self._parent(dst) as (dst_fd, dst_name):
            self._lstat(src_fd, src_name)  # NoSuchFile for a missing source
            if overwrite:
                os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            else:
                _rename_noreplace(src_fd, src_name, dst_fd, dst_name)

    def read_file(self, path: str, session: Session) -> bytes:
        """A whole file."""
        with self._open_file(path, os.O_RDONLY) as fd:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)

    def write_file(self, path: str, data: bytes, session: Session) -> None:
        """Create or replace a file atomically."""
        writer = self.open_writer(path, session, keep_existing=False)
        try:
            writer.write(0, data)
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    # ------------------------------------------------------------------ optional

    def read_range(self, path: str, offset: int, length: int, session: Session) -> bytes:
        """Up to ``length`` bytes at ``offset``, without reading the rest of the file."""
        with self._open_file(path, os.O_RDONLY) as fd:
            return os.pread(fd, length, offset)

    def open_reader(self, path: str, session: Session) -> LocalReader:
        """Open ``path`` once for a download (no link followed); reads are single preads.

        The reader keeps the file it opened: a file replaced during a download is read
        whole as it was.
        """
        with self._parent(path) as (dirfd, name):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError as exc:
                raise _translate(exc) from exc
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectory()
        return LocalReader(fd)

    def open_writer(
        self, path: str, session: Session, *, keep_existing: bool, exclusive: bool = False
    ) -> LocalWriter:
        """Start an upload into a hidden temporary file next to ``path``.

        With ``exclusive``, the commit fails if ``path`` exists by then (no replace).
        """
        with self._parent(path) as (dirfd, name):
            try:
                existing = self._lstat(dirfd, name)
            except FileNotFoundError:
                existing = None
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise IsADirectory()
            if existing is not None and stat.S_ISLNK(existing.st_mode):
                raise PermissionDenied("Symbolic links are not followed")
            writer = LocalWriter(self, os.dup(dirfd), name, existing, exclusive=exclusive)
        if keep_existing and existing is not None:
            writer.copy_existing()
        return writer

    def set_attrs(self, path: str, changes: AttrChanges, session: Session) -> None:
        """Apply size, permissions and times through a no-follow descriptor."""
        flags = os.O_WRONLY if changes.size is not None else os.O_RDONLY
        if path == "/":
            fd = os.open(self.root, _DIR_FLAGS)
        else:
            with self._parent(path) as (dirfd, name):
                try:
                    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
                except OSError as exc:
                    if exc.errno == errno.EISDIR:
                        fd = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
                    else:
                        raise _translate(exc) from exc
        try:
            if changes.size is not None:
                os.ftruncate(fd, changes.size)
                _forget_digests(fd)
            if changes.permissions is not None:
                os.fchmod(fd, changes.permissions & 0o7777)
            if changes.mtime is not None or changes.atime is not None:
                kept = _read_digests(fd) if changes.size is None else None
                st = os.fstat(fd)
                atime = changes.atime if changes.atime is not None else st.st_atime
                mtime = changes.mtime if changes.mtime is not None else st.st_mtime
                os.utime(fd, (atime, mtime))
                if kept:  # same bytes, new time (sftp put -p, WinSCP): keep the digests
                    _write_digests(fd, kept)
        finally:
            os.close(fd)

    def store_digests(self, path: str, digests: Mapping[str, str], session: Session) -> None:
        """Keep digests in an extended attribute (``user.sftpd.digests``) with the size and
        mtime they describe; where the file system has no extended attributes, nothing is
        kept and digests are computed when asked for.
        """
        with self._parent(path) as (dirfd, name):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            if digests:
                _write_digests(fd, digests)
            else:
                _forget_digests(fd)
        finally:
            os.close(fd)

    def read_digests(self, path: str, session: Session) -> Mapping[str, str] | None:
        """The kept digests, if the file's size and mtime are still those they describe
        (a file changed behind sftpd's back has none).
        """
        with self._parent(path) as (dirfd, name):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError:
                return None
        try:
            return _read_digests(fd)
        finally:
            os.close(fd)

    def read_link(self, path: str, session: Session) -> str:
        """The target of the link at ``path``, as written."""
        with self._parent(path) as (fd, name):
            try:
                return os.readlink(name, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    raise InvalidParameter("Not a symbolic link") from exc
                raise

    def make_symlink(self, target: str, link: str, session: Session) -> None:
        """Create a symbolic link; its target is stored as given and never followed here."""
        with self._parent(link) as (fd, name):
            os.symlink(target, name, dir_fd=fd)

    def make_link(self, existing: str, new: str, session: Session) -> None:
        """Give the file at ``existing`` a second name (never following a link)."""
        with self._parent(existing) as (src_fd, src_name), self._parent(new) as (dst_fd, dst_name):
            os.link(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd,
                    follow_symlinks=False)  # fmt: skip

    def disk_usage(self, path: str, session: Session) -> SpaceInfo:
        """Capacity of the file system holding the root."""
        st = os.statvfs(self.root)
        return SpaceInfo(
            total=st.f_blocks * st.f_frsize,
            free=st.f_bavail * st.f_frsize,
            block_size=st.f_frsize,
            max_name_length=st.f_namemax,
        )

    # ------------------------------------------------------------------ housekeeping

    def _remove_stale_uploads(self, min_age: float = 3600.0) -> None:
        """Delete hidden upload files left by a crash (only where O_TMPFILE was missing)."""
        cutoff = time.time() - min_age
        for dirpath, _dirs, files in os.walk(self.root):
            for file in files:
                if file.startswith(TEMP_PREFIX):
                    full = os.path.join(dirpath, file)
                    try:
                        if os.lstat(full).st_mtime < cutoff:
                            os.unlink(full)
                    except OSError:
                        pass


class LocalWriter:
    """One upload: an anonymous (or hidden) file renamed over the target at commit.

    ``pwrite`` at distinct offsets is safe from several threads, so writes may come
    concurrently.
    """

    concurrent_writes = True

    def __init__(
        self,
        backend: LocalBackend,
        dirfd: int,
        name: str,
        existing: os.stat_result | None,
        *,
        exclusive: bool = False,
    ) -> None:
        self._backend = backend
        self._dirfd = dirfd
        self._name = name
        self._existing = existing
        self._exclusive = exclusive
        self._temp_name: str | None = None
        self.permissions: int | None = None  # of a new file, applied at commit
        # Set by the server before commit: kept in the file's xattr before it is renamed
        # into place, so the file never appears without them.
        self.digests: Mapping[str, str] | None = None
        # Replacing a large file frees its pages inside the rename: not an inline call.
        self.quick_commit = existing is None or existing.st_size <= _QUICK_REPLACE
        try:
            self._fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644, dir_fd=dirfd)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                os.close(dirfd)
                raise
            self._temp_name = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            self._fd = os.open(
                self._temp_name,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
                dir_fd=dirfd,
            )
        if existing is not None:
            os.fchmod(self._fd, stat.S_IMODE(existing.st_mode))

    def copy_existing(self) -> None:
        """Start from the current file's content (resume, append)."""
        src = os.open(self._name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dirfd)
        try:
            _copy_range(src, self._fd, 0, os.fstat(src).st_size, 0)
        finally:
            os.close(src)

    def write(self, offset: int, data: bytes) -> None:
        """Write at any offset; gaps become holes that read as zeros."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def write_many(self, offset: int, chunks: list[bytes]) -> None:
        """Write consecutive pieces at ``offset`` with ``pwritev``, without joining them."""
        while chunks:
            batch = chunks[:_IOV_MAX]
            size = sum(map(len, batch))
            written = os.pwritev(self._fd, batch, offset)
            if written < size:  # short (rare): finish this batch piece by piece
                self.write(offset + written, b"".join(batch)[written:])
            offset += size
            chunks = chunks[_IOV_MAX:]

    def copy_from(self, path: str, offset: int, length: int, target_offset: int) -> None:
        """copy-data inside the kernel: ``copy_file_range`` from the stored file at ``path``."""
        with self._backend._open_file(path, os.O_RDONLY) as src:
            _copy_range(src, self._fd, offset, length, target_offset)

    def read(self, offset: int, length: int) -> bytes:
        """Read back the upload."""
        return os.pread(self._fd, length, offset)

    def truncate(self, size: int) -> None:
        """Cut or extend the upload."""
        os.ftruncate(self._fd, size)

    def commit(self) -> None:
        """Flush, then rename into place atomically."""
        try:
            if self.permissions is not None:
                os.fchmod(self._fd, self.permissions)
            if self.digests:
                _write_digests(self._fd, self.digests)
            if self._backend.fsync:
                os.fsync(self._fd)
            if self._temp_name is None:
                self._temp_name = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
                os.link(f"/proc/self/fd/{self._fd}", self._temp_name, dst_dir_fd=self._dirfd,
                        follow_symlinks=True)  # fmt: skip
            if self._exclusive:
                _rename_noreplace(self._dirfd, self._temp_name, self._dirfd, self._name)
            else:
                os.rename(self._temp_name, self._name, src_dir_fd=self._dirfd,
                          dst_dir_fd=self._dirfd)  # fmt: skip
            self._temp_name = None
            if self._backend.fsync:
                os.fsync(self._dirfd)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the upload and its temporary file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._temp_name is not None:
            with suppress(FileNotFoundError):
                os.unlink(self._temp_name, dir_fd=self._dirfd)
            self._temp_name = None
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1
