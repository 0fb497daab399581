"""Bandwidth limits: uploads and downloads paced per session, per user and per server.

Pacing delays a read's reply or a write's acknowledgement until its bytes fit the rate;
nothing is refused. Clients keep a window of requests outstanding, so a delayed answer
slows them down smoothly. A session's own limit is counted here; a user's (summed over
all their sessions on every instance) and the server's are token buckets in the state
store, shared by every process that uses it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._shared import SharedState
from ._sizes import parse_size, positive_number
from .errors import ConfigError
from .state import StateUnavailable

__all__ = ["Bandwidth", "Shaper", "TokenBucket"]

log = logging.getLogger("sftpd")

Direction = Literal["upload", "download"]

#: A bucket holds this many seconds of its rate (at least :data:`MIN_BURST` bytes): short
#: enough that a limit holds within a few percent over seconds, long enough that the
#: first requests of a transfer are not held.
BURST_SECONDS = 0.1
MIN_BURST = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Bandwidth:
    """Transfer rates, in bytes per second; None: no limit.

    Attributes:
        session_upload: One session's uploads.
        session_download: One session's downloads.
        user_upload: All sessions of one user, on every instance sharing the state
            store; an authenticator's ``upload_rate`` attribute overrides it per user.
        user_download: The same for downloads (``download_rate`` attribute).
        server_upload: Every session of every process sharing the state store (one
            process with the default in-process store).
        server_download: The same for downloads.
    """

    session_upload: float | None = None
    session_download: float | None = None
    user_upload: float | None = None
    user_download: float | None = None
    server_upload: float | None = None
    server_download: float | None = None

    def __post_init__(self) -> None:
        for name in ("session_upload", "session_download", "user_upload", "user_download",
                     "server_upload", "server_download"):  # fmt: skip
            object.__setattr__(self, name, check_rate(f"bandwidth.{name}", getattr(self, name)))

    @property
    def limited(self) -> bool:
        """True if any rate is set."""
        return any(getattr(self, n) is not None for n in self.__slots__)

    @classmethod
    def parse(cls, text: str) -> Bandwidth:
        """``"user_download=10M,session_upload=1M"`` (or with dashes) as a Bandwidth.

        Raises:
            ConfigError: an unknown name or a bad rate.
        """
        rates: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in cls.__dataclass_fields__:
                raise ConfigError(f"bandwidth: {item!r} must be NAME=RATE with NAME one of "
                                  f"{', '.join(cls.__dataclass_fields__)}")  # fmt: skip
            rates[name] = parse_size(value.strip(), f"bandwidth {name}")
        return cls(**rates)


def check_rate(name: str, value: object) -> float | None:
    """A rate in bytes per second, or None for no limit.

    Raises:
        ConfigError: it is not a positive finite number.
    """
    if value is None:
        return None
    if not positive_number(value):
        raise ConfigError(f"{name} must be a positive number of bytes per second, got {value!r}")
    return float(value)  # type: ignore[arg-type]


class TokenBucket:
    """Bytes per second with a burst, in this process: ``take`` says how long to wait."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = burst_of(rate)
        self._tokens = self.burst
        self._when = time.monotonic()

    def take(self, amount: int) -> float:
        """Take ``amount`` bytes (into debt if need be); return the seconds to wait."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._when) * self.rate) - amount
        self._when = now
        return max(0.0, -self._tokens / self.rate)


def burst_of(rate: float) -> float:
    """The burst a bucket of ``rate`` bytes per second allows."""
    return max(rate * BURST_SECONDS, float(MIN_BURST))


class Shaper:
    """Paces one session's reads and writes against its limits.

    Args:
        shared: The server's state store, for the user's and the server's buckets.
        limits: The server's limits.
        username: Whose sessions share the user buckets.
        attributes: The session's attributes: ``upload_rate`` and ``download_rate``
            override the user limits.
    """

    def __init__(
        self, shared: SharedState, limits: Bandwidth, username: str, attributes: Mapping[str, Any]
    ) -> None:
        self._shared = shared
        user_up = attributes.get("upload_rate", limits.user_upload)
        user_down = attributes.get("download_rate", limits.user_download)
        self._shared_limits: dict[Direction, list[tuple[str, float]]] = {
            "upload": [],
            "download": [],
        }
        self._local: dict[Direction, list[TokenBucket]] = {"upload": [], "download": []}
        self._fallback: dict[Direction, list[TokenBucket]] = {"upload": [], "download": []}
        directions: tuple[tuple[Direction, float | None, object, float | None], ...] = (
            ("upload", limits.session_upload, user_up, limits.server_upload),
            ("download", limits.session_download, user_down, limits.server_download),
        )
        for key, session, given, server in directions:
            user = check_rate(f"{key}_rate", given)
            if session is not None:
                self._local[key].append(TokenBucket(session))
            for bucket, rate in ((f"u:{key}:{username}", user), (f"server:{key}", server)):
                if rate is not None:
                    self._shared_limits[key].append((bucket, rate))
                    # While the store is unreachable, each session keeps to the rate alone.
                    self._fallback[key].append(TokenBucket(rate))
        self.limited = any(self._local.values()) or any(self._shared_limits.values())

    async def pace(self, direction: Direction, amount: int) -> None:
        """Wait until ``amount`` bytes in ``direction`` fit every limit."""
        if amount <= 0:
            return
        wait = max((bucket.take(amount) for bucket in self._local[direction]), default=0.0)
        shared = self._shared_limits[direction]
        if shared:
            store = self._shared.store
            try:
                for key, rate in shared:
                    wait = max(wait, await self._shared.call(
                        lambda k=key, r=rate: store.take(k, amount, r, burst_of(r))  # type: ignore[misc]
                    ))  # fmt: skip
            except StateUnavailable:
                fallback = self._fallback[direction]
                wait = max(wait, *(bucket.take(amount) for bucket in fallback))
        if wait > 0:
            await asyncio.sleep(wait)
