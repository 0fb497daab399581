"""Attributes, flags and listings in the forms they take on the wire."""

from __future__ import annotations

import stat as stat_module
import time

from .._binding import BoundBackend
from .._handles import OpenMode
from .._sftp import codec
from .._sftp.codec import WireAttrs
from .._version import __version__
from ..backend import AttrChanges, FileAttrs, FileType
from ..errors import (
    InvalidParameter,
)

__all__ = ["extensions_for", "longname", "open_mode", "to_changes", "wire_attrs"]

_TYPES = {
    FileType.FILE: stat_module.S_IFREG,
    FileType.DIRECTORY: stat_module.S_IFDIR,
    FileType.SYMLINK: stat_module.S_IFLNK,
}


def wire_attrs(attrs: FileAttrs) -> bytes:
    """Backend attributes as they go on the wire."""
    return codec.encode_attrs(
        attrs.size,
        attrs.uid if attrs.uid is not None else 0,
        attrs.gid if attrs.gid is not None else 0,
        attrs.mode,
        attrs.atime if attrs.atime is not None else attrs.mtime,
        attrs.mtime,
    )


def to_changes(attrs: WireAttrs) -> AttrChanges:
    """Read what a setstat request asks to change (owner changes are ignored)."""
    return AttrChanges(
        size=attrs.size,
        permissions=attrs.permissions & 0o7777 if attrs.permissions is not None else None,
        atime=float(attrs.atime) if attrs.atime is not None else None,
        mtime=float(attrs.mtime) if attrs.mtime is not None else None,
    )


def open_mode(pflags: int) -> OpenMode:
    """Decode SFTP v3 open flags."""
    read = bool(pflags & codec.FXF_READ)
    write = bool(pflags & (codec.FXF_WRITE | codec.FXF_APPEND))
    if not read and not write:
        read = True
    mode = OpenMode(
        read=read,
        write=write,
        append=bool(pflags & codec.FXF_APPEND),
        create=bool(pflags & codec.FXF_CREAT),
        truncate=bool(pflags & codec.FXF_TRUNC),
        exclusive=bool(pflags & codec.FXF_EXCL),
    )
    if (mode.truncate or mode.create) and not mode.write:
        raise InvalidParameter("Create and truncate need write access")
    return mode


FLAG_NAMES = (
    (codec.FXF_READ, "read"),
    (codec.FXF_WRITE, "write"),
    (codec.FXF_APPEND, "append"),
    (codec.FXF_CREAT, "create"),
    (codec.FXF_TRUNC, "truncate"),
    (codec.FXF_EXCL, "exclusive"),
)


def flag_names(pflags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES if pflags & bit]


def longname(name: str, attrs: FileAttrs, owner: str) -> str:
    """The ``ls -l`` line of a listing entry."""
    mode = stat_module.filemode(attrs.mode)
    nlink = "2" if attrs.is_dir else "1"
    now = time.time()
    when = time.localtime(attrs.mtime)
    recent = now - 182 * 86400 < attrs.mtime <= now + 86400
    stamp = time.strftime("%b %e %H:%M" if recent else "%b %e  %Y", when)
    return f"{mode:10s} {nlink:>4s} {owner:8s} {owner:8s} {attrs.size:>8d} {stamp:12s} {name}"


def extensions_for(backend: BoundBackend, *, quota: bool = False) -> list[tuple[bytes, bytes]]:
    """The extensions a server on ``backend`` advertises, each one it really serves
    (statvfs with a quota even where the storage has no capacity to tell).
    """
    caps = backend.capabilities
    names: list[tuple[bytes, bytes]] = [
        (b"posix-rename@openssh.com", b"1"),
        (b"lsetstat@openssh.com", b"1"),
        (b"limits@openssh.com", b"1"),
        (b"expand-path@openssh.com", b"1"),
        (b"home-directory", b"1"),
        (b"users-groups-by-id@openssh.com", b"1"),
        (b"copy-data", b"1"),
        (b"check-file-name", b"1"),
        (b"check-file-handle", b"1"),
        (b"check-file", b"1"),  # the filexfer-v6 draft's name, which paramiko sends
    ]
    if "disk_usage" in caps or quota:
        names += [(b"statvfs@openssh.com", b"2"), (b"fstatvfs@openssh.com", b"2")]
    if "hard_links" in caps:
        names.append((b"hardlink@openssh.com", b"1"))
    vendor = (
        codec.string(b"sftpd")
        + codec.string(b"sftpd")
        + codec.string(__version__.encode())
        + codec.u64(0)
    )
    names.append((b"vendor-id", vendor))
    return names
