"""The SFTP v3 wire format: constants, a bounded parser and reply builders.

Everything a client sends is read through :class:`Parser`, which raises
:class:`BadMessage` for a field that runs past the packet and :class:`OutOfRange` for a
number no storage can honour. Nothing else in the engine reads raw bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Status codes are defined with the exceptions that carry them; the engine's own are here.
from ..errors import FX_BAD_MESSAGE as FX_BAD_MESSAGE
from ..errors import FX_EOF as FX_EOF
from ..errors import FX_FAILURE as FX_FAILURE
from ..errors import FX_NO_SUCH_FILE as FX_NO_SUCH_FILE
from ..errors import FX_OK as FX_OK
from ..errors import FX_OP_UNSUPPORTED as FX_OP_UNSUPPORTED
from ..errors import FX_V3_END as FX_V3_END

__all__ = [
    "BadMessage",
    "OutOfRange",
    "Parser",
    "WireAttrs",
]

# Packet types (draft-ietf-secsh-filexfer-02, section 3).
FXP_INIT = 1
FXP_VERSION = 2
FXP_OPEN = 3
FXP_CLOSE = 4
FXP_READ = 5
FXP_WRITE = 6
FXP_LSTAT = 7
FXP_FSTAT = 8
FXP_SETSTAT = 9
FXP_FSETSTAT = 10
FXP_OPENDIR = 11
FXP_READDIR = 12
FXP_REMOVE = 13
FXP_MKDIR = 14
FXP_RMDIR = 15
FXP_REALPATH = 16
FXP_STAT = 17
FXP_RENAME = 18
FXP_READLINK = 19
FXP_SYMLINK = 20
FXP_STATUS = 101
FXP_HANDLE = 102
FXP_DATA = 103
FXP_NAME = 104
FXP_ATTRS = 105
FXP_EXTENDED = 200
FXP_EXTENDED_REPLY = 201

# Open flags (pflags).
FXF_READ = 0x01
FXF_WRITE = 0x02
FXF_APPEND = 0x04
FXF_CREAT = 0x08
FXF_TRUNC = 0x10
FXF_EXCL = 0x20

# Attribute flags.
ATTR_SIZE = 0x01
ATTR_UIDGID = 0x02
ATTR_PERMISSIONS = 0x04
ATTR_ACMODTIME = 0x08
ATTR_EXTENDED = 0x80000000

#: The largest offset or size a request may name: files are at most 2**63 - 1 bytes, as
#: ``off_t`` is on POSIX.
MAX_OFFSET = (1 << 63) - 1

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_STATUS_HEAD = struct.Struct(">IBII")  # length, type, id, code
_ID_HEAD = struct.Struct(">IBI")  # length, type, id
_DATA_HEAD = struct.Struct(">IBII")  # length, type, id, data length


class BadMessage(ValueError):
    """A packet that does not parse: a field runs past its end, or a count is absurd."""


class OutOfRange(ValueError):
    """A number that parses but that no file can honour (an offset past 2**63 - 1)."""


@dataclass(slots=True)
class WireAttrs:
    """Attributes as a client sent them (``None``: not given)."""

    size: int | None = None
    uid: int | None = None
    gid: int | None = None
    permissions: int | None = None
    atime: int | None = None
    mtime: int | None = None


class Parser:
    """Reads the fields of one packet, never past its end."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self._data = data
        self._pos = pos

    def u8(self) -> int:
        pos = self._pos
        if pos + 1 > len(self._data):
            raise BadMessage("packet too short")
        self._pos = pos + 1
        return self._data[pos]

    def u32(self) -> int:
        pos = self._pos
        if pos + 4 > len(self._data):
            raise BadMessage("packet too short")
        self._pos = pos + 4
        return int(_U32.unpack_from(self._data, pos)[0])

    def u64(self) -> int:
        pos = self._pos
        if pos + 8 > len(self._data):
            raise BadMessage("packet too short")
        self._pos = pos + 8
        return int(_U64.unpack_from(self._data, pos)[0])

    def offset(self) -> int:
        """A u64 that names a position or length in a file."""
        value = self.u64()
        if value > MAX_OFFSET:
            raise OutOfRange("offset out of range")
        return value

    def string(self) -> bytes:
        length = self.u32()
        pos = self._pos
        end = pos + length
        if end > len(self._data):
            raise BadMessage("string runs past the end of the packet")
        self._pos = end
        return self._data[pos:end]

    def attrs(self) -> WireAttrs:
        flags = self.u32()
        attrs = WireAttrs()
        if flags & ATTR_SIZE:
            attrs.size = self.u64()
            if attrs.size > MAX_OFFSET:
                raise OutOfRange("size out of range")
        if flags & ATTR_UIDGID:
            attrs.uid = self.u32()
            attrs.gid = self.u32()
        if flags & ATTR_PERMISSIONS:
            attrs.permissions = self.u32()
        if flags & ATTR_ACMODTIME:
            attrs.atime = self.u32()
            attrs.mtime = self.u32()
        if flags & ATTR_EXTENDED:
            count = self.u32()
            if count > len(self._data):  # each pair takes at least 8 bytes
                raise BadMessage("too many extended attributes")
            for _ in range(count):
                self.string()
                self.string()
        return attrs

    def rest(self) -> int:
        """Bytes left after what was read."""
        return len(self._data) - self._pos


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


def frame(kind: int, request_id: int, body: bytes) -> bytes:
    """A reply packet: length, type, request id, body."""
    return _ID_HEAD.pack(len(body) + 5, kind, request_id) + body


def status(request_id: int, code: int, reason: str) -> bytes:
    """An ``SSH_FXP_STATUS`` reply (reason in UTF-8, empty language tag)."""
    message = reason.encode("utf-8", "replace")
    body_len = 4 + 4 + len(message) + 4
    return (
        _STATUS_HEAD.pack(body_len + 5, FXP_STATUS, request_id, code)
        + _U32.pack(len(message))
        + message
        + b"\x00\x00\x00\x00"
    )


def data_head(request_id: int, length: int) -> bytes:
    """The header of an ``SSH_FXP_DATA`` reply carrying ``length`` bytes."""
    return _DATA_HEAD.pack(length + 9, FXP_DATA, request_id, length)


def encode_attrs(
    size: int | None,
    uid: int,
    gid: int,
    permissions: int,
    atime: float,
    mtime: float,
) -> bytes:
    """Attributes with size (when known), owner, mode and times."""
    flags = ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME
    head = b""
    if size is not None:
        flags |= ATTR_SIZE
        head = _U64.pack(size)
    return (
        _U32.pack(flags)
        + head
        + struct.pack(
            ">IIIII",
            uid & 0xFFFFFFFF,
            gid & 0xFFFFFFFF,
            permissions & 0xFFFFFFFF,
            _time32(atime),
            _time32(mtime),
        )
    )


EMPTY_ATTRS = b"\x00\x00\x00\x00"


def _time32(value: float) -> int:
    """A time as v3's unsigned 32-bit seconds, clamped into range."""
    return min(max(int(value), 0), 0xFFFFFFFF)
