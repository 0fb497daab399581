"""An upload's bytes in file order, for an inspector that decides whether to publish it.

An inspector (from ``ServerConfig.inspector``) sees every byte of an upload in order as
it streams in, so a virus scanner's INSTREAM, a schema check or a magic-number check needs
no second read, and gives a verdict at close: accepted, the upload is stored; refused, it
is aborted (nothing visible, no multipart upload left) and the client's close fails with
the reason.

Clients write in order, several requests at once; pieces that arrive a little out of
order wait here (up to :data:`REORDER_LIMIT` bytes) for the gap before them. An upload
that rewrites bytes already inspected, or jumps too far ahead, cannot be inspected and is
refused at close. Feeding runs in a task of its own, one piece after another; a client
that writes faster than the inspector reads waits (:data:`QUEUE_LIMIT`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, Union

from .errors import PermissionDenied, SftpdError

if TYPE_CHECKING:
    from ._policy import Operation

__all__ = ["Ingest", "Inspector", "MakeInspector", "Verdict"]

log = logging.getLogger("sftpd")

REORDER_LIMIT = 16 << 20
QUEUE_LIMIT = 16 << 20


#: An inspector's verdict: None or True publish; False or a reason refuse.
Verdict = Union[bool, str, None]  # noqa: UP007 (evaluated at run time on 3.10)


class Inspector(Protocol):
    """What an inspector has: ``feed`` (the next bytes, sync or async) and ``verdict``
    (None or True: publish; False or a reason: refuse; sync or async).
    """

    def feed(self, data: bytes) -> Awaitable[None] | None: ...

    def verdict(self) -> Verdict | Awaitable[Verdict]: ...


#: What the server calls at each open for writing: an inspector, or None to let it be.
MakeInspector = Callable[["Operation"], "Inspector | Awaitable[Inspector | None] | None"]


class Ingest:
    """One upload's bytes, reordered and fed to its inspector."""

    def __init__(self, inspector: Inspector) -> None:
        self._inspector = inspector
        self._next = 0
        self._early: dict[int, bytes] = {}
        self._early_bytes = 0
        self.broken: str | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queued = 0
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._failure: str | None = None
        self._task = asyncio.get_running_loop().create_task(self._feed_all())

    def write(self, offset: int, data: bytes) -> None:
        """A write of the upload, in the order the client's requests arrived."""
        if self.broken is not None:
            return
        if offset < self._next:
            self.broken = "it rewrote bytes already inspected"
        elif offset > self._next:
            if offset in self._early or self._early_bytes + len(data) > REORDER_LIMIT:
                self.broken = "it was not written in order"
                return
            self._early[offset] = bytes(data)
            self._early_bytes += len(data)
        else:
            self._emit(data)
            while self._next in self._early:
                piece = self._early.pop(self._next)
                self._early_bytes -= len(piece)
                self._emit(piece)

    def _emit(self, data: bytes) -> None:
        self._next += len(data)
        if data:
            self._queued += len(data)
            if self._queued > QUEUE_LIMIT:
                self._has_room.clear()
            self._queue.put_nowait(bytes(data))

    async def room(self) -> None:
        """Wait while the inspector is far behind the client."""
        await self._has_room.wait()

    async def _feed_all(self) -> None:
        try:
            while (data := await self._queue.get()) is not None:
                try:
                    if self._failure is None:
                        result = self._inspector.feed(data)
                        if inspect.isawaitable(result):
                            await result
                except Exception as exc:  # the inspector's own failure refuses the upload
                    self._failure = _reason(exc)
                finally:
                    self._queued -= len(data)
                    if self._queued <= QUEUE_LIMIT:
                        self._has_room.set()
        finally:
            self._has_room.set()  # never leave a writer waiting on a feeder that ended

    async def verdict(self) -> str | None:
        """None to publish, else the reason the upload is refused."""
        self._queue.put_nowait(None)
        await self._task
        if self.broken is not None or self._early:
            return f"The upload cannot be inspected: {self.broken or 'bytes are missing'}"
        if self._failure is not None:
            return self._failure
        try:
            result = self._inspector.verdict()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            return _reason(exc)
        if result is None or result is True:
            return None
        if result is False:
            return "Refused by the server's inspection"
        return str(result) or "Refused by the server's inspection"

    def cancel(self) -> None:
        """The upload was abandoned: stop feeding."""
        self._task.cancel()


def _reason(exc: Exception) -> str:
    if isinstance(exc, (PermissionDenied, SftpdError)):
        return str(exc) or "Refused by the server's inspection"
    log.error("an upload inspector failed", exc_info=exc)
    return "Inspection failed"
