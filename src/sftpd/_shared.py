"""The server's hold on its state store: leases kept alive, outages noticed, usage replayed.

A :class:`SharedState` wraps the configured :class:`~sftpd.state.StateStore` for one
server. It renews this process's session leases and quota reservations every third of
their time to live (so a process that dies leaves them to lapse), logs once when the
store stops answering and once when it is back, and keeps the usage changes it could not
record (an upload stored while Redis was down) to replay them when the store answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .state import StateStore, StateUnavailable

__all__ = ["SharedState"]

log = logging.getLogger("sftpd")

T = TypeVar("T")

#: Usage changes kept for replay while the store is unreachable, at most; older ones are
#: dropped (and logged): `sftpd quota scan` recounts.
MAX_REPLAY = 100_000


class SharedState:
    """One server's use of its state store.

    Args:
        store: The store.
        ttl: Seconds a lease or reservation lives without renewal.
    """

    def __init__(self, store: StateStore, ttl: float = 60.0) -> None:
        self.store = store
        self.ttl = ttl
        self.leases: dict[str, str] = {}  # lease -> user, held by this process
        self.reservations: set[tuple[str, str]] = set()  # (quota key, reservation)
        self._replay: deque[tuple[str, str, int, int, str]] = deque()
        self._dropped = 0
        self._down_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        """False from a failed call until the next one that succeeds."""
        return self._down_since is None

    async def start(self) -> None:
        """Connect (a ConfigError if the store cannot be used) and start renewing."""
        await self.store.start()
        self._task = asyncio.get_running_loop().create_task(self._renew_forever())

    async def close(self) -> None:
        """Stop renewing, replay what can be, and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(StateUnavailable):
            await self._flush()
        await self.store.close()

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run one store operation, noting whether the store answered.

        Raises:
            StateUnavailable: it did not.
        """
        try:
            result = await work()
        except StateUnavailable as exc:
            self._went_down(exc)
            raise
        self._came_back()
        return result

    def _went_down(self, exc: StateUnavailable) -> None:
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()
            log.error("state store unreachable (%s): refusing new logins; open sessions "
                      "go on", exc)  # fmt: skip

    def _came_back(self) -> None:
        if self._down_since is not None:
            down = asyncio.get_running_loop().time() - self._down_since
            self._down_since = None
            log.warning("state store reachable again after %.1f s", down)

    def record_later(
        self, key: str, reservation: str, nbytes: int, files: int, generation: str
    ) -> None:
        """Remember a usage change the store could not take, to replay it onto the count
        it was made against (``generation``); a count made since (a store that lost its
        data and was counted again) already holds it.
        """
        if len(self._replay) >= MAX_REPLAY:
            self._replay.popleft()
            self._dropped += 1
        self._replay.append((key, reservation, nbytes, files, generation))

    async def _flush(self) -> None:
        while self._replay:
            key, reservation, nbytes, files, generation = self._replay[0]
            await self.store.settle(key, reservation, nbytes, files,
                                    generation=generation or "-")  # fmt: skip
            self._replay.popleft()
        if self._dropped:
            log.warning("%d usage changes were lost while the state store was down; run "
                        "`sftpd quota scan` to recount", self._dropped)  # fmt: skip
            self._dropped = 0

    async def renew(self) -> None:
        """Renew this process's leases and reservations, replay pending usage changes."""
        store = self.store
        await self.call(lambda: store.refresh_sessions(list(self.leases.items()), self.ttl))
        await self.call(lambda: store.refresh_reservations(list(self.reservations), self.ttl))
        if self._replay:
            await self.call(self._flush)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.renew()
            except StateUnavailable:
                pass  # logged once by call(); tried again next round
            except Exception:
                log.exception("renewing leases in the state store failed")
