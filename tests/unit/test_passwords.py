"""Unit: stored password hashes are read by scheme, verified, and bounded in cost."""

from __future__ import annotations

import pytest

from sftpd import ConfigError
from sftpd._passwords import StoredPassword, hash_password


@pytest.mark.parametrize("scheme", ["argon2id", "bcrypt", "sha512-crypt"])
def test_each_scheme_verifies_the_right_password_only(scheme: str) -> None:
    """A hash from hash_password is recognised by its prefix and verifies only its password."""
    stored = StoredPassword.parse(hash_password("correct horse", scheme), "alice")
    assert stored.scheme == scheme
    assert stored.hashed
    assert stored.verify("correct horse")
    assert not stored.verify("correct hors")
    assert not stored.verify("")


def test_existing_hashes_from_other_tools_verify() -> None:
    """Hashes made elsewhere verify: SHA-512-crypt from `openssl passwd -6` (as in
    /etc/shadow) and bcrypt with PHP's $2y$ prefix (htpasswd -B)."""
    shadow = (
        "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc"
        ".eoxqOmSuNp2xS0ktL3nh/"
    )
    assert StoredPassword.parse(shadow, "u").verify("password")
    bcrypt_2y = "$2y$04$LtWYvKBo96K/j2dj1n7UduO7S7cZieNiGpadIct9Pf.LjWETTcY6i"
    assert StoredPassword.parse(bcrypt_2y, "u").verify("pw")


def test_plaintext_is_compared_exactly() -> None:
    """A value without a hash prefix is a plaintext password, compared byte for byte."""
    stored = StoredPassword.parse("s3cret", "u")
    assert (stored.scheme, stored.hashed) == ("plaintext", False)
    assert stored.verify("s3cret")
    assert not stored.verify("s3cret ")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("$argon2id$v=19$m=1048576,t=3,p=4$c2FsdHNhbHQ$aGFzaA", "above what a login may cost"),
        ("$argon2id$v=19$m=65536,t=50,p=4$c2FsdHNhbHQ$aGFzaA", "above what a login may cost"),
        ("$2b$16$" + "a" * 53, "bcrypt cost 16 is above"),
        ("$6$rounds=5000000$salt$" + "a" * 86, "rounds 5000000 are above"),
        ("$argon2i$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", "not an argon2id hash"),
        ("$2b$12$short", "not a bcrypt hash"),
        ("$1$md5salt$hash", "unknown password hash"),
    ],
)
def test_costly_malformed_or_unknown_hashes_fail_at_start(value: str, message: str) -> None:
    """Hashes whose verification would cost too much, or that are malformed or of an
    unsupported scheme (MD5-crypt), are refused when the users are loaded."""
    with pytest.raises(ConfigError, match=message):
        StoredPassword.parse(value, "alice")


def test_bcrypt_refuses_passwords_past_its_72_bytes() -> None:
    """bcrypt reads only 72 bytes; a longer password is refused, never truncated into a match."""
    stored = StoredPassword.parse(hash_password("x" * 72, "bcrypt"), "u")
    assert stored.verify("x" * 72)
    assert not stored.verify("x" * 73)
