"""Authentication: who may log in, and what their session carries.

An authenticator has ``authenticate_password(username, password, peer)`` and/or
``authorize_public_key(username, key, peer)``, as ``async def`` or plain ``def``. Each
returns a mapping of session attributes to accept the login (``{}`` is fine; a ``"root"``
key confines the session to that directory), or ``None``/``False`` to reject it. Raising
:class:`Disconnect` drops the connection. Any other exception rejects that attempt and is
logged; it never reaches the client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import inspect
import ipaddress
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import asyncssh

from ._authorized_keys import KEY_TOKEN, KeyLine, parse_key_line
from ._binding import asyncify
from ._certificates import CertificateInfo
from ._interactive import Ask
from ._passwords import EXTRA as PASSWORDS_EXTRA
from ._passwords import StoredPassword, hash_password
from .errors import ConfigError

log = logging.getLogger("sftpd")

if TYPE_CHECKING:
    from ._session import Peer

__all__ = [
    "Authenticator",
    "AuthorizedKeys",
    "CertificateAuthenticator",
    "CombinedAuthenticator",
    "Disconnect",
    "InteractiveAuthenticator",
    "PasswordAuthenticator",
    "PublicKeyAuthenticator",
    "StaticPasswords",
    "as_authenticator",
    "decode_authorized_key",
    "fingerprint",
]

Attributes = Mapping[str, Any]


class Disconnect(Exception):
    """Raised by an authenticator to drop the connection instead of rejecting one try."""

    def __init__(self, reason: str = "Access denied") -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class PasswordAuthenticator(Protocol):
    """Checks passwords."""

    def authenticate_password(
        self, username: str, password: str, peer: Peer
    ) -> Attributes | Awaitable[Attributes | None] | None:
        """Return session attributes to accept, ``None`` to reject."""


@runtime_checkable
class PublicKeyAuthenticator(Protocol):
    """Checks public keys."""

    def authorize_public_key(
        self, username: str, key: asyncssh.SSHKey, peer: Peer
    ) -> Attributes | Awaitable[Attributes | None] | None:
        """Return session attributes to accept, ``None`` to reject."""


@runtime_checkable
class CertificateAuthenticator(Protocol):
    """Checks OpenSSH user certificates, once the server has verified them."""

    def authorize_certificate(
        self, username: str, certificate: CertificateInfo, peer: Peer
    ) -> Attributes | Awaitable[Attributes | None] | None:
        """Return session attributes to accept, ``None`` to reject."""


@runtime_checkable
class InteractiveAuthenticator(Protocol):
    """Leads keyboard-interactive logins: prompts of its own, several steps, second factors."""

    async def authenticate_interactive(
        self, username: str, peer: Peer, ask: Ask
    ) -> Attributes | None:
        """Ask with ``await ask([(prompt, echo), ...])``; return attributes or ``None``."""


Authenticator = (
    PasswordAuthenticator | PublicKeyAuthenticator | CertificateAuthenticator
    | InteractiveAuthenticator
)  # fmt: skip
"""Anything with at least one of the four methods."""


class StaticPasswords:
    """A fixed set of users and passwords: hashes (argon2id, bcrypt, SHA-crypt) or plaintext.

    Args:
        users: ``{"name": stored}``, each a hash such as ``sftpd hash-password`` prints
            (``$argon2id$...``, ``$2b$...``, ``$6$...``; needs the ``passwords`` extra) or
            a plaintext password (fine for tests; prefer hashes anywhere else).
        attributes: Optional session attributes per user (``{"name": {"root": "/a"}}``).
        totp: Optional TOTP secrets (RFC 6238, base32, as authenticator apps take them)
            per user: those users log in with keyboard-interactive, giving the password
            and then the 6-digit code (from the step before, this one or the next; each
            code once). A password alone does not let them in.

    Plaintext passwords are compared in constant time; hashes are verified in a worker
    thread. An unknown user costs the same as a known one (a dummy verification), so
    timing does not reveal which names exist.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        attributes: Mapping[str, Attributes] | None = None,
        totp: Mapping[str, str] | None = None,
    ) -> None:
        if not users:
            raise ConfigError("auth has no users; give at least one, e.g. {'dev': 'dev'}")
        self.totp = {name: SecondFactor(name, secret) for name, secret in (totp or {}).items()}
        unknown = sorted(set(self.totp) - set(users))
        if unknown:
            raise ConfigError(f"TOTP secrets for users without a password: {unknown}")
        for name, password in users.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"user names must be non-empty strings, got {name!r}")
            if not isinstance(password, str) or not password:
                raise ConfigError(f"user {name!r} needs a non-empty password string")
        self.users = {name: StoredPassword.parse(value, name) for name, value in users.items()}
        self.attributes = {name: dict(attrs) for name, attrs in (attributes or {}).items()}
        hashed = [stored.scheme for stored in self.users.values() if stored.hashed]
        scheme = "sha512-crypt" if hashed and hashed[0].endswith("crypt") else (
            hashed[0] if hashed else "plaintext"
        )  # fmt: skip
        self._dummy = StoredPassword(
            scheme, secrets.token_hex(16) if scheme == "plaintext" else
            hash_password(secrets.token_hex(16), scheme),
        )  # fmt: skip

    @property
    def plaintext_users(self) -> list[str]:
        """Users whose password is stored in plaintext."""
        return sorted(name for name, stored in self.users.items() if not stored.hashed)

    async def authenticate_password(
        self, username: str, password: str, peer: Peer
    ) -> Attributes | None:
        """Accept a known user with the right password (and no second factor)."""
        if username in self.totp:
            log.info("password login refused for %s: a verification code is needed "
                     "(keyboard-interactive)", username)  # fmt: skip
            return None
        return await self._password(username, password, peer)

    async def authenticate_interactive(
        self, username: str, peer: Peer, ask: Ask
    ) -> Attributes | None:
        """The password, then the TOTP code for users who have one."""
        answers = await ask([("Password: ", False)])
        attributes = await self._password(username, answers[0] if answers else "", peer)
        factor = self.totp.get(username)
        if attributes is None or factor is None:
            return attributes
        answers = await ask([("Verification code: ", True)],
                            instructions="Enter the code from your authenticator app.")  # fmt: skip
        return attributes if factor.accept(answers[0] if answers else "") else None

    async def _password(self, username: str, password: str, peer: Peer) -> Attributes | None:
        if not source_allowed(self.attributes.get(username), peer.host):
            log.info("login refused for %s from %s: outside the user's source_networks",
                     username, peer)  # fmt: skip
            return None  # before any hash work
        stored = self.users.get(username)
        check = stored if stored is not None else self._dummy
        if check.hashed:
            ok = await asyncio.to_thread(check.verify, password)
        else:
            ok = check.verify(password)
        if stored is None or not ok:
            return None
        return self.attributes.get(username, {})

    def authorize_certificate(
        self, username: str, certificate: CertificateInfo, peer: Peer
    ) -> Attributes | None:
        """Accept a known user's certificate signed by one of the server's trusted CAs."""
        if not source_allowed(self.attributes.get(username), peer.host):
            return None
        if username in self.users and certificate.trusted_ca:
            return self.attributes.get(username, {})
        return None


def source_allowed(attributes: Mapping[str, Any] | None, host: str) -> bool:
    """Whether ``host`` is inside the user's ``source_networks`` (if the user has any)."""
    networks = (attributes or {}).get("source_networks")
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


def check_source_networks(value: object, user: str) -> list[str]:
    """A user's ``source_networks``: addresses or CIDRs, checked.

    Raises:
        ConfigError: it is not a list of them.
    """
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"user {user!r}: source_networks must be a list such as "
                          '["10.0.0.0/8", "192.0.2.7"]')  # fmt: skip
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"user {user!r}: source_networks: {network!r} is not an "
                              "address or network") from exc  # fmt: skip
    return [str(n) for n in value]


class SecondFactor:
    """A user's TOTP secret (RFC 6238: SHA-1, 6 digits, 30 s steps; pyotp), each code
    accepted once.
    """

    def __init__(self, user: str, secret: str) -> None:
        try:
            import pyotp
        except ImportError as exc:
            raise ConfigError(f"TOTP needs the passwords extra: {PASSWORDS_EXTRA}") from exc
        try:
            base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
        except (ValueError, binascii.Error) as exc:
            raise ConfigError(f"user {user!r}: the TOTP secret is not base32") from exc
        self._totp = pyotp.TOTP(secret)
        self._last_step = -1

    def accept(self, code: str, now: float | None = None) -> bool:
        """Whether ``code`` is this step's, the one before or the next, and not used yet."""
        moment = time.time() if now is None else now
        step = self._totp.timecode(moment)
        for offset in (-1, 0, 1):
            expected = self._totp.at(moment, counter_offset=offset)
            if hmac.compare_digest(code.strip().encode(), expected.encode()):
                if step + offset <= self._last_step:
                    return False  # replayed
                self._last_step = step + offset
                return True
        return False


class AuthorizedKeys:
    """Public keys per user, as in OpenSSH ``authorized_keys`` files.

    Args:
        keys: ``{"user": source}`` where a source is a path to an ``authorized_keys`` file,
            the text of one, or a list of keys or lines. Blank and ``#`` lines are
            skipped. Options before a key are enforced as OpenSSH does for an SFTP-only
            server (``from=``, ``expiry-time=``, ``command=``...; see the auth guide).
        attributes: Optional session attributes per user.

    Raises:
        ConfigError: a file cannot be read, a line holds no key or an unknown option, or
            a user has no keys; the message names the file and line.
    """

    def __init__(
        self,
        keys: Mapping[str, str | os.PathLike[str] | Iterable[str | asyncssh.SSHKey]],
        attributes: Mapping[str, Attributes] | None = None,
    ) -> None:
        self.keys: dict[str, list[KeyLine]] = {}
        for user, source in keys.items():
            loaded = _load_keys(source, user)
            if not loaded:
                raise ConfigError(f"no public keys for user {user!r}")
            self.keys[user] = loaded
        self.attributes = {name: dict(attrs) for name, attrs in (attributes or {}).items()}

    def authorize_public_key(
        self, username: str, key: asyncssh.SSHKey, peer: Peer
    ) -> Attributes | None:
        """Accept a key listed for this user, if its options let it in from ``peer`` now."""
        if not source_allowed(self.attributes.get(username), peer.host):
            return None
        for line in self.keys.get(username, ()):
            if not line.cert_authority and line.allows(key, peer.host):
                return self.attributes.get(username, {})
        return None

    def authorize_certificate(
        self, username: str, certificate: CertificateInfo, peer: Peer
    ) -> Attributes | None:
        """Accept a listed user's certificate signed by a server-trusted CA, or by a CA on
        a ``cert-authority`` line of the user's (its ``from=``, ``principals=`` and
        ``expiry-time=`` hold).
        """
        lines = self.keys.get(username)
        if lines is None or certificate.ca_key is None:
            return None
        if not source_allowed(self.attributes.get(username), peer.host):
            return None
        if certificate.trusted_ca or any(
            line.cert_authority and line.allows(certificate.ca_key, peer.host,
                                                certificate.principals)
            for line in lines
        ):  # fmt: skip
            return self.attributes.get(username, {})
        return None


def _load_keys(
    source: str | os.PathLike[str] | Iterable[str | asyncssh.SSHKey], user: str
) -> list[KeyLine]:
    if (
        isinstance(source, (str, os.PathLike))
        and "\n" not in str(source)
        and (not str(source).lstrip().startswith(("ssh-", "ecdsa-", "sk-")))
    ):
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read authorized keys {path} for {user!r}: {exc}") from exc
        lines: Iterable[str | asyncssh.SSHKey] = text.splitlines()
        where = str(path)
    elif isinstance(source, str):
        lines, where = source.splitlines(), "text"
    else:
        lines, where = list(source), "list"  # type: ignore[arg-type]
    keys: list[KeyLine] = []
    for number, line in enumerate(lines, 1):
        if isinstance(line, asyncssh.SSHKey):
            line = line.export_public_key().decode()
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            keys.append(parse_key_line(stripped, number, f"{where} (user {user!r})"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return keys


class CombinedAuthenticator:
    """Several authenticators on one server; the first that accepts wins.

    ``CombinedAuthenticator(StaticPasswords(...), AuthorizedKeys(...))`` offers both
    password and public-key logins.
    """

    def __init__(self, *authenticators: object) -> None:
        if not authenticators:
            raise ConfigError("CombinedAuthenticator needs at least one authenticator")
        self.bound = [BoundAuthenticator(as_authenticator(a)) for a in authenticators]
        if any(b.password is not None for b in self.bound):
            self.authenticate_password = self._password
        if any(b.public_key is not None for b in self.bound):
            self.authorize_public_key = self._public_key
        if any(b.certificate is not None for b in self.bound):
            self.authorize_certificate = self._certificate
        interactive = [b.interactive for b in self.bound if b.interactive is not None]
        if interactive:  # a conversation cannot be retried: the first one leads it
            self.authenticate_interactive = interactive[0]

    async def _password(self, username: str, password: str, peer: Peer) -> Attributes | None:
        return await self._first([b.password for b in self.bound], username, password, peer)

    async def _public_key(
        self, username: str, key: asyncssh.SSHKey, peer: Peer
    ) -> Attributes | None:
        return await self._first([b.public_key for b in self.bound], username, key, peer)

    async def _certificate(
        self, username: str, certificate: CertificateInfo, peer: Peer
    ) -> Attributes | None:
        return await self._first([b.certificate for b in self.bound], username, certificate, peer)

    @staticmethod
    async def _first(
        checks: list[Any], username: str, credential: Any, peer: Peer
    ) -> Attributes | None:
        for check in checks:
            if check is not None:
                result = await check(username, credential, peer)
                if isinstance(result, Mapping):  # an empty mapping accepts too
                    return result
        return None


class BoundAuthenticator:
    """An authenticator with both methods made async, decided once at start-up."""

    def __init__(self, auth: object) -> None:
        self.auth = auth
        self.password: Callable[..., Awaitable[Attributes | None]] | None = None
        self.public_key: Callable[..., Awaitable[Attributes | None]] | None = None
        self.certificate: Callable[..., Awaitable[Attributes | None]] | None = None
        self.interactive: Callable[..., Awaitable[Attributes | None]] | None = None
        if callable(getattr(auth, "authenticate_password", None)):
            self.password = asyncify(auth.authenticate_password)  # type: ignore[attr-defined]
        if callable(getattr(auth, "authorize_public_key", None)):
            self.public_key = asyncify(auth.authorize_public_key)  # type: ignore[attr-defined]
        if callable(getattr(auth, "authorize_certificate", None)):
            self.certificate = asyncify(auth.authorize_certificate)  # type: ignore[attr-defined]
        interactive = getattr(auth, "authenticate_interactive", None)
        if callable(interactive):
            if not inspect.iscoroutinefunction(interactive):
                raise ConfigError("authenticate_interactive(username, peer, ask) must be "
                                  "async def: it awaits ask(prompts)")  # fmt: skip
            self.interactive = interactive


def as_authenticator(auth: object) -> Authenticator:
    """Accept an authenticator object or a ``{"user": "password"}`` mapping.

    Raises:
        ConfigError: ``auth`` is neither.
    """
    if isinstance(auth, Mapping):
        return StaticPasswords(auth)
    kinds = (PasswordAuthenticator, PublicKeyAuthenticator, CertificateAuthenticator,
             InteractiveAuthenticator)  # fmt: skip
    if isinstance(auth, kinds):
        return auth
    if isinstance(auth, CombinedAuthenticator):
        return auth
    raise ConfigError(
        "auth must be a {'user': 'password'} mapping or an object with "
        "authenticate_password(username, password, peer), authorize_public_key(username, "
        f"key, peer), authorize_certificate(username, certificate, peer) or "
        f"authenticate_interactive(username, peer, ask); got "
        f"{type(auth).__name__}"
    )


# ------------------------------------------------------------------------ key helpers


def decode_authorized_key(line: str) -> asyncssh.SSHKey:
    """Decode one line of an OpenSSH ``authorized_keys`` file into a public key.

    Leading options (``from="..."``, ``no-pty``...) and a trailing comment are tolerated.

    Raises:
        ValueError: the line holds no key of a supported type.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        raise ValueError("empty or comment line holds no key")
    match = KEY_TOKEN.search(text)
    if match is None:
        raise ValueError("no ssh-ed25519, ecdsa-sha2-* or ssh-rsa key found in line")
    try:
        return asyncssh.import_public_key(f"{match.group(1)} {match.group(2)}")
    except asyncssh.KeyImportError as exc:
        raise ValueError(f"invalid public key: {exc}") from exc


def fingerprint(key: asyncssh.SSHKey, digest: str = "sha256") -> str:
    """Return a key's fingerprint exactly as ``ssh-keygen -l`` prints it.

    Args:
        key: A public (or private) key.
        digest: ``"sha256"`` (``SHA256:<base64, no padding>``) or ``"md5"``
            (``MD5:aa:bb:...``).
    """
    if digest not in ("sha256", "md5"):
        raise ValueError(f"digest must be 'sha256' or 'md5', got {digest!r}")
    return key.get_fingerprint(digest)
