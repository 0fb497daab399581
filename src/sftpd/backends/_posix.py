"""The system calls under the local backend: no-replace renames, reads, digests in xattrs."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
from collections.abc import Mapping

from ..errors import FileAlreadyExists

__all__ = ["DIGESTS_XATTR", "LocalReader"]

_RENAME_NOREPLACE = 1


def _renameat2_function() -> object | None:
    name = ctypes.util.find_library("c")
    if name is None:  # pragma: no cover
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    return getattr(libc, "renameat2", None)


_renameat2 = _renameat2_function()


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    if _renameat2 is not None:
        result = _renameat2(  # type: ignore[operator]
            src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), _RENAME_NOREPLACE
        )
        if result == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # unsupported: fall back below
            if err == errno.EEXIST:
                raise FileAlreadyExists()
            raise OSError(err, os.strerror(err))
    try:
        os.stat(dst, dir_fd=dst_fd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    raise FileAlreadyExists()


class LocalReader:
    """One download: the open file, read with ``pread`` (safe from several threads)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``."""
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


DIGESTS_XATTR = "user.sftpd.digests"
_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENOSPC, errno.E2BIG,
              errno.EACCES}  # fmt: skip


def _write_digests(fd: int, digests: Mapping[str, str]) -> None:
    st = os.fstat(fd)
    value = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digests": dict(digests)}
    try:
        os.setxattr(fd, DIGESTS_XATTR, json.dumps(value).encode())
    except OSError as exc:
        if exc.errno not in _NO_XATTRS:
            raise


def _read_digests(fd: int) -> dict[str, str] | None:
    try:
        value = json.loads(os.getxattr(fd, DIGESTS_XATTR))
    except (OSError, ValueError):
        return None
    st = os.fstat(fd)
    if not isinstance(value, dict) or (value.get("size"), value.get("mtime_ns")) != (
        st.st_size, st.st_mtime_ns,
    ):  # fmt: skip
        return None
    digests = value.get("digests")
    return {str(k): str(v) for k, v in digests.items()} if isinstance(digests, dict) else None


def _forget_digests(fd: int) -> None:
    try:
        os.removexattr(fd, DIGESTS_XATTR)
    except OSError as exc:
        if exc.errno not in (*_NO_XATTRS, errno.ENODATA):
            raise


def _copy_range(src: int, dst: int, offset: int, length: int, target_offset: int) -> None:
    """Copy ``length`` bytes in the kernel (stops early at the source's end)."""
    while length > 0:
        copied = os.copy_file_range(src, dst, length, offset, target_offset)
        if copied == 0:
            break
        offset += copied
        target_offset += copied
        length -= copied
