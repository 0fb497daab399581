"""``authorized_keys`` lines with their options, enforced as OpenSSH's sshd does for SFTP.

A line is ``[options] keytype base64 [comment]``. The options that limit who may log in
hold: ``from=`` (host patterns and CIDRs, ``!`` negation; matched against the client's
address, as sshd with ``UseDNS no``), ``expiry-time=``, ``principals=`` and
``cert-authority`` (for certificate logins). Options about what a session may do besides
SFTP (``restrict``, ``no-pty``, ``no-port-forwarding``, ``permitopen=``...) are accepted:
sftpd serves nothing else. ``command=`` is a forced command: a key forced to
``internal-sftp`` or an ``sftp-server`` still logs in, any other forced command refuses
the key (sshd would run that command instead of SFTP). An unknown option, an unbalanced
quote or a malformed time fails loading with the line number.

Matching ``from=`` and ``principals=`` is asyncssh's own (``import_authorized_keys``).
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import asyncssh

__all__ = ["KeyLine", "parse_key_line", "serves_sftp"]

log = logging.getLogger("sftpd")

FLAGS = frozenset({
    "agent-forwarding", "cert-authority", "no-agent-forwarding", "no-port-forwarding",
    "no-pty", "no-user-rc", "no-X11-forwarding", "no-touch-required", "port-forwarding",
    "pty", "restrict", "user-rc", "verify-required", "X11-forwarding",
})  # fmt: skip
VALUED = frozenset({
    "command", "environment", "expiry-time", "from", "permitlisten", "permitopen",
    "principals", "tunnel",
})  # fmt: skip
KEY_TOKEN = re.compile(
    r"(?:^|\s)((?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)"
    r"|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com))\s+([A-Za-z0-9+/]+={0,2})(?:\s|$)"
)
_TIME = re.compile(r"(\d{8})(\d{4})?(\d{2})?(Z)?")


@dataclass(frozen=True, slots=True)
class KeyLine:
    """One key of an ``authorized_keys`` source, with what its options allow.

    Attributes:
        key: The public key (for ``cert-authority``: the CA's key).
        number: The line number, for messages.
        cert_authority: The key signs user certificates rather than logging in itself.
        expires: ``time.time()`` after which the key is refused (``expiry-time``).
        command: A forced command (``command=``), or None.
        options: Every option as written: flags True, valued options their values.
    """

    key: asyncssh.SSHKey
    number: int
    cert_authority: bool
    expires: float | None
    command: str | None
    options: dict[str, bool | list[str]]
    _matcher: asyncssh.SSHAuthorizedKeys

    @property
    def serves_sftp(self) -> bool:
        """False when a forced command would run something other than SFTP."""
        return self.command is None or serves_sftp(self.command)

    def allows(
        self, key: asyncssh.SSHKey, address: str, principals: Sequence[str] | None = None,
        *, now: float | None = None,
    ) -> bool:  # fmt: skip
        """Whether this line lets ``key`` in from ``address`` (with a certificate's
        ``principals`` for a CA line) at ``now``.
        """
        if key.public_data != self.key.public_data:
            return False
        if self.expires is not None and (time.time() if now is None else now) >= self.expires:
            return False
        if not self.serves_sftp:
            return False
        try:
            matched = self._matcher.validate(
                key, address, address, principals, ca=self.cert_authority
            )
        except ValueError:  # an address that is not an IP (a test's fake peer)
            return False
        return matched is not None


def serves_sftp(command: str) -> bool:
    """Whether a forced command still means SFTP: ``internal-sftp`` or an ``sftp-server``."""
    words = command.split()
    return bool(words) and (
        words[0] == "internal-sftp" or PurePosixPath(words[0]).name == "sftp-server"
    )


def parse_key_line(line: str, number: int, where: str) -> KeyLine:
    """Parse one non-blank, non-comment line.

    Raises:
        ValueError: the line holds no key, or an option is unknown or malformed; the
            message names ``where`` and the line.
    """
    text = line.strip()
    match = KEY_TOKEN.search(text)
    if match is None:
        raise ValueError(f"{where}, line {number}: no ssh-ed25519, ecdsa-sha2-* or ssh-rsa key")
    try:
        key = asyncssh.import_public_key(f"{match.group(1)} {match.group(2)}")
    except asyncssh.KeyImportError as exc:
        raise ValueError(f"{where}, line {number}: invalid public key: {exc}") from exc
    prefix = text[: match.start(1)].strip()
    options = _parse_options(prefix, number, where)
    expires = None
    if "expiry-time" in options:
        values = options["expiry-time"]
        assert isinstance(values, list)
        expires = min(_parse_time(value, number, where) for value in values)
    command_values = options.get("command")
    command = command_values[-1] if isinstance(command_values, list) else None
    cert_authority = options.get("cert-authority") is True
    try:
        matcher = asyncssh.import_authorized_keys(f"{prefix} {match.group(1)} {match.group(2)}")
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise ValueError(f"{where}, line {number}: {exc}") from exc
    entry = KeyLine(key, number, cert_authority, expires, command, options, matcher)
    if not entry.serves_sftp:
        log.warning("%s, line %d: command=%r is not SFTP; this key will be refused",
                    where, number, command)  # fmt: skip
    return entry


def _parse_options(prefix: str, number: int, where: str) -> dict[str, bool | list[str]]:
    """``name,name="value",...`` as OpenSSH writes them (quotes, backslash escapes)."""
    options: dict[str, bool | list[str]] = {}
    if not prefix:
        return options
    pieces: list[str] = []
    current, quoted, escaped = "", False, False
    for char in prefix:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            pieces.append(current)
            current = ""
        elif char in " \t" and not quoted:
            raise ValueError(f"{where}, line {number}: space in options outside quotes")
        else:
            current += char
    if quoted or escaped:
        raise ValueError(f"{where}, line {number}: unbalanced quote in options")
    pieces.append(current)
    for piece in pieces:
        name, has_value, value = piece.partition("=")
        if has_value and name in VALUED:
            existing = options.setdefault(name, [])
            assert isinstance(existing, list)
            existing.append(value)
        elif not has_value and name.lower() in {f.lower() for f in FLAGS}:
            options[name] = True
        else:
            raise ValueError(
                f"{where}, line {number}: unknown or malformed option {piece!r} "
                f"(known: {', '.join(sorted(FLAGS | VALUED))})"
            )
    return options


def _parse_time(value: str, number: int, where: str) -> float:
    """``YYYYMMDD[HHMM[SS]][Z]``: local time, or UTC with ``Z`` (as sshd reads it)."""
    match = _TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"{where}, line {number}: expiry-time {value!r} is not YYYYMMDD[HHMM[SS]]")
    day, clock, seconds, utc = match.groups()
    try:
        moment = datetime.datetime.strptime(day + (clock or "0000") + (seconds or "00"),
                                            "%Y%m%d%H%M%S")  # fmt: skip
    except ValueError as exc:
        raise ValueError(f"{where}, line {number}: expiry-time {value!r}: {exc}") from exc
    if utc:
        return moment.replace(tzinfo=datetime.timezone.utc).timestamp()
    return time.mktime(moment.timetuple())
