"""Who is connected: the Session every backend call and event receives."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._certificates import CertificateInfo
from ._memory import UNLIMITED, UploadMemory
from ._permissions import Permissions
from ._quota import Quota
from .errors import ConfigError
from .paths import decode, normalize

__all__ = ["Peer", "Session"]


def check_max_file_size(value: object) -> None:
    """A size limit is a whole number of bytes, or None for none.

    Raises:
        ConfigError: it is not.
    """
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ConfigError(f"max_file_size must be a number of bytes (>= 0), got {value!r}")


@dataclass(frozen=True, slots=True)
class Peer:
    """The client's address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """One authenticated SSH connection.

    Attributes:
        id: Random identifier, unique per connection, for logs and events.
        username: The name the client authenticated as.
        peer: The client's address.
        auth_method: ``"password"``, ``"publickey"`` or ``"keyboard-interactive"``; for a
            chain of methods (``authentication_methods``) the chain, as
            ``"publickey+password"``.
        key_fingerprint: ``SHA256:...`` of the key used, for public-key logins.
        attributes: What the authenticator returned (tenant ids, prefixes...), read-only.
        root: The directory the session is confined to; every client path is placed
            inside it before a backend sees it. Taken from ``attributes["root"]``.
        permissions: What the session may do, from ``attributes["permissions"]`` (a
            preset such as ``"read-only"``, or see :class:`Permissions`).
        max_file_size: The largest file, in bytes, this session may upload (or grow by
            appending); a write past it fails and the upload stores nothing. From
            ``attributes["max_file_size"]``, else the server's ``max_file_size``; None:
            no limit.
        started: ``time.time()`` when the session was authenticated.
        certificate: For a certificate login, what the certificate said (key id, serial,
            principals, validity, CA); else None.
        upload_memory: The server's budget for upload bytes held in memory, which
            writers that keep bytes after a write draw from (see
            :class:`~sftpd.backend.UploadMemory`); no limit outside a server.
        quota: The storage quota the session's uploads count against, from
            ``attributes["quota_bytes"]``, ``["quota_files"]`` and ``["quota_key"]``
            (default: the username); None: no quota.
    """

    username: str
    peer: Peer
    auth_method: str = "password"
    key_fingerprint: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    root: str = "/"
    permissions: Permissions = field(default_factory=Permissions)
    max_file_size: int | None = None
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    started: float = field(default_factory=time.time)
    certificate: CertificateInfo | None = None
    upload_memory: UploadMemory = field(default=UNLIMITED, repr=False, compare=False)
    quota: Quota | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))
        root = self.root
        if not isinstance(root, str) or not root.startswith("/"):
            raise ConfigError(f"session root must be an absolute path, got {root!r}")
        object.__setattr__(self, "root", normalize(decode(root)))
        check_max_file_size(self.max_file_size)

    @classmethod
    def from_attributes(
        cls,
        *,
        username: str,
        peer: Peer,
        auth_method: str,
        attributes: Mapping[str, Any] | None,
        key_fingerprint: str | None = None,
        max_file_size: int | None = None,
        upload_memory: UploadMemory = UNLIMITED,
        certificate: CertificateInfo | None = None,
    ) -> Session:
        """Build a session from what an authenticator returned.

        ``root``, ``permissions``, ``max_file_size`` and the quota keys in the attributes
        are honoured; ``max_file_size`` here is the server's default for the former.
        """
        attrs = dict(attributes or {})
        root = attrs.get("root", "/")
        return cls(
            username=username,
            peer=peer,
            auth_method=auth_method,
            key_fingerprint=key_fingerprint,
            attributes=attrs,
            root=str(root),
            permissions=Permissions.parse(
                attrs.get("permissions"),
                denied_names=attrs.get("denied_names"),
                hidden_names=attrs.get("hidden_names"),
            ),
            max_file_size=attrs.get("max_file_size", max_file_size),
            upload_memory=upload_memory,
            certificate=certificate,
            quota=Quota.from_attributes(username, attrs),
        )


def make_session(username: str = "tester", **attributes: Any) -> Session:
    """A session for calling backend methods directly in tests (``sftpd.testing``)."""
    return Session(username=username, peer=Peer("127.0.0.1", 0), attributes=attributes)
