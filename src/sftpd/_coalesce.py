"""Fewer packets and fewer sends for asyncssh connections: the two internals sftpd touches.

asyncssh writes every SSH packet to the transport separately, and precedes each one with
an empty ``MSG_IGNORE`` packet, so a 255 KiB SFTP read reply becomes 16 ``send()`` calls.
On a busy machine those system calls (and the wake-ups of the peer they cause) cost more
than the encryption. :class:`CoalescingTransport` gathers what is written during one pass
of the event loop and sends it at the end of the pass in buffers of about 256 KiB. Nothing
waits longer than the current pass, so latency is unchanged.

:func:`skip_ignore_packets` stops those empty ``MSG_IGNORE`` packets. They are the RFC
4251 (section 9.3.1) counter to chosen-plaintext attacks on CBC ciphers, which sftpd never
offers (:data:`~sftpd.CIPHERS` has CTR, GCM and chacha20 only, as OpenSSH's server, which
sends no such packets). Each one costs an encryption, a MAC and its bytes on the wire:
half of all packets a download sends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncssh
from asyncssh.constants import MSG_IGNORE

log = logging.getLogger("sftpd")

#: asyncssh versions (from, up to but not including) the swap is known to be right for.
TESTED = ((2, 17), (2, 25))


def _version(text: str) -> tuple[int, int]:
    major, minor = (int(part) for part in text.split(".")[:2])
    return major, minor


def supported(version: str = asyncssh.__version__) -> bool:
    """True when ``version`` of asyncssh is one the transport swap was tested with."""
    low, high = TESTED
    return low <= _version(version) < high


#: Bytes joined into one send at most: large enough that system calls are few, small
#: enough that the joined copy costs little memory.
BATCH = 256 << 10


class CoalescingTransport:
    """Wraps a transport; writes made in one loop pass leave in one ``write``."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what this pass wrote so far, now."""
        pending, self._pending = self._pending, []
        transport = self._transport
        if not pending or transport.is_closing():
            return
        batch: list[bytes] = []
        size = 0
        for data in pending:
            if transport.get_write_buffer_size():
                # The socket is backed up: a write only appends to the buffer, no send().
                transport.write(data)
                continue
            batch.append(data)
            size += len(data)
            if size >= BATCH:
                transport.write(batch[0] if len(batch) == 1 else b"".join(batch))
                batch, size = [], 0
        if batch:
            transport.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self.flush()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


#: The arguments of the ignore packet asyncssh sends before each packet (an empty string).
_EMPTY_IGNORE = (b"\0\0\0\0",)


def skip_ignore_packets(conn: object) -> bool:
    """Stop the empty ``MSG_IGNORE`` asyncssh sends before every packet; True if done."""
    if not supported():
        return False
    send = getattr(conn, "send_packet", None)
    if send is None:
        log.debug("asyncssh connection has no send_packet; ignore packets stay")
        return False

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == _EMPTY_IGNORE:
            return
        send(pkttype, *args, handler=handler)

    conn.send_packet = send_packet  # type: ignore[attr-defined]
    return True


def refuse_before_banner(conn: object, text: bytes = b"Exceeded MaxStartups\r\n") -> bool:
    """Close a new connection before asyncssh sends its SSH banner; True if done.

    Called from ``connection_made``, which asyncssh runs just before it writes the banner:
    ``text`` (OpenSSH's words for a refused start) goes out and the socket is aborted, so
    the banner that follows is never sent and no key exchange starts.
    """
    if not supported():
        return False
    transport = getattr(conn, "_transport", None)
    if not isinstance(transport, asyncio.WriteTransport):
        return False
    transport.write(text)
    transport.abort()
    return True


def coalesce_writes(conn: object) -> bool:
    """Put a :class:`CoalescingTransport` under an asyncssh connection; True if done."""
    if not supported():
        log.debug("asyncssh %s is untested here; writes are not coalesced", asyncssh.__version__)
        return False
    transport = getattr(conn, "_transport", None)
    if not isinstance(transport, asyncio.Transport):
        log.debug("asyncssh connection has no _transport; writes are not coalesced")
        return False
    conn._transport = CoalescingTransport(transport, asyncio.get_running_loop())  # type: ignore[attr-defined]
    return True
