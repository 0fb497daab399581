"""One client connection: its lifecycle, its session and its SFTP channels."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

import asyncssh

from ._bandwidth import Shaper
from ._coalesce import coalesce_writes, refuse_before_banner, skip_ignore_packets
from ._digests import parse_hash_command
from ._requests import Requests, SessionState
from ._session import Peer, Session
from ._sftp.engine import ConnectionBudget, SftpEngine
from ._sftp.handler import Transport
from ._sftp.ssh import SftpChannel

if TYPE_CHECKING:
    pass

from ._context import ServerContext
from ._login import Login
from .telemetry import SESSION_CLOSE, SESSION_OPEN

__all__ = ["Connection", "serve_proxied"]

log = logging.getLogger("sftpd")


class Connection(Login):
    """One client connection: authentication (:class:`Login`), session bookkeeping."""

    def __init__(self, context: ServerContext, client: Peer | None = None) -> None:
        super().__init__(context, client)
        self.session: Session | None = None
        self.state: SessionState | None = None
        self.channels: set[SftpChannel] = set()
        self._budget = ConnectionBudget(context.config.max_requests_per_session)
        self._counted = False

    # -- lifecycle

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername") or ("", 0)
        self.peer = self._client or Peer(str(peer[0]), int(peer[1]))
        limit = self._ctx.too_many_pending(self.peer.host)
        if limit is not None:
            self._ctx.refused(self.peer, limit)
            if not refuse_before_banner(conn):
                asyncio.get_running_loop().call_soon(conn.abort)
            return
        coalesce_writes(conn)
        skip_ignore_packets(conn)
        chains = self._ctx.config.method_chains
        if self._ctx.auth.certificate is not None or chains:
            # asyncssh checks a certificate's signature, validity and principal against
            # the user name it is given, and asks validate_ca_key about the signer with
            # the CA key alone. Stepping in before it gives the authenticator the whole
            # certificate and lets a principal other than the user name log in; and it
            # is where a signed public-key request (not the query before it) is known.
            self._validate_key_data = conn.validate_public_key
            conn.validate_public_key = self._validate_key_or_certificate  # type: ignore[method-assign]
        if chains:
            # asyncssh always answers a failed step without partial success; a step of a
            # chain (AuthenticationMethods) must say it was one.
            send_failure = conn.send_userauth_failure

            def send_userauth_failure(partial_success: bool) -> None:
                partial, self._partial_success = self._partial_success, False
                send_failure(partial_success or partial)

            conn.send_userauth_failure = send_userauth_failure  # type: ignore[method-assign]
        self._ctx.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ctx.connections.discard(self)
        if self._interactive is not None:
            self._interactive[1].cancel()
            self._interactive = None
        if self._counted:
            self._ctx.active_sessions -= 1
            self._counted = False
        self._give_back_lease()
        session, state = self.session, self.state
        if session is not None and state is not None:
            self._ctx.bus.execute(
                SESSION_CLOSE,
                {
                    "duration": int((time.time() - session.started) * 1e9),
                    "bytes_in": state.bytes_in,
                    "bytes_out": state.bytes_out,
                },
                {"username": session.username, "peer": str(self.peer),
                 "reason": "error" if exc else "closed"},
                session,
            )  # fmt: skip
        if session is not None and self._ctx.backend.session_closed is not None:
            self._ctx.spawn(self._ctx.backend.session_closed(session), "backend session_closed")

    @property
    def busy(self) -> bool:
        """True while any channel of this connection has a request or a file open."""
        return self.state is not None and (self.state.busy or self._budget.requests > 0)

    def idle_for(self, now: float) -> float:
        """Seconds since the last request of a logged-in session with none running."""
        state = self.state
        if state is None or state.in_flight or self._budget.requests:
            return 0.0
        return now - state.last_active

    def close(self) -> None:
        """Disconnect the client."""
        if self._conn is not None:
            self._conn.close()

    def auth_completed(self) -> None:
        session = self._pending
        if session is None:  # pragma: no cover - asyncssh completes only after a success
            self._refuse(asyncssh.DISC_PROTOCOL_ERROR, "Authentication state lost")
            return
        if self._at_capacity():
            self._ctx.refused(self.peer, "max_sessions")
            self._refuse(asyncssh.DISC_TOO_MANY_CONNECTIONS, "Too many sessions")
            return
        self._ctx.active_sessions += 1
        self._counted = True
        self.session = session
        client_version = self._conn.get_extra_info("client_version", "") if self._conn else ""
        shaper = Shaper(self._ctx.shared, self._ctx.config.bandwidth, session.username,
                        session.attributes)  # fmt: skip
        self.state = SessionState(
            session=session, client_version=str(client_version), last_active=time.monotonic(),
            ledger=self._ledger, shaper=shaper if shaper.limited else None,
        )  # fmt: skip
        self._ctx.bus.execute(
            SESSION_OPEN,
            {"duration": 0},
            {"username": session.username, "peer": str(self.peer),
             "auth_method": session.auth_method},
            session,
        )  # fmt: skip
        log.info(
            "session %s: %s logged in from %s by %s",
            session.id,
            session.username,
            self.peer,
            session.auth_method,
        )
        if self._ctx.backend.session_opened is not None:
            self._ctx.spawn(self._ctx.backend.session_opened(session), "backend session_opened")

    # -- SFTP channels; everything else is refused

    def session_requested(self) -> SftpChannel | bool:
        """A session channel: served by the SFTP engine if it asks for the subsystem."""
        limit = self._ctx.config.max_channels
        if self.state is None:
            return False
        if len(self.channels) >= limit:
            log.warning("refusing an SFTP channel of %s: max_channels (%d) reached",
                        self.peer, limit)  # fmt: skip
            return False
        commands = None
        if self._ctx.config.hash_commands:
            commands = (lambda command: parse_hash_command(command) is not None,
                        self._answer_command)  # fmt: skip
        channel = SftpChannel(self._make_engine, self._channel_ended, self._ctx.spawn,
                              self._ctx.config.close_timeout, commands)  # fmt: skip
        self.channels.add(channel)
        return channel

    def _make_engine(self, transport: Transport) -> SftpEngine:
        ctx, state = self._ctx, self.state
        assert state is not None  # channels are opened only after authentication
        requests = Requests(ctx.backend, state, ctx.bus, ctx.settings)
        return SftpEngine(requests, transport, self._budget,
                          concurrency=ctx.config.max_requests_per_channel)  # fmt: skip

    async def _answer_command(self, command: str) -> tuple[bytes, bytes, int]:
        """rclone's hash commands, answered by the request layer (hash_commands=True)."""
        parsed = parse_hash_command(command)
        state = self.state
        if parsed is None or state is None:
            return b"", b"sftpd: only SFTP is served\n", 1
        log.info("session %s: answering %r", state.session.id, command[:200])
        requests = Requests(self._ctx.backend, state, self._ctx.bus, self._ctx.settings)
        return await requests.hash_command(parsed)

    def _channel_ended(self, channel: SftpChannel) -> None:
        self.channels.discard(channel)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:  # fmt: skip
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False


async def serve_proxied(
    ctx: ServerContext, sock: socket.socket, client: Peer, ssh_options: dict[str, Any]
) -> None:
    """Run SSH on a connection whose PROXY header named ``client``."""
    try:
        await asyncssh.run_server(
            sock, server_factory=lambda: Connection(ctx, client), **ssh_options
        )
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        log.debug("connection from %s ended before login: %s", client, exc)
    except Exception:
        log.exception("connection from %s failed", client)
