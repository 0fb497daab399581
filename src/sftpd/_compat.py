"""Tolerance for a known client bug that OpenSSH's server accepts and asyncssh refuses.

Go's ``github.com/pkg/sftp`` before 1.13.6 (so rclone before 1.62, and Go tools built on
it) sends each concurrent upload write with the whole 32 KiB buffer after the data: the
``data`` string's length is right, but the packet goes on with stale bytes. OpenSSH's
sftp-server reads the fields it needs and skips the rest of a packet; asyncssh answers
``SSH_FX_BAD_MESSAGE``, so those clients cannot upload anything over one buffer.

:func:`install` wraps asyncssh's ``SSH_FXP_WRITE`` handler once per process. For sessions
served by :class:`~sftpd._adapter.SftpAdapter` only, a write whose packet runs on past its
data is handed on without the extra bytes, which are never stored. Every other asyncssh
SFTP server in the process, and every other request type, is treated as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from asyncssh import sftp as asyncssh_sftp
from asyncssh.constants import FXP_WRITE
from asyncssh.packet import SSHPacket

log = logging.getLogger("sftpd")

_Handler = Callable[[Any, SSHPacket], Awaitable[Any]]


def trailing_bytes(payload: bytes, start: int) -> int:
    """Bytes after the ``data`` string of a WRITE request whose fields begin at ``start``.

    Returns 0 for a well-formed request, and also when the fields do not fit (the strict
    parser then reports the malformed packet as before).
    """
    handle_end = start + 4 + int.from_bytes(payload[start : start + 4], "big")
    length_at = handle_end + 8
    data_end = length_at + 4 + int.from_bytes(payload[length_at : length_at + 4], "big")
    return max(0, len(payload) - data_end) if data_end <= len(payload) else 0


def install() -> None:
    """Make WRITE requests in sftpd's sessions tolerate trailing bytes (idempotent)."""
    from ._adapter import SftpAdapter

    handlers = cast(dict[Any, _Handler], asyncssh_sftp.SFTPServerHandler._packet_handlers)
    original = handlers.get(FXP_WRITE)
    if original is None or getattr(original, "_sftpd_lenient", False):
        return

    async def process_write(handler: Any, packet: SSHPacket) -> Any:
        if isinstance(getattr(handler, "_server", None), SftpAdapter):
            payload = packet.get_full_payload()
            start = len(packet.get_consumed_payload())
            extra = trailing_bytes(payload, start)
            if extra:
                log.debug("ignoring %d bytes after the data of a write request", extra)
                packet = SSHPacket(payload[start : len(payload) - extra])
        return await original(handler, packet)

    process_write._sftpd_lenient = True  # type: ignore[attr-defined]
    handlers[FXP_WRITE] = process_write
