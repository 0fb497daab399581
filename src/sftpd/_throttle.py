"""Failed-login throttling: growing delays, then refusal, per address and per user."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["ConnectionRate", "LoginLimits", "LoginThrottle"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginLimits:
    """How failed logins are slowed down and then refused.

    Failures are counted in a sliding ``window`` (seconds). After each failure the reply is
    delayed by ``base_delay * 2 ** (failures - 1)`` seconds, at most ``max_delay``. Once a
    key reaches its limit, logins for it are refused without checking the credentials
    until its failures age out of the window.

    Attributes:
        per_user_and_address: Failures allowed for one username from one address.
        per_user: Failures allowed for one username from all addresses.
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
    """Remembers recent failures; shared by all connections of a server."""

    def __init__(self, limits: LoginLimits) -> None:
        self.limits = limits
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _keys(self, username: str, address: str) -> list[tuple[tuple[str, str], int]]:
        limits = self.limits
        return [
            (("ua", f"{username}\x00{address}"), limits.per_user_and_address),
            (("u", username), limits.per_user),
            (("a", address), limits.per_address),
        ]

    def _recent(self, key: tuple[str, str], now: float) -> int:
        stamps = self._failures.get(key)
        if not stamps:
            return 0
        horizon = now - self.limits.window
        while stamps and stamps[0] < horizon:
            stamps.popleft()
        if not stamps:
            del self._failures[key]
            return 0
        return len(stamps)

    def locked(self, username: str, address: str) -> bool:
        """True when this username or address has used up its failures."""
        now = time.monotonic()
        return any(self._recent(key, now) >= limit for key, limit in self._keys(username, address))

    def failed(self, username: str, address: str) -> float:
        """Record a failure; return the delay (seconds) to wait before answering."""
        now = time.monotonic()
        if len(self._failures) > 10_000:  # keep memory bounded under a spraying attack
            for key in list(self._failures):
                self._recent(key, now)
        worst = 0
        for key, _limit in self._keys(username, address):
            stamps = self._failures.setdefault(key, deque())
            stamps.append(now)
            if key[0] == "ua":
                worst = self._recent(key, now)
        limits = self.limits
        return float(min(limits.max_delay, limits.base_delay * 2 ** max(0, worst - 1)))

    def succeeded(self, username: str, address: str) -> None:
        """Forget the failures of this username from this address."""
        self._failures.pop(("ua", f"{username}\x00{address}"), None)


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
