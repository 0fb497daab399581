"""Stored passwords: argon2id and bcrypt hashes, SHA-crypt for migrations, or plaintext.

A stored value is read by its prefix: ``$argon2id$`` (argon2-cffi), ``$2b$``/``$2a$``/
``$2y$`` (bcrypt), ``$6$``/``$5$`` (SHA-512/256-crypt, as in ``/etc/shadow``; libpass).
Anything else is a plaintext password, compared in constant time. The libraries are in
the ``passwords`` extra (``pip install 'pysftpd[passwords]'``); a hash given without them
fails at start-up naming the extra.

Verification costs CPU on purpose, so a login attempt could be used to burn it: a hash
whose parameters make one verification cost more than :data:`MAX_COST` (argon2 memory
above 256 MiB or time cost above 10, bcrypt above 2^14 rounds, SHA-crypt above 1 000 000
rounds) is refused at start-up, and each verification runs in a worker thread, bounded by
the login throttle and ``max_unauthenticated``.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["SCHEMES", "StoredPassword", "hash_password"]

SCHEMES = ("argon2id", "bcrypt", "sha512-crypt")
EXTRA = "pip install 'pysftpd[passwords]' (argon2-cffi, bcrypt, libpass, pyotp)"
MAX_COST = "argon2 m=262144 KiB and t=10, bcrypt 14 rounds, SHA-crypt 1000000 rounds"
_ARGON2 = re.compile(r"^\$argon2id\$v=\d+\$m=(\d+),t=(\d+),p=(\d+)\$")
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_SHA_CRYPT = re.compile(r"^\$([56])\$(?:rounds=(\d+)\$)?[^$]{0,16}\$[./A-Za-z0-9]+$")


def _module(name: str) -> Any:
    try:
        if name == "argon2":
            import argon2

            return argon2
        if name == "bcrypt":
            import bcrypt

            return bcrypt
        from passlib import hash as passlib_hash

        return passlib_hash
    except ImportError as exc:
        raise ConfigError(f"password hashes need the passwords extra: {EXTRA}") from exc


@dataclass(frozen=True, slots=True)
class StoredPassword:
    """One user's stored password: a hash (by scheme) or plaintext."""

    scheme: str  # "argon2id", "bcrypt", "sha512-crypt", "sha256-crypt" or "plaintext"
    value: str

    @classmethod
    def parse(cls, value: str, user: str) -> StoredPassword:
        """Read a stored value, checking that its hash is one sftpd can afford to verify.

        Raises:
            ConfigError: a hash needs the missing extra, is malformed, or costs too much.
        """
        if value.startswith("$argon2"):
            match = _ARGON2.match(value)
            if match is None:
                raise ConfigError(f"user {user!r}: not an argon2id hash ($argon2id$v=19$m=...)")
            memory, rounds = int(match.group(1)), int(match.group(2))
            if memory > 262144 or rounds > 10:
                raise ConfigError(f"user {user!r}: argon2 cost m={memory},t={rounds} is above "
                                  f"what a login may cost ({MAX_COST})")  # fmt: skip
            _module("argon2")
            return cls("argon2id", value)
        if value.startswith("$2"):
            match = _BCRYPT.match(value)
            if match is None:
                raise ConfigError(f"user {user!r}: not a bcrypt hash ($2b$12$...)")
            if int(match.group(1)) > 14:
                raise ConfigError(f"user {user!r}: bcrypt cost {match.group(1)} is above what "
                                  f"a login may cost ({MAX_COST})")  # fmt: skip
            _module("bcrypt")
            return cls("bcrypt", value)
        if value.startswith(("$6$", "$5$")):
            match = _SHA_CRYPT.match(value)
            if match is None:
                raise ConfigError(f"user {user!r}: not a SHA-crypt hash ($6$salt$...)")
            rounds = int(match.group(2) or 5000)
            if rounds > 1_000_000:
                raise ConfigError(f"user {user!r}: SHA-crypt rounds {rounds} are above what a "
                                  f"login may cost ({MAX_COST})")  # fmt: skip
            _module("passlib")
            return cls("sha512-crypt" if match.group(1) == "6" else "sha256-crypt", value)
        if value.startswith("$"):
            raise ConfigError(
                f"user {user!r}: unknown password hash {value[:8]!r}...; use argon2id, bcrypt "
                "or SHA-512-crypt (sftpd hash-password prints one)"
            )
        return cls("plaintext", value)

    @property
    def hashed(self) -> bool:
        """False for a plaintext password."""
        return self.scheme != "plaintext"

    def verify(self, password: str) -> bool:
        """Whether ``password`` matches, in time that does not depend on where it differs.

        Hash verifications take tens of milliseconds: call it from a worker thread.
        """
        given = password.encode()
        if self.scheme == "plaintext":
            return hmac.compare_digest(given, self.value.encode())
        if self.scheme == "argon2id":
            argon2 = _module("argon2")
            try:
                return bool(argon2.PasswordHasher().verify(self.value, given))
            except argon2.exceptions.VerificationError:
                return False
            except argon2.exceptions.InvalidHashError:
                return False
        if self.scheme == "bcrypt":
            try:
                return bool(_module("bcrypt").checkpw(given, self.value.encode()))
            except ValueError:  # longer than bcrypt's 72 bytes: it cannot be the one
                return False
        handler = (
            _module("passlib").sha512_crypt
            if self.scheme == "sha512-crypt"
            else (_module("passlib").sha256_crypt)
        )
        return bool(handler.verify(password, self.value))


def hash_password(password: str, scheme: str = "argon2id") -> str:
    """A new hash of ``password`` to paste into a config file.

    argon2id with argon2-cffi's defaults (RFC 9106's low-memory profile: 64 MiB, t=3), or
    bcrypt with 12 rounds, or SHA-512-crypt with 5000 rounds (for systems that need it).
    """
    if not password:
        raise ValueError("the password is empty")
    if scheme == "argon2id":
        return str(_module("argon2").PasswordHasher().hash(password))
    if scheme == "bcrypt":
        bcrypt = _module("bcrypt")
        return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(12)).decode())
    if scheme == "sha512-crypt":
        return str(_module("passlib").sha512_crypt.using(rounds=5000).hash(password))
    raise ValueError(f"unknown scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
