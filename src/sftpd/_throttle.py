"""Failed-login throttling: growing delays, then bans by address and by user+address."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ._shared import SharedState
from .errors import ConfigError

__all__ = ["ConnectionRate", "LoginLimits", "LoginThrottle"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginLimits:
    """How failed logins are slowed down and then refused.

    Failures are counted in a sliding ``window`` (seconds), in the server's state store
    (shared by a fleet on Redis). After each failure the reply is delayed by
    ``base_delay * 2 ** (failures - 1)`` seconds, at most ``max_delay``. Once an address,
    or a username from one address, reaches its limit, its logins are refused without
    checking the credentials until its failures age out of the window. A username alone
    is never refused: past ``per_user`` failures from all addresses, each of its attempts
    is held ``max_delay`` first, so the real user still logs in from elsewhere.

    Attributes:
        per_user_and_address: Failures allowed for one username from one address.
        per_user: Failures of one username from all addresses after which its every
            attempt is slowed (never refused).
        per_address: Failures allowed from one address for all usernames.
        window: Seconds a failure counts.
        base_delay: Delay after the first failure, in seconds.
        max_delay: Longest delay, in seconds.
        max_attempts_per_connection: Failed attempts after which a connection is dropped.
    """

    per_user_and_address: int = 5
    per_user: int = 20
    per_address: int = 50
    window: float = 900.0
    base_delay: float = 0.5
    max_delay: float = 5.0
    max_attempts_per_connection: int = 6

    def __post_init__(self) -> None:
        for name in ("per_user_and_address", "per_user", "per_address",
                     "max_attempts_per_connection"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"login_limits.{name} must be a positive integer, got {value!r}")
        for name in ("window", "base_delay", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"login_limits.{name} must be >= 0 seconds, got {value!r}")


class LoginThrottle:
    """Failed logins of every connection, counted in the server's state store.

    With a shared store (Redis), failures on every worker and instance count together,
    and a ban on one holds on all. A ban is by address, or by user name from one address;
    a user name alone is only ever slowed (by ``max_delay`` once it has ``per_user``
    failures), never refused, so nobody can lock another user out by guessing wrong.
    """

    def __init__(self, limits: LoginLimits, shared: SharedState) -> None:
        self.limits = limits
        self._shared = shared

    @staticmethod
    def _keys(username: str, address: str) -> list[str]:
        return [f"ua:{username}\x00{address}", f"u:{username}", f"a:{address}"]

    async def check(self, username: str, address: str) -> tuple[str | None, float, int]:
        """Before checking credentials: why this attempt is refused (or None), how long
        to hold it first (a user name with many failures everywhere is slowed), and the
        failures of this user from this address (none: a success has nothing to clear).

        Raises:
            StateUnavailable: the state store did not answer.
        """
        limits, store = self.limits, self._shared.store
        keys = self._keys(username, address)
        pair, user, source = await self._shared.call(
            lambda: store.failure_counts(keys, limits.window)
        )
        if source >= limits.per_address:
            return "too many failed logins from this address", 0.0, pair
        if pair >= limits.per_user_and_address:
            return "too many failed logins for this user from this address", 0.0, pair
        return None, limits.max_delay if user >= limits.per_user else 0.0, pair

    async def failed(self, username: str, address: str) -> float:
        """Record a failure; return the delay (seconds) to wait before answering.

        Raises:
            StateUnavailable: the state store did not answer.
        """
        limits, store = self.limits, self._shared.store
        keys = self._keys(username, address)
        pair, user, _source = await self._shared.call(
            lambda: store.record_failure(keys, limits.window)
        )
        if user >= limits.per_user:
            return float(limits.max_delay)
        return float(min(limits.max_delay, limits.base_delay * 2 ** max(0, pair - 1)))

    async def succeeded(self, username: str, address: str) -> None:
        """Forget the failures of this username from this address.

        Raises:
            StateUnavailable: the state store did not answer.
        """
        key = self._keys(username, address)[0]
        await self._shared.call(lambda: self._shared.store.clear_failures(key))


class ConnectionRate:
    """New connections per client address: a token bucket of ``burst`` refilled at ``rate``
    per second. A connection beyond it is refused before the SSH banner, so a flood of
    handshakes (the DHEat denial of service, ssh-audit's rate test) costs no key exchange.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # host -> (tokens, when)

    def allow(self, host: str, now: float | None = None) -> bool:
        """Take a token for a new connection from ``host``; False when there is none."""
        now = time.monotonic() if now is None else now
        tokens, then = self._buckets.get(host, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[host] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > 10_000:
            self._forget_full(now)
        return allowed

    def _forget_full(self, now: float) -> None:
        """Drop addresses whose bucket has refilled: they are as good as unseen."""
        full = [
            host
            for host, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self.rate >= self.burst
        ]
        for host in full:
            del self._buckets[host]
