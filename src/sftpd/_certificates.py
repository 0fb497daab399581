"""OpenSSH user certificates: what one says, and the server's trust in its signer.

asyncssh checks a certificate's signature, type, validity window, principal and
``source-address``; sftpd adds what OpenSSH's sshd adds around it: trusted CA keys (as
``TrustedUserCAKeys``), principals mapped to users (as ``AuthorizedPrincipalsFile``),
revoked keys (as ``RevokedKeys``, a file of public keys; KRLs are not read), and the
authenticator's say with the certificate in hand (:class:`CertificateInfo`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.public_key import SSHOpenSSHCertificate

from .errors import ConfigError

__all__ = ["CertificateInfo", "certificate_info", "load_public_keys"]

# Public-key fields after the nonce in each certificate type (draft-miller-ssh-cert).
_KEY_FIELDS = {
    "ssh-ed25519-cert-v01@openssh.com": 1,
    "ssh-rsa-cert-v01@openssh.com": 2,
    "ssh-dss-cert-v01@openssh.com": 4,
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": 2,
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": 2,
    "sk-ssh-ed25519-cert-v01@openssh.com": 2,
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": 3,
}


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """An OpenSSH user certificate offered at login, as the authenticator sees it.

    Attributes:
        key_id: The key id the CA wrote (often the person or the request).
        serial: The CA's serial number.
        principals: The names the certificate is valid for.
        valid_after: Seconds since the epoch it is valid from.
        valid_before: Seconds since the epoch it is valid until (2**64-1: forever).
        ca_fingerprint: ``SHA256:...`` of the signing CA key.
        key_fingerprint: ``SHA256:...`` of the certified key.
        trusted_ca: Signed by one of the server's ``trusted_user_ca_keys``. Built-in
            authenticators also trust ``cert-authority`` lines of the user's keys.
        principal: The principal the login was matched to.
        options: The critical options (``source-address``, ``force-command``).
    """

    key_id: str
    serial: int
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    ca_fingerprint: str
    key_fingerprint: str
    trusted_ca: bool
    principal: str
    options: Mapping[str, Any] = field(default_factory=dict)
    ca_key: asyncssh.SSHKey | None = field(default=None, repr=False, compare=False)


def parse_certificate(key_data: bytes) -> SSHOpenSSHCertificate | None:
    """The OpenSSH certificate in a public-key login request, or None for a plain key."""
    name = _string(key_data, 0)[0]
    if name is None or not name.endswith(b"-cert-v01@openssh.com"):
        return None
    text = f"{name.decode()} {base64.b64encode(key_data).decode()}"
    try:
        cert = asyncssh.import_certificate(text)
    except (asyncssh.KeyImportError, ValueError):
        return None
    return cert if isinstance(cert, SSHOpenSSHCertificate) else None


def certificate_info(
    cert: SSHOpenSSHCertificate, *, trusted_ca: bool, principal: str
) -> CertificateInfo:
    """What ``cert`` says: its key id, serial and validity read from its wire form."""
    data = cert.public_data
    name, offset = _string(data, 0)
    assert name is not None
    _nonce, offset = _string(data, offset)
    for _ in range(_KEY_FIELDS.get(name.decode(), 1)):
        _skipped, offset = _string(data, offset)
    serial = int.from_bytes(data[offset : offset + 8], "big")
    offset += 8 + 4  # serial, certificate type
    key_id, offset = _string(data, offset)
    _principals, offset = _string(data, offset)
    valid_after = int.from_bytes(data[offset : offset + 8], "big")
    valid_before = int.from_bytes(data[offset + 8 : offset + 16], "big")
    options = {k: v for k, v in cert.options.items() if not k.startswith("permit-")}
    return CertificateInfo(
        key_id=(key_id or b"").decode("utf-8", "replace"),
        serial=serial,
        principals=tuple(cert.principals),
        valid_after=valid_after,
        valid_before=valid_before,
        ca_fingerprint=cert.signing_key.get_fingerprint(),
        key_fingerprint=cert.key.get_fingerprint(),
        trusted_ca=trusted_ca,
        principal=principal,
        options=options,
        ca_key=cert.signing_key,
    )


def _string(data: bytes, offset: int) -> tuple[bytes | None, int]:
    if offset + 4 > len(data):
        return None, offset
    size = int.from_bytes(data[offset : offset + 4], "big")
    return data[offset + 4 : offset + 4 + size], offset + 4 + size


def load_public_keys(
    sources: Iterable[str | os.PathLike[str] | asyncssh.SSHKey], what: str
) -> list[asyncssh.SSHKey]:
    """Public keys from files (one per line, ``#`` comments) or key objects.

    Raises:
        ConfigError: a file cannot be read or a line is not a public key.
    """
    keys: list[asyncssh.SSHKey] = []
    for source in sources:
        if isinstance(source, asyncssh.SSHKey):
            keys.append(source)
            continue
        path = Path(source)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                keys.append(asyncssh.import_public_key(text))
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise ConfigError(f"{what} {path}, line {number}: not a public key: {exc}") from exc
    return keys


def allowed_principals(username: str, mapping: Mapping[str, Sequence[str]] | None) -> Sequence[str]:
    """The principals a certificate may carry to log in as ``username`` (default: the name)."""
    if mapping is not None and username in mapping:
        return mapping[username]
    return (username,)
