"""Shared state: what every worker and instance of a fleet must agree on.

Login failures and bans, session leases (for per-user and fleet-wide session caps),
storage quotas and bandwidth buckets live in a :class:`StateStore`. The default,
:class:`MemoryState`, keeps them in the process, as one server on one machine needs. With
``sftpd serve --workers N`` or several hosts behind a load balancer, give every process
the same :class:`~sftpd.redis_state.RedisState` (``state="redis://host:6379/0"``), so a
ban on one holds on all, and a quota holds to the byte over all of them.

Every operation is one atomic step (a Lua script in Redis), and everything held for a
live process (session leases, quota reservations) expires unless refreshed, so a process
that dies leaves nothing stuck: its sessions and reservations lapse after ``ttl``.

A store that cannot be reached raises :class:`StateUnavailable`; the server then refuses
new logins and lets running transfers finish (see the deployment guide).
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "MemoryState",
    "QuotaAnswer",
    "StateStore",
    "StateUnavailable",
    "Usage",
]

#: Failures remembered per throttling key at most; counts beyond it add nothing.
MAX_FAILURES_KEPT = 1000


class StateUnavailable(ConnectionError):
    """The state store cannot be reached (Redis down, a network partition)."""


@dataclass(frozen=True, slots=True)
class Usage:
    """What a quota key holds: committed bytes and files, and reservations in flight.

    ``generation`` names this count of the usage: a new one each time it is set (by a
    scan), so a change recorded against an older count can be told apart and dropped.
    """

    bytes: int = 0
    files: int = 0
    reserved_bytes: int = 0
    reserved_files: int = 0
    generation: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class QuotaAnswer:
    """The answer to a reservation: granted or not, and the usage it was judged on.

    ``known`` is False when the store holds no usage for the key (never scanned, or the
    store lost it): nothing was reserved then, and the caller must count the usage first.
    """

    granted: bool
    usage: Usage
    known: bool = True


@runtime_checkable
class StateStore(Protocol):
    """The operations the server needs from shared state, each atomic.

    Time is the store's own (Redis's clock for Redis), so hosts with skewed clocks agree.
    Every method raises :class:`StateUnavailable` when the store cannot be reached.
    """

    async def start(self) -> None:
        """Connect and check the store answers.

        Raises:
            ConfigError: it cannot be reached or used, saying what to fix.
        """

    async def close(self) -> None:
        """Release connections."""

    async def ping(self) -> None:
        """Raise :class:`StateUnavailable` unless the store answers now."""

    # -- login throttling

    async def record_failure(self, keys: Sequence[str], window: float) -> list[int]:
        """Count a failure under each key; return each key's failures in the last
        ``window`` seconds, this one included.
        """

    async def failure_counts(self, keys: Sequence[str], window: float) -> list[int]:
        """Each key's failures in the last ``window`` seconds."""

    async def clear_failures(self, key: str) -> None:
        """Forget a key's failures (a successful login)."""

    # -- session leases

    async def open_session(
        self, lease: str, user: str, *, per_user: int | None, total: int | None, ttl: float
    ) -> str | None:
        """Take a session lease for ``user`` unless a cap is reached.

        Taking a lease already held renews it. Returns None when granted, else the cap
        that refused it: ``"max_sessions_per_user"`` or ``"max_sessions_total"``.
        """

    async def close_session(self, lease: str, user: str) -> None:
        """Give a lease back."""

    async def refresh_sessions(self, leases: Sequence[tuple[str, str]], ttl: float) -> None:
        """Renew ``(lease, user)`` leases for another ``ttl`` seconds (re-taking any the
        store lost).
        """

    async def session_count(self, user: str | None = None) -> int:
        """Live leases of ``user``, or of everyone."""

    # -- quotas

    async def usage(self, key: str) -> Usage | None:
        """What ``key`` holds, or None if its usage is unknown."""

    async def set_usage(
        self, key: str, nbytes: int, files: int, *, if_unknown: bool = False
    ) -> bool:
        """Set ``key``'s committed usage (after a scan), as a new generation; with
        ``if_unknown``, only if none is known. Returns whether it was set.
        """

    async def reserve(
        self,
        key: str,
        reservation: str,
        nbytes: int,
        files: int,
        *,
        max_bytes: int | None,
        max_files: int | None,
        ttl: float,
    ) -> QuotaAnswer:
        """Add ``nbytes`` and ``files`` to ``reservation`` if committed usage plus every
        live reservation stays within the limits; renew it for ``ttl`` seconds.
        """

    async def settle(
        self, key: str, reservation: str, nbytes: int, files: int, *, generation: str = ""
    ) -> None:
        """Drop ``reservation`` and add ``nbytes``/``files`` (may be negative) to the
        committed usage, if it is known (and, given a ``generation``, still that one).
        """

    async def release(self, key: str, reservation: str) -> None:
        """Drop ``reservation`` (an aborted upload)."""

    async def refresh_reservations(
        self, reservations: Sequence[tuple[str, str]], ttl: float
    ) -> None:
        """Renew ``(key, reservation)`` pairs for another ``ttl`` seconds."""

    # -- bandwidth

    async def take(self, key: str, amount: int, rate: float, burst: float) -> float:
        """Take ``amount`` tokens from the bucket ``key`` (refilled at ``rate`` per second
        up to ``burst``), going into debt if need be; return the seconds to wait before
        the caller's bytes may go.
        """


@dataclass
class _Bucket:
    tokens: float
    when: float


@dataclass
class _Quota:
    bytes: int = 0
    files: int = 0
    generation: str = ""
    # reservation -> (bytes, files, expiry)
    reservations: dict[str, tuple[int, int, float]] = field(default_factory=dict)

    def live(self, now: float) -> tuple[int, int]:
        for name in [r for r, (_, _, end) in self.reservations.items() if end <= now]:
            del self.reservations[name]
        return (sum(b for b, _, _ in self.reservations.values()),
                sum(f for _, f, _ in self.reservations.values()))  # fmt: skip


class MemoryState:
    """Shared state inside one process: the default, for a server on one machine.

    With ``--workers`` each worker has its own; use Redis to share it.
    """

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}
        self._leases: dict[str, tuple[str, float]] = {}  # lease -> (user, expiry)
        self._quotas: dict[str, _Quota] = {}
        self._buckets: dict[str, _Bucket] = {}

    def __repr__(self) -> str:
        return "MemoryState()"

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release."""

    async def ping(self) -> None:
        """Always answers."""

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def _recent(self, key: str, window: float, now: float) -> int:
        stamps = self._failures.get(key)
        if not stamps:
            return 0
        horizon = now - window
        while stamps and stamps[0] <= horizon:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
            return 0
        return len(stamps)

    async def record_failure(self, keys: Sequence[str], window: float) -> list[int]:
        now = self._now()
        if len(self._failures) > 10_000:  # bounded memory under a spraying attack
            for key in list(self._failures):
                self._recent(key, window, now)
        counts = []
        for key in keys:
            stamps = self._failures.setdefault(key, deque(maxlen=MAX_FAILURES_KEPT))
            stamps.append(now)
            counts.append(self._recent(key, window, now))
        return counts

    async def failure_counts(self, keys: Sequence[str], window: float) -> list[int]:
        now = self._now()
        return [self._recent(key, window, now) for key in keys]

    async def clear_failures(self, key: str) -> None:
        self._failures.pop(key, None)

    def _live_leases(self, now: float) -> None:
        for lease in [k for k, (_, end) in self._leases.items() if end <= now]:
            del self._leases[lease]

    async def open_session(
        self, lease: str, user: str, *, per_user: int | None, total: int | None, ttl: float
    ) -> str | None:
        now = self._now()
        self._live_leases(now)
        if lease not in self._leases:
            held = sum(u == user for u, _ in self._leases.values())
            if per_user is not None and held >= per_user:
                return "max_sessions_per_user"
            if total is not None and len(self._leases) >= total:
                return "max_sessions_total"
        self._leases[lease] = (user, now + ttl)
        return None

    async def close_session(self, lease: str, user: str) -> None:
        self._leases.pop(lease, None)

    async def refresh_sessions(self, leases: Sequence[tuple[str, str]], ttl: float) -> None:
        end = self._now() + ttl
        for lease, user in leases:
            self._leases[lease] = (user, end)

    async def session_count(self, user: str | None = None) -> int:
        self._live_leases(self._now())
        return sum(user is None or u == user for u, _ in self._leases.values())

    async def usage(self, key: str) -> Usage | None:
        quota = self._quotas.get(key)
        if quota is None:
            return None
        reserved_bytes, reserved_files = quota.live(self._now())
        return Usage(quota.bytes, quota.files, reserved_bytes, reserved_files, quota.generation)

    async def set_usage(
        self, key: str, nbytes: int, files: int, *, if_unknown: bool = False
    ) -> bool:
        quota = self._quotas.get(key)
        if quota is not None and if_unknown:
            return False
        if quota is None:
            quota = self._quotas[key] = _Quota()
        quota.bytes, quota.files = max(0, nbytes), max(0, files)
        quota.generation = secrets.token_hex(8)
        return True

    async def reserve(
        self,
        key: str,
        reservation: str,
        nbytes: int,
        files: int,
        *,
        max_bytes: int | None,
        max_files: int | None,
        ttl: float,
    ) -> QuotaAnswer:
        quota = self._quotas.get(key)
        if quota is None:
            return QuotaAnswer(False, Usage(), known=False)
        now = self._now()
        reserved_bytes, reserved_files = quota.live(now)
        usage = Usage(quota.bytes, quota.files, reserved_bytes, reserved_files, quota.generation)
        over_bytes = max_bytes is not None and nbytes > 0 and (
            quota.bytes + reserved_bytes + nbytes > max_bytes)  # fmt: skip
        over_files = max_files is not None and files > 0 and (
            quota.files + reserved_files + files > max_files)  # fmt: skip
        if over_bytes or over_files:
            return QuotaAnswer(False, usage)
        held_bytes, held_files, _ = quota.reservations.get(reservation, (0, 0, 0.0))
        quota.reservations[reservation] = (held_bytes + nbytes, held_files + files, now + ttl)
        return QuotaAnswer(True, Usage(quota.bytes, quota.files, reserved_bytes + nbytes,
                                       reserved_files + files, quota.generation))  # fmt: skip

    async def settle(
        self, key: str, reservation: str, nbytes: int, files: int, *, generation: str = ""
    ) -> None:
        quota = self._quotas.get(key)
        if quota is None:
            return
        quota.reservations.pop(reservation, None)
        if generation and generation != quota.generation:
            return
        quota.bytes = max(0, quota.bytes + nbytes)
        quota.files = max(0, quota.files + files)

    async def release(self, key: str, reservation: str) -> None:
        quota = self._quotas.get(key)
        if quota is not None:
            quota.reservations.pop(reservation, None)

    async def refresh_reservations(
        self, reservations: Sequence[tuple[str, str]], ttl: float
    ) -> None:
        end = self._now() + ttl
        for key, reservation in reservations:
            quota = self._quotas.get(key)
            held = quota.reservations.get(reservation) if quota is not None else None
            if quota is not None and held is not None:
                quota.reservations[reservation] = (held[0], held[1], end)

    async def take(self, key: str, amount: int, rate: float, burst: float) -> float:
        now = self._now()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now)
            if len(self._buckets) > 10_000:
                self._forget_idle_buckets(now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.when) * rate) - amount
        bucket.when = now
        return max(0.0, -bucket.tokens / rate)

    def _forget_idle_buckets(self, now: float) -> None:
        """Drop buckets unused for an hour: refilled by then, as good as new."""
        for key in [k for k, b in self._buckets.items() if now - b.when > 3600]:
            del self._buckets[key]
