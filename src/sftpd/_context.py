"""What every connection and channel of one server shares: its context."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ._binding import BoundBackend
from ._certificates import (
    load_public_keys,
)
from ._config import ServerConfig
from ._memory import UploadMemory
from ._requests import Settings
from ._session import Peer, Session
from ._shared import SharedState
from ._throttle import ConnectionRate, LoginThrottle
from ._upload import Upload
from .auth import (
    BoundAuthenticator,
)
from .telemetry import CONNECTION_REFUSED, TelemetryBus

if TYPE_CHECKING:
    pass


__all__ = ["Connected", "ServerContext"]

log = logging.getLogger("sftpd")

#: Seconds between two log lines about refused connections from one address.
REFUSAL_LOG_EVERY = 60.0


class Connected(Protocol):
    """A connection as the server sees it: who is logged in, and whether it is busy."""

    session: Session | None
    peer: Peer

    @property
    def busy(self) -> bool: ...

    def idle_for(self, now: float) -> float: ...

    def close(self) -> None: ...


@dataclass
class ServerContext:
    """What every connection and channel of one server shares."""

    config: ServerConfig
    backend: BoundBackend
    auth: BoundAuthenticator
    shared: SharedState
    bus: TelemetryBus
    connections: set[Connected] = field(default_factory=set)
    active_sessions: int = 0
    tasks: set[asyncio.Future[object]] = field(default_factory=set)
    settings: Settings = field(init=False)
    throttle: LoginThrottle = field(init=False)
    rate: ConnectionRate | None = field(init=False)
    upload_memory: UploadMemory = field(init=False)
    trusted_cas: set[bytes] = field(init=False)
    revoked: set[bytes] = field(init=False)
    _refusals: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        config = self.config
        self.throttle = LoginThrottle(config.login_limits, self.shared)
        self.upload_memory = UploadMemory(config.upload_memory)
        cas = load_public_keys(config.trusted_user_ca_keys, "trusted user CA keys")
        self.trusted_cas = {key.public_data for key in cas}
        revoked = [config.revoked_keys] if config.revoked_keys is not None else []
        self.revoked = {key.public_data for key in load_public_keys(revoked, "revoked keys")}
        self.rate = (
            ConnectionRate(config.connection_rate, config.connection_burst)
            if config.connection_rate is not None
            else None
        )
        self.settings = Settings(
            open_timeout=config.open_timeout,
            close_timeout=config.close_timeout,
            max_open_handles=config.max_open_files,
            on_upload=self.notify_upload,
            policy=config.policy,
            inspector=config.inspector,
            upload_digests=tuple(config.upload_digests),
        )

    def spawn(self, work: Awaitable[object], what: str) -> None:
        """Run background work, holding a reference until it ends; a failure is logged."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)

        def finished(done: asyncio.Future[object]) -> None:
            self.tasks.discard(done)
            if not done.cancelled() and done.exception() is not None:
                log.error("%s failed", what, exc_info=done.exception())

        task.add_done_callback(finished)

    def too_many_pending(self, host: str) -> str | None:
        """The limit a new connection from ``host`` is over before it logs in, if any."""
        config = self.config
        if self.rate is not None and not self.rate.allow(host):
            return "connection_rate"
        pending = [c for c in self.connections if c.session is None]
        if len(pending) >= config.max_unauthenticated:
            return "max_unauthenticated"
        per_address = config.max_unauthenticated_per_address
        if per_address is not None and sum(c.peer.host == host for c in pending) >= per_address:
            return "max_unauthenticated_per_address"
        return None

    def refused(self, peer: Peer, limit: str) -> None:
        """Log and report a connection refused for a limit (``max_sessions``...).

        A flood from one address is logged once a minute with a count, not line by line.
        """
        now = time.monotonic()
        key = (peer.host, limit)
        logged_at, quiet = self._refusals.get(key, (-REFUSAL_LOG_EVERY, 0))
        if now - logged_at >= REFUSAL_LOG_EVERY:
            more = f" ({quiet} more refused in the last minute)" if quiet else ""
            log.warning("refusing a connection from %s: %s reached%s", peer, limit, more)
            self._refusals[key] = (now, 0)
            if len(self._refusals) > 10_000:  # forget addresses gone quiet
                stale = [k for k, (t, _) in self._refusals.items() if now - t > REFUSAL_LOG_EVERY]
                for old_key in stale:
                    del self._refusals[old_key]
        else:
            self._refusals[key] = (logged_at, quiet + 1)
        self.bus.execute(
            CONNECTION_REFUSED,
            {"duration": 0},
            {"peer": str(peer), "reason": limit},
        )

    def notify_upload(self, upload: Upload) -> None:
        """Run ``on_upload`` in the background: the file is stored, the client not held up."""
        callback = self.config.on_upload
        if callback is None:
            return

        async def call() -> None:
            result = callback(upload)
            if inspect.isawaitable(result):
                await result

        self.spawn(call(), f"on_upload for {upload.backend_path}")
