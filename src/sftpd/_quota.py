"""Storage quotas, exact by reservation: bytes are reserved as they arrive, settled at
commit and released at abort, in the server's state store.

A session's :class:`Quota` comes from its authenticator's attributes (``quota_bytes``,
``quota_files``, ``quota_key``; the config file's ``[users.NAME]`` keys are those
attributes). Sessions with the same key share one quota: a user's sessions, or every user
of a tenant. Because every upload reserves before its bytes are taken, uploads running at
once on different instances cannot together overshoot the quota: the one that would gets
"quota exceeded" with the numbers, and stores nothing.

Usage not yet known (a key never seen, or a store that lost its data) is counted by
walking the session's root once, at login.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._shared import SharedState
from ._sizes import parse_size
from .errors import ConfigError, Failure, QuotaExceeded
from .state import QuotaAnswer, StateUnavailable, Usage

__all__ = ["Quota", "QuotaLedger", "UploadQuota", "count_usage"]

log = logging.getLogger("sftpd")

#: Bytes an upload reserves ahead of what it has written (with its file, at open), so
#: most uploads cost two store round trips (open, commit) and a stream of 32 KiB writes
#: one per 4 MiB. Only while the room left is at least :data:`EXACT_BELOW`: closer to the
#: limit every write reserves exactly what it adds, so a reservation held ahead and never
#: used cannot refuse another upload that fits; the quota holds to the byte either way.
RESERVE_STEP = 4 << 20
EXACT_BELOW = 256 << 20


@dataclass(frozen=True, slots=True)
class Quota:
    """A storage quota: at most ``max_bytes`` bytes in at most ``max_files`` files.

    Attributes:
        key: What the usage is counted under: the user name, or a tenant shared by
            several users (``quota_key``).
        max_bytes: Bytes of file content at most (None: no byte limit).
        max_files: Regular files at most (None: no file limit).
    """

    key: str
    max_bytes: int | None = None
    max_files: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_files"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 0):  # fmt: skip
                raise ConfigError(f"quota {name} must be a number >= 0, got {value!r}")
        if not isinstance(self.key, str) or not self.key:
            raise ConfigError(f"quota_key must be a non-empty string, got {self.key!r}")

    @classmethod
    def from_attributes(cls, username: str, attributes: Mapping[str, Any]) -> Quota | None:
        """The quota ``quota_bytes``/``quota_files``/``quota_key`` describe, if any."""
        max_bytes, max_files = attributes.get("quota_bytes"), attributes.get("quota_files")
        if max_bytes is None and max_files is None:
            return None
        if isinstance(max_bytes, str):  # "10G"
            max_bytes = parse_size(max_bytes, "quota_bytes")
        return cls(str(attributes.get("quota_key") or username), max_bytes, max_files)


def exceeded(quota: Quota, usage: Usage, nbytes: int, files: int) -> QuotaExceeded:
    """The client's error for a refused reservation, with the numbers."""
    if files and quota.max_files is not None and (
        usage.files + usage.reserved_files + files > quota.max_files):  # fmt: skip
        return QuotaExceeded(f"Quota exceeded: {usage.files + usage.reserved_files} of "
                             f"{quota.max_files} files in use")  # fmt: skip
    in_use = usage.bytes + usage.reserved_bytes
    return QuotaExceeded(f"Quota exceeded: {in_use} of {quota.max_bytes} bytes in use, "
                         f"{nbytes} more needed")  # fmt: skip


async def count_usage(entries: Callable[[str], AsyncIterator[Any]], root: str) -> tuple[int, int]:
    """Bytes and regular files under ``root``, walking ``entries(dir)`` listings."""
    nbytes = files = 0
    pending = [root]
    while pending:
        directory = pending.pop()
        async for entry in entries(directory):
            if entry.name in (".", "..") or "/" in entry.name:
                continue
            path = directory.rstrip("/") + "/" + entry.name
            if entry.attrs.is_dir:
                pending.append(path)
            elif entry.attrs.is_file:
                nbytes += entry.attrs.size
                files += 1
    return nbytes, files


class QuotaLedger:
    """A session's quota in the state store.

    Args:
        shared: The server's state store.
        quota: The session's quota.
        scan: Counts the session's files when the store knows no usage yet.
    """

    def __init__(
        self, shared: SharedState, quota: Quota, scan: Callable[[], Awaitable[tuple[int, int]]]
    ) -> None:
        self.shared = shared
        self.quota = quota
        self._scan = scan
        self._scanning: asyncio.Lock = asyncio.Lock()
        # The room this session last saw, for transfers while the store is unreachable,
        # and the count of the usage it saw (changes are replayed onto that one only).
        self._room_bytes = 0
        self._room_files = 0
        self._generation = ""

    async def ensure_known(self) -> None:
        """Count the usage if the store knows none (a new key, or a store that lost it).

        Raises:
            StateUnavailable: the store did not answer.
        """
        store, key = self.shared.store, self.quota.key
        async with self._scanning:
            usage = await self.shared.call(lambda: store.usage(key))
            if usage is None:
                nbytes, files = await self._scan()
                if await self.shared.call(lambda: store.set_usage(key, nbytes, files,
                                                                  if_unknown=True)):  # fmt: skip
                    log.info("quota %s: counted %d bytes in %d files", key, nbytes, files)
                usage = await self.shared.call(lambda: store.usage(key))
            if usage is not None:
                self._note(usage)

    def _note(self, usage: Usage) -> None:
        quota = self.quota
        self._generation = usage.generation
        used = usage.bytes + usage.reserved_bytes
        self._room_bytes = max(0, quota.max_bytes - used) if quota.max_bytes is not None else 0
        used_files = usage.files + usage.reserved_files
        self._room_files = (max(0, quota.max_files - used_files)
                            if quota.max_files is not None else 0)  # fmt: skip

    async def usage(self) -> Usage | None:
        """What the quota key holds now (None: unknown).

        Raises:
            StateUnavailable: the store did not answer.
        """
        key = self.quota.key
        return await self.shared.call(lambda: self.shared.store.usage(key))

    def ahead(self) -> int:
        """Bytes to reserve beyond what a write needs (0 near the limit)."""
        if self.quota.max_bytes is None or self._room_bytes < EXACT_BELOW:
            return 0
        return RESERVE_STEP

    def new_reservation(self) -> str:
        """A name for a reservation no other process will use."""
        return secrets.token_hex(8)

    async def reserve(self, reservation: str, nbytes: int, files: int) -> None:
        """Reserve ``nbytes`` and ``files`` more under ``reservation``.

        While the store is unreachable, the room this session last saw is used up first;
        beyond it the request fails (and can be retried), so a fleet overshoots by no
        more than that room.

        Raises:
            QuotaExceeded: there is no room; the message has the numbers.
            Failure: the store is unreachable and this session's last known room is spent.
        """
        quota, store = self.quota, self.shared.store
        for _attempt in range(2):
            try:
                answer: QuotaAnswer = await self.shared.call(lambda: store.reserve(
                    quota.key, reservation, nbytes, files, max_bytes=quota.max_bytes,
                    max_files=quota.max_files, ttl=self.shared.ttl,
                ))  # fmt: skip
            except StateUnavailable:
                self._reserve_locally(nbytes, files)
                return
            if answer.known:
                break
            await self.ensure_known()  # the store lost the usage: count it again
        else:
            raise Failure("Storage quota cannot be checked now; try again later")
        self._note(answer.usage)
        if not answer.granted:
            raise exceeded(quota, answer.usage, nbytes, files)
        self.shared.reservations.add((quota.key, reservation))

    def _reserve_locally(self, nbytes: int, files: int) -> None:
        quota = self.quota
        bytes_ok = quota.max_bytes is None or nbytes <= self._room_bytes
        files_ok = quota.max_files is None or files <= self._room_files
        if not (bytes_ok and files_ok):
            raise Failure("Storage quota cannot be checked now; try again later")
        self._room_bytes -= nbytes if quota.max_bytes is not None else 0
        self._room_files -= files if quota.max_files is not None else 0

    async def settle(self, reservation: str, nbytes: int, files: int) -> None:
        """Turn ``reservation`` into committed usage of ``nbytes``/``files`` (either may be
        negative). A store that does not answer gets the change later; never raises.
        """
        key, store = self.quota.key, self.shared.store
        self.shared.reservations.discard((key, reservation))
        try:
            await self.shared.call(lambda: store.settle(key, reservation, nbytes, files))
        except StateUnavailable:
            self.shared.record_later(key, reservation, nbytes, files, self._generation)
        except Exception:
            log.exception("quota %s: recording %d bytes, %d files failed", key, nbytes, files)

    async def release(self, reservation: str) -> None:
        """Drop ``reservation``; a store that does not answer lets it lapse. Never raises."""
        key = self.quota.key
        self.shared.reservations.discard((key, reservation))
        try:
            await self.shared.call(lambda: self.shared.store.release(key, reservation))
        except StateUnavailable:
            pass  # it lapses after the store's ttl
        except Exception:
            log.exception("quota %s: releasing a reservation failed", key)

    async def change(self, nbytes: int, files: int) -> None:
        """A change outside an upload: a file removed, replaced or resized.

        Growth is reserved first (QuotaExceeded if there is no room); shrinking never fails.
        """
        reservation = self.new_reservation()
        if nbytes > 0 or files > 0:
            await self.reserve(reservation, max(0, nbytes), max(0, files))
        await self.settle(reservation, nbytes, files)

    def upload(self, old_size: int | None) -> UploadQuota:
        """The quota of one upload, replacing a file of ``old_size`` bytes (None: new)."""
        return UploadQuota(self, old_size)


class UploadQuota:
    """One upload's reservation: grown as its file grows, settled at commit."""

    def __init__(self, ledger: QuotaLedger, old_size: int | None) -> None:
        self.ledger = ledger
        self.old_size = old_size
        self.reservation = ledger.new_reservation()
        self._reserved = 0
        self._lock = asyncio.Lock()

    async def opened(self) -> None:
        """A new file takes one of the quota's files; far from the limit, the first bytes
        are reserved with it (one round trip for both).

        Raises:
            QuotaExceeded: no file is left.
        """
        files = 1 if self.old_size is None and self.ledger.quota.max_files is not None else 0
        ahead = self.ledger.ahead()
        if not files and not ahead:
            return
        try:
            await self.ledger.reserve(self.reservation, ahead, files)
            self._reserved = ahead
        except QuotaExceeded:
            if not ahead or not files:
                raise
            await self.ledger.reserve(self.reservation, 0, files)  # the room went meanwhile

    async def grow(self, size: int) -> None:
        """The file is about to reach ``size`` bytes: reserve what that adds.

        Raises:
            QuotaExceeded: there is no room for it; the message has the numbers.
        """
        if self.ledger.quota.max_bytes is None:
            return
        async with self._lock:
            needed = size - (self.old_size or 0) - self._reserved
            if needed <= 0:
                return
            step = needed + self.ledger.ahead()
            try:
                await self.ledger.reserve(self.reservation, step, 0)
                self._reserved += step
                return
            except QuotaExceeded:
                if step == needed:
                    raise
            await self.ledger.reserve(self.reservation, needed, 0)  # the room went meanwhile
            self._reserved += needed

    async def stored(self, size: int) -> None:
        """The upload was committed at ``size`` bytes."""
        files = 1 if self.old_size is None else 0
        await self.ledger.settle(self.reservation, size - (self.old_size or 0), files)

    async def aborted(self) -> None:
        """Nothing was stored."""
        await self.ledger.release(self.reservation)
