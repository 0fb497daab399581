"""The exceptions sftpd raises and understands.

Every storage error is an :class:`SftpdError` that is also the builtin exception a Python
programmer already catches, and carries the SFTP status code the client receives::

    SftpdError(Exception)
    ├── ConfigError(ValueError)                    misconfiguration, raised at start-up
    └── StorageError(OSError)                      anything a request can fail with
        ├── NoSuchFile(FileNotFoundError)          SSH_FX_NO_SUCH_FILE
        ├── PermissionDenied(PermissionError)      SSH_FX_PERMISSION_DENIED
        ├── FileAlreadyExists(FileExistsError)     SSH_FX_FILE_ALREADY_EXISTS
        ├── NotADirectory(NotADirectoryError)      SSH_FX_NOT_A_DIRECTORY
        ├── IsADirectory(IsADirectoryError)        SSH_FX_FILE_IS_A_DIRECTORY
        ├── DirectoryNotEmpty                      SSH_FX_DIR_NOT_EMPTY
        ├── InvalidFilename                        SSH_FX_INVALID_FILENAME
        ├── InvalidParameter                       SSH_FX_INVALID_PARAMETER
        ├── NoSpace                                SSH_FX_NO_SPACE_ON_FILESYSTEM
        ├── QuotaExceeded                          SSH_FX_QUOTA_EXCEEDED
        ├── Unsupported                            SSH_FX_OP_UNSUPPORTED
        └── Failure                                SSH_FX_FAILURE

Backends raise these (or plain ``FileNotFoundError``, ``PermissionError``... which are
mapped by errno). :func:`to_sftp_error` is the one place where any exception becomes what
the client sees; an exception it does not know becomes a generic failure, never a Python
repr on the wire.
"""

from __future__ import annotations

import errno

__all__ = [
    "ConfigError",
    "DirectoryNotEmpty",
    "Failure",
    "FileAlreadyExists",
    "InvalidFilename",
    "InvalidParameter",
    "IsADirectory",
    "NoSpace",
    "NoSuchFile",
    "NotADirectory",
    "PermissionDenied",
    "QuotaExceeded",
    "SftpStatus",
    "SftpdError",
    "StorageError",
    "Unsupported",
    "to_sftp_error",
]


# SFTP status codes. Version 3 defines 0-8; the later drafts' codes are sent to a v3
# client as FX_FAILURE with the reason saying what happened (as OpenSSH's sftp-server does).
FX_OK = 0
FX_EOF = 1
FX_NO_SUCH_FILE = 2
FX_PERMISSION_DENIED = 3
FX_FAILURE = 4
FX_BAD_MESSAGE = 5
FX_NO_CONNECTION = 6
FX_CONNECTION_LOST = 7
FX_OP_UNSUPPORTED = 8
FX_V3_END = FX_OP_UNSUPPORTED
FX_INVALID_HANDLE = 9
FX_NO_SUCH_PATH = 10
FX_FILE_ALREADY_EXISTS = 11
FX_WRITE_PROTECT = 12
FX_NO_MEDIA = 13
FX_NO_SPACE_ON_FILESYSTEM = 14
FX_QUOTA_EXCEEDED = 15
FX_UNKNOWN_PRINCIPAL = 16
FX_LOCK_CONFLICT = 17
FX_DIR_NOT_EMPTY = 18
FX_NOT_A_DIRECTORY = 19
FX_INVALID_FILENAME = 20
FX_LINK_LOOP = 21
FX_CANNOT_DELETE = 22
FX_INVALID_PARAMETER = 23
FX_FILE_IS_A_DIRECTORY = 24


class SftpStatus(Exception):
    """A status reply as it goes on the wire: an SFTP status code and a short reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class SftpdError(Exception):
    """Base class of every exception sftpd defines."""


class ConfigError(SftpdError, ValueError):
    """The server or a backend is misconfigured; the message says what to fix."""


class StorageError(SftpdError, OSError):
    """A request failed; ``code`` is the SFTP status the client receives.

    The message is sent to the client as the status reason, so keep it short and free of
    internal detail.
    """

    code: int = FX_FAILURE
    default_reason: str = "Failure"

    def __init__(self, reason: str | None = None) -> None:
        reason = reason or self.default_reason
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class NoSuchFile(StorageError, FileNotFoundError):
    """The path (or a parent directory of it) does not exist."""

    code = FX_NO_SUCH_FILE
    default_reason = "No such file"


class PermissionDenied(StorageError, PermissionError):
    """The session may not do this to this path."""

    code = FX_PERMISSION_DENIED
    default_reason = "Permission denied"


class FileAlreadyExists(StorageError, FileExistsError):
    """The target exists and the request must not replace it."""

    code = FX_FILE_ALREADY_EXISTS
    default_reason = "File already exists"


class NotADirectory(StorageError, NotADirectoryError):
    """A directory operation named a file."""

    code = FX_NOT_A_DIRECTORY
    default_reason = "Not a directory"


class IsADirectory(StorageError, IsADirectoryError):
    """A file operation named a directory."""

    code = FX_FILE_IS_A_DIRECTORY
    default_reason = "Is a directory"


class DirectoryNotEmpty(StorageError):
    """A directory to remove still has entries."""

    code = FX_DIR_NOT_EMPTY
    default_reason = "Directory not empty"


class InvalidFilename(StorageError):
    """The path cannot be represented (bad encoding, NUL byte, too long)."""

    code = FX_INVALID_FILENAME
    default_reason = "Invalid filename"


class InvalidParameter(StorageError):
    """The request's arguments make no sense (a negative offset, an unknown flag)."""

    code = FX_INVALID_PARAMETER
    default_reason = "Invalid parameter"


class NoSpace(StorageError):
    """The storage is full."""

    code = FX_NO_SPACE_ON_FILESYSTEM
    default_reason = "No space left"


class QuotaExceeded(StorageError):
    """A limit of the session was reached, such as its largest file size.

    SFTP v3 clients (most of them) receive it as a failure with this reason.
    """

    code = FX_QUOTA_EXCEEDED
    default_reason = "Quota exceeded"


class Unsupported(StorageError):
    """The backend does not offer this operation."""

    code = FX_OP_UNSUPPORTED
    default_reason = "Operation not supported"


class Failure(StorageError):
    """A generic failure; the details are in the server log, not on the wire."""


_ERRNO_CODES: dict[int, tuple[int, str]] = {
    errno.ENOENT: (FX_NO_SUCH_FILE, "No such file"),
    errno.EACCES: (FX_PERMISSION_DENIED, "Permission denied"),
    errno.EPERM: (FX_PERMISSION_DENIED, "Permission denied"),
    errno.EROFS: (FX_PERMISSION_DENIED, "Read-only storage"),
    errno.EEXIST: (FX_FILE_ALREADY_EXISTS, "File already exists"),
    errno.ENOTDIR: (FX_NOT_A_DIRECTORY, "Not a directory"),
    errno.EISDIR: (FX_FILE_IS_A_DIRECTORY, "Is a directory"),
    errno.ENOTEMPTY: (FX_DIR_NOT_EMPTY, "Directory not empty"),
    errno.ENAMETOOLONG: (FX_INVALID_FILENAME, "File name too long"),
    errno.EILSEQ: (FX_INVALID_FILENAME, "Invalid filename"),
    errno.EINVAL: (FX_INVALID_PARAMETER, "Invalid parameter"),
    errno.ENOSPC: (FX_NO_SPACE_ON_FILESYSTEM, "No space left"),
    errno.EDQUOT: (FX_NO_SPACE_ON_FILESYSTEM, "Quota exceeded"),
    errno.EFBIG: (FX_QUOTA_EXCEEDED, "File too large for the storage"),
    errno.ELOOP: (FX_LINK_LOOP, "Too many levels of symbolic links"),
    errno.EXDEV: (FX_OP_UNSUPPORTED, "Cross-device operation not supported"),
}


def to_sftp_error(exc: BaseException) -> SftpStatus:
    """Translate any exception into the SFTP status the client receives.

    This is the only place where exceptions reach the wire. Unknown exceptions become a
    bare ``Failure``: their text may hold internal detail and is logged instead.

    Args:
        exc: The exception raised while serving a request.

    Returns:
        The code and reason sent to the client.
    """
    if isinstance(exc, SftpStatus):
        return exc
    if isinstance(exc, StorageError):
        return SftpStatus(exc.code, exc.reason)
    if isinstance(exc, NotImplementedError):
        return SftpStatus(FX_OP_UNSUPPORTED, "Operation not supported")
    if isinstance(exc, TimeoutError):
        return SftpStatus(FX_FAILURE, "Storage timed out")
    if isinstance(exc, OSError) and exc.errno in _ERRNO_CODES:
        code, reason = _ERRNO_CODES[exc.errno]
        return SftpStatus(code, reason)
    if isinstance(exc, FileNotFoundError):
        return SftpStatus(FX_NO_SUCH_FILE, "No such file")
    if isinstance(exc, PermissionError):
        return SftpStatus(FX_PERMISSION_DENIED, "Permission denied")
    if isinstance(exc, FileExistsError):
        return SftpStatus(FX_FILE_ALREADY_EXISTS, "File already exists")
    if isinstance(exc, IsADirectoryError):
        return SftpStatus(FX_FILE_IS_A_DIRECTORY, "Is a directory")
    if isinstance(exc, NotADirectoryError):
        return SftpStatus(FX_NOT_A_DIRECTORY, "Not a directory")
    return SftpStatus(FX_FAILURE, "Failure")


def is_expected(exc: BaseException) -> bool:
    """Tell whether an exception is an ordinary request failure rather than a bug.

    Expected failures are logged at debug level; everything else is logged with its
    traceback because the client only sees a generic failure.
    """
    return isinstance(exc, (SftpStatus, StorageError, NotImplementedError)) or (
        isinstance(exc, OSError) and exc.errno in _ERRNO_CODES
    )
