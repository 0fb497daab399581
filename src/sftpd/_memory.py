"""One budget for the upload bytes a server holds in memory, over all its sessions.

Each open upload may keep bytes after their write request was answered: an S3 part being
filled and the parts in flight, the in-memory start of a spooled upload, a batch waiting
for the thread pool. Without a shared bound that is sessions x open files x buffers
(7.5 GiB with the S3 defaults). The server gives every session one :class:`UploadMemory`
(``Session.upload_memory``); uploads draw from it and give back what they free.

Two ways to stay within it, and never a failed upload:

* :meth:`UploadMemory.try_take` for a holder that has somewhere else to go (a spool
  spills to a temporary file, a batch is written out at once);
* :meth:`UploadMemory.take` waits (backpressure: the client's next write is answered
  later) for a holder that must keep bytes in memory (an S3 part). A waiter should hold
  nothing while it waits, so waiting can never close a circle: what is held is either in
  flight or being filled by a client that needs nothing more.

A request larger than the whole budget takes the whole budget once it is free, so an
upload that fits on its own is never refused.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["DEFAULT_UPLOAD_MEMORY", "UploadMemory"]

DEFAULT_UPLOAD_MEMORY = 512 << 20
"""The servers' default budget: 512 MiB (about 20 S3 uploads at full speed)."""


class UploadMemory:
    """Upload bytes held in memory across a server, at most ``limit`` (None: no limit).

    Attributes:
        limit: The budget in bytes, or None.
        in_use: Bytes taken and not given back.
        peak: The most ever in use at once.
        waits: How often a :meth:`take` had to wait.
    """

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):  # fmt: skip
            raise ValueError(f"upload memory must be a positive number of bytes, got {limit!r}")
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.waits = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.limit is None or self.in_use + size <= self.limit or not self.in_use

    def _grant(self, size: int) -> None:
        self.in_use += size
        self.peak = max(self.peak, self.in_use)

    def try_take(self, size: int) -> bool:
        """Take ``size`` bytes if they are free now (and nobody waits before us)."""
        if self._waiters or not self._fits(size):
            return False
        self._grant(size)
        return True

    async def take(self, size: int) -> None:
        """Take ``size`` bytes, waiting (first come, first served) until they are free."""
        if self.try_take(size):
            return
        self.waits += 1
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give(size)  # granted as we were cancelled: hand it on
            else:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                self._wake()
            raise

    def give(self, size: int) -> None:
        """Give back ``size`` bytes taken earlier."""
        if size <= 0:
            return
        self.in_use = max(0, self.in_use - size)
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self._fits(waiters[0][0]):
            size, waiter = waiters.popleft()
            if waiter.done():  # cancelled, its task not yet told
                continue
            self._grant(size)
            waiter.set_result(None)

    def __repr__(self) -> str:
        waiting = len(self._waiters)
        return f"UploadMemory(limit={self.limit}, in_use={self.in_use}, waiting={waiting})"


UNLIMITED = UploadMemory()
"""The budget of a session made outside a server (tests, custom tools): no limit."""
