"""One socket send per event-loop pass instead of one per SSH packet.

asyncssh writes every SSH packet to the transport separately, and precedes each one with
an empty ``MSG_IGNORE`` packet, so a 255 KiB SFTP read reply becomes 16 ``send()`` calls.
On a busy machine those system calls (and the wake-ups of the peer they cause) cost more
than the encryption. :class:`CoalescingTransport` gathers what is written during one pass
of the event loop and sends it at the end of the pass in buffers of about 256 KiB. Nothing
waits longer than the current pass, so latency is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncssh

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

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
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
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._flush()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


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
