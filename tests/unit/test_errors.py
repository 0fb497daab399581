"""Unit: the exception tree and its one translation to SFTP status codes."""

from __future__ import annotations

import errno

import asyncssh
import pytest

from sftpd import errors


@pytest.mark.parametrize(
    ("exc", "builtin", "code"),
    [
        (errors.NoSuchFile(), FileNotFoundError, asyncssh.FX_NO_SUCH_FILE),
        (errors.PermissionDenied(), PermissionError, asyncssh.FX_PERMISSION_DENIED),
        (errors.FileAlreadyExists(), FileExistsError, asyncssh.FX_FILE_ALREADY_EXISTS),
        (errors.NotADirectory(), NotADirectoryError, asyncssh.FX_NOT_A_DIRECTORY),
        (errors.IsADirectory(), IsADirectoryError, asyncssh.FX_FILE_IS_A_DIRECTORY),
        (errors.DirectoryNotEmpty(), OSError, asyncssh.FX_DIR_NOT_EMPTY),
        (errors.InvalidFilename(), OSError, asyncssh.FX_INVALID_FILENAME),
        (errors.InvalidParameter(), OSError, asyncssh.FX_INVALID_PARAMETER),
        (errors.NoSpace(), OSError, asyncssh.FX_NO_SPACE_ON_FILESYSTEM),
        (errors.Unsupported(), OSError, asyncssh.FX_OP_UNSUPPORTED),
        (errors.Failure(), OSError, asyncssh.FX_FAILURE),
    ],
)
def test_each_error_is_a_builtin_and_maps_to_its_code(
    exc: errors.StorageError, builtin: type[BaseException], code: int
) -> None:
    """Each storage error is catchable as its builtin and carries its SFTP code."""
    assert isinstance(exc, builtin)
    assert isinstance(exc, errors.SftpdError)
    mapped = errors.to_sftp_error(exc)
    assert mapped.code == code
    assert mapped.reason == exc.reason


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (FileNotFoundError(errno.ENOENT, "x"), asyncssh.FX_NO_SUCH_FILE),
        (PermissionError(errno.EACCES, "x"), asyncssh.FX_PERMISSION_DENIED),
        (OSError(errno.ENOTEMPTY, "x"), asyncssh.FX_DIR_NOT_EMPTY),
        (OSError(errno.ENOSPC, "x"), asyncssh.FX_NO_SPACE_ON_FILESYSTEM),
        (OSError(errno.EFBIG, "x"), asyncssh.FX_QUOTA_EXCEEDED),  # a SETSTAT past the fs limit
        (FileExistsError(), asyncssh.FX_FILE_ALREADY_EXISTS),
        (NotImplementedError(), asyncssh.FX_OP_UNSUPPORTED),
        (TimeoutError(), asyncssh.FX_FAILURE),
    ],
)
def test_builtin_exceptions_map_by_errno_and_type(exc: BaseException, code: int) -> None:
    """Plain OSErrors from a backend map by errno, or by type without one."""
    assert errors.to_sftp_error(exc).code == code


def test_unknown_exceptions_never_leak_their_text() -> None:
    """An unexpected exception becomes a bare failure without its message."""
    mapped = errors.to_sftp_error(KeyError("secret-token"))
    assert mapped.code == asyncssh.FX_FAILURE
    assert "secret" not in mapped.reason
    assert not errors.is_expected(KeyError("x"))
    assert errors.is_expected(errors.NoSuchFile())


def test_config_error_is_a_value_error() -> None:
    """Misconfiguration is a ValueError users can catch at start-up."""
    assert issubclass(errors.ConfigError, ValueError)


def test_a_file_too_large_for_the_storage_is_an_expected_failure() -> None:
    """EFBIG (a SETSTAT size past the file system's limit, found by fuzzing) is the
    client's error, logged without a traceback."""
    assert errors.is_expected(OSError(errno.EFBIG, "File too large"))
