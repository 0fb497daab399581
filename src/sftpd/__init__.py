"""sftpd: an embeddable, asyncio-native SFTP server with pluggable storage.

import sftpd

async with sftpd.Server(
    backend=sftpd.MemoryBackend(),
    auth={"dev": "dev"},
    system_dir="ssh_keys",
    port=2222,
) as server:
    ...
"""

from ._bandwidth import Bandwidth
from ._certificates import CertificateInfo
from ._config import CIPHERS, DEFAULT_CIPHERS, ServerConfig
from ._permissions import Permissions
from ._policy import Operation
from ._quota import Quota
from ._server import Server, run
from ._session import Peer, Session
from ._throttle import LoginLimits
from ._upload import Upload
from ._version import __version__
from .auth import (
    Authenticator,
    AuthorizedKeys,
    CombinedAuthenticator,
    Disconnect,
    StaticPasswords,
    decode_authorized_key,
    fingerprint,
)
from .backend import (
    AttrChanges,
    Backend,
    DirEntry,
    FileAttrs,
    FileType,
    SpaceInfo,
    Writer,
    directory_info,
    file_info,
)
from .backends.local import LocalBackend
from .backends.memory import MemoryBackend
from .errors import (
    ConfigError,
    DirectoryNotEmpty,
    Failure,
    FileAlreadyExists,
    InvalidFilename,
    InvalidParameter,
    IsADirectory,
    NoSpace,
    NoSuchFile,
    NotADirectory,
    PermissionDenied,
    QuotaExceeded,
    SftpdError,
    StorageError,
    Unsupported,
)

__all__ = [
    "CIPHERS",
    "DEFAULT_CIPHERS",
    "AttrChanges",
    "Authenticator",
    "AuthorizedKeys",
    "Backend",
    "Bandwidth",
    "CertificateInfo",
    "CombinedAuthenticator",
    "ConfigError",
    "DirEntry",
    "DirectoryNotEmpty",
    "Disconnect",
    "Failure",
    "FileAlreadyExists",
    "FileAttrs",
    "FileType",
    "InvalidFilename",
    "InvalidParameter",
    "IsADirectory",
    "LocalBackend",
    "LoginLimits",
    "MemoryBackend",
    "NoSpace",
    "NoSuchFile",
    "NotADirectory",
    "Operation",
    "Peer",
    "PermissionDenied",
    "Permissions",
    "Quota",
    "QuotaExceeded",
    "Server",
    "ServerConfig",
    "Session",
    "SftpdError",
    "SpaceInfo",
    "StaticPasswords",
    "StorageError",
    "Unsupported",
    "Upload",
    "Writer",
    "__version__",
    "decode_authorized_key",
    "directory_info",
    "file_info",
    "fingerprint",
    "run",
]
