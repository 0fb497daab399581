"""Server: the lifecycle of one server (start, listen, stop gracefully).

Connections (:mod:`sftpd._connection`, logging in in :mod:`sftpd._login`) share the
server's :class:`~sftpd._context.ServerContext`; requests are served by
:mod:`sftpd._requests` through the engine of :mod:`sftpd._sftp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import asyncssh

from ._binding import bind_backend, start_backend, stop_backend
from ._config import ServerConfig, algorithm_options, host_key_pairs, load_host_keys
from ._memory import UploadMemory
from ._proxy import ProxyListener
from ._session import Peer
from ._shared import SharedState
from .auth import (
    Authenticator,
    BoundAuthenticator,
    as_authenticator,
)
from .errors import ConfigError
from .state import StateStore, StateUnavailable
from .telemetry import SERVER_START, SERVER_STOP
from .telemetry import bus as default_bus

if TYPE_CHECKING:
    from typing_extensions import Self

from ._connection import Connection, serve_proxied
from ._context import ServerContext

__all__ = ["Server", "run"]

log = logging.getLogger("sftpd")


class Server:
    """An SFTP server serving one backend.

    Use it as ``async with Server(backend=..., auth=..., system_dir=...) as server:``, or
    call :meth:`start` and later :meth:`close` + :meth:`wait_closed` (or :meth:`stop`).

    Args:
        config: A :class:`ServerConfig`; or give its fields as keyword arguments.
    """

    def __init__(self, config: ServerConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise ConfigError("pass either a ServerConfig or keyword options, not both")
        self.config = config if config is not None else ServerConfig(**options)
        self._acceptor: asyncssh.SSHAcceptor | ProxyListener | None = None
        self._ctx: ServerContext | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._deadline = 0.0
        self._port: int | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.host_keys: list[asyncssh.SSHKey] = []

    # -- lifecycle

    async def start(self) -> None:
        """Load host keys and start listening.

        Raises:
            ConfigError: host keys are missing or unreadable, or the port is taken.
        """
        if self._acceptor is not None:
            raise RuntimeError("server already started")
        config = self.config
        self.host_keys = load_host_keys(config)
        self._ctx = ServerContext(
            config=config,
            backend=bind_backend(config.backend),
            auth=BoundAuthenticator(config.authenticator),
            shared=SharedState(config.store, config.state_ttl),
            bus=config.telemetry if config.telemetry is not None else default_bus,
        )
        ctx = self._ctx
        try:
            await ctx.shared.start()
            await start_backend(ctx.backend)
            self._acceptor = await self._listen(ctx)
        except BaseException:
            await stop_backend(ctx.backend)  # release what a failed start opened
            await ctx.shared.close()
            raise
        self._port = int(self._acceptor.sockets[0].getsockname()[1])
        if config.idle_timeout is not None:
            self._reaper = asyncio.get_running_loop().create_task(
                self._reap_idle(config.idle_timeout)
            )
        log.info("sftpd listening on %s:%d (%s)", config.host, self._port, ctx.backend.name)
        ctx.bus.execute(
            SERVER_START,
            {"duration": 0},
            {"host": config.host, "port": self._port, "max_sessions": config.max_sessions,
             "backend": ctx.backend.name, "backend_kind": ctx.backend.kind, "result": "ok",
             "server_ref": self},
        )  # fmt: skip

    async def _listen(self, ctx: ServerContext) -> asyncssh.SSHAcceptor | ProxyListener:
        """Listen for SSH (behind a PROXY header reader if configured).

        Raises:
            ConfigError: the address cannot be listened on.
        """
        config = self.config
        ssh_options: dict[str, Any] = {
            "server_host_keys": host_key_pairs(self.host_keys, legacy_sha1=config.legacy_sha1),
            "agent_forwarding": False,
            "x11_forwarding": False,
            "allow_pty": False,
            "login_timeout": config.login_timeout,
            "server_version": config.server_version,
            "encryption_algs": list(config.ciphers),
            **algorithm_options(
                legacy=config.legacy_algorithms,
                legacy_sha1=config.legacy_sha1,
                legacy_macs=config.legacy_macs,
            ),
            "encoding": None,
        }
        try:
            if config.proxy_protocol:
                return await ProxyListener.listen(
                    config.host,
                    config.port,
                    lambda sock, client: serve_proxied(ctx, sock, Peer(*client), ssh_options),
                    reuse_port=config.reuse_port,
                    allowed=config.proxy_from,
                )
            return await asyncssh.create_server(
                lambda: Connection(ctx),
                config.host,
                config.port,
                reuse_port=config.reuse_port or None,
                **ssh_options,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"cannot listen on {config.host}:{config.port}: the address is already in "
                    "use; choose another port or stop the server using it"
                ) from exc
            raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc}") from exc

    @property
    def port(self) -> int:
        """The port actually bound (useful after asking for port 0)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def upload_memory(self) -> UploadMemory:
        """The budget of upload bytes held in memory: ``limit``, ``in_use``, ``peak``."""
        if self._ctx is None:
            raise RuntimeError("server not started")
        return self._ctx.upload_memory

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self.config.host

    @property
    def active_sessions(self) -> int:
        """Authenticated sessions right now."""
        return self._ctx.active_sessions if self._ctx else 0

    @property
    def is_serving(self) -> bool:
        """True between a successful :meth:`start` and :meth:`close`."""
        return self._acceptor is not None and self._closing is None

    @property
    def ready(self) -> bool:
        """True while new logins can succeed: serving, and the state store answering
        (what a load balancer's readiness check asks; ``/readyz`` reports it).
        """
        return self.is_serving and self._ctx is not None and self._ctx.shared.available

    async def readiness(self) -> str | None:
        """None while new logins can succeed; else why not: ``"starting"``,
        ``"draining"`` (after :meth:`close`), ``"state store unreachable"``. The store is
        asked now. For a web app's readiness route; ``/readyz`` of ``--admin-port``.
        """
        ctx = self._ctx
        if ctx is None or self._acceptor is None:
            return "draining" if self._closing is not None else "starting"
        if self._closing is not None:
            return "draining"
        try:
            await ctx.shared.call(ctx.shared.store.ping)
        except StateUnavailable:
            return "state store unreachable"
        return None

    @property
    def state(self) -> StateStore:
        """The state store: failed logins, session leases, quota usage, bandwidth."""
        return self.config.store

    async def check(self, *, host_keys: bool = True) -> list[asyncssh.SSHKey]:
        """Check what :meth:`start` would, without listening: for deploy pipelines.

        The host keys load (unless ``host_keys`` is False: they are yet to be generated)
        and the backend's ``startup()`` runs, then its ``shutdown()``: S3 credentials,
        endpoint and bucket are checked for real.

        Returns:
            The host keys.

        Raises:
            ConfigError: with what to fix.
        """
        keys = load_host_keys(self.config) if host_keys else []
        store = self.config.store
        await store.start()
        await store.close()
        backend = bind_backend(self.config.backend)
        try:
            await start_backend(backend)
        finally:
            await stop_backend(backend)
        return keys

    def replace_auth(self, auth: Authenticator | Mapping[str, str]) -> None:
        """Check logins against ``auth`` from now on; sessions already open stay.

        For reloading users without a restart (``sftpd serve`` does so on SIGHUP).
        ``config.auth`` keeps the value the server started with.

        Raises:
            ConfigError: ``auth`` is not an authenticator or a ``{"user": "password"}``
                mapping.
            RuntimeError: the server has not been started.
        """
        authenticator = as_authenticator(auth)
        if self._ctx is None:
            raise RuntimeError("server not started")
        self._ctx.auth = BoundAuthenticator(authenticator)

    def close(self, grace: float | None = None) -> None:
        """Stop accepting now; let open files and requests finish, then disconnect.

        Args:
            grace: Seconds to wait for busy sessions (default ``config.shutdown_grace``).
        """
        loop = asyncio.get_running_loop()
        limit = self.config.shutdown_grace if grace is None else grace
        if self._closing is None:
            self._deadline = loop.time() + limit
            self._closing = loop.create_task(self._shutdown())
        elif grace is not None:  # a second, shorter close: hurry up
            self._deadline = min(self._deadline, loop.time() + limit)

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has finished."""
        if self._closing is None:
            raise RuntimeError("close() was not called")
        await asyncio.shield(self._closing)

    async def stop(self, grace: float | None = None) -> None:
        """:meth:`close` and :meth:`wait_closed` in one call."""
        self.close(grace)
        await self.wait_closed()

    async def _reap_idle(self, idle_timeout: float) -> None:
        """Disconnect sessions that sent no request for ``idle_timeout`` seconds."""
        assert self._ctx is not None
        while True:
            await asyncio.sleep(min(5.0, idle_timeout / 4))
            now = time.monotonic()
            for connection in list(self._ctx.connections):
                if connection.session is not None and connection.idle_for(now) > idle_timeout:
                    log.info("disconnecting idle session %s (%s)", connection.session.id,
                             connection.session.username)  # fmt: skip
                    connection.close()

    async def _shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        acceptor, ctx = self._acceptor, self._ctx
        if acceptor is None or ctx is None:
            self._closed.set()
            return
        acceptor.close()
        loop = asyncio.get_running_loop()
        # Polling keeps the request path free of shutdown bookkeeping; it runs only here.
        while any(c.busy for c in ctx.connections) and loop.time() < self._deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for connection in list(ctx.connections):
            connection.close()
        await acceptor.wait_closed()
        hard_stop = loop.time() + 5
        while ctx.connections and loop.time() < hard_stop:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if ctx.tasks:  # session_closed hooks and on_upload callbacks still running
            await asyncio.wait(list(ctx.tasks), timeout=max(0.0, hard_stop - loop.time()))
        await stop_backend(ctx.backend)
        await ctx.shared.close()
        self._closed.set()
        log.info("sftpd stopped")
        ctx.bus.execute(
            SERVER_STOP,
            {"duration": 0},
            {"server_ref": self, "port": self._port, "result": "ok",
             "backend": ctx.backend.name, "backend_kind": ctx.backend.kind},
        )  # fmt: skip

    async def serve_forever(self) -> None:
        """Run until cancelled (then stop gracefully) or until :meth:`close` finishes."""
        if self._acceptor is None:
            await self.start()
        try:
            await self._closed.wait()
        finally:
            if self._closing is None:
                await asyncio.shield(self.stop())

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def run(config: ServerConfig | None = None, **options: Any) -> None:
    """Serve until interrupted (Ctrl-C), for scripts: ``sftpd.run(backend=..., ...)``."""
    server = Server(config, **options)

    async def main() -> None:
        await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
