"""Server: listen, authenticate, limit sessions, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import inspect
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import asyncssh
from asyncssh.public_key import CERT_TYPE_USER, SSHOpenSSHCertificate

from ._authorized_keys import serves_sftp
from ._bandwidth import Shaper
from ._binding import BoundBackend, bind_backend, start_backend, stop_backend
from ._certificates import (
    CertificateInfo,
    allowed_principals,
    certificate_info,
    load_public_keys,
    parse_certificate,
)
from ._coalesce import coalesce_writes, refuse_before_banner, skip_ignore_packets
from ._config import ServerConfig, algorithm_options, host_key_pairs, load_host_keys
from ._digests import parse_hash_command
from ._interactive import Conversation
from ._memory import UploadMemory
from ._proxy import ProxyListener
from ._quota import QuotaLedger, count_usage
from ._requests import Requests, SessionState, Settings
from ._session import Peer, Session
from ._sftp.engine import ConnectionBudget, SftpEngine, Transport
from ._sftp.ssh import SftpChannel
from ._shared import SharedState
from ._throttle import ConnectionRate, LoginThrottle
from ._upload import Upload
from .auth import (
    Authenticator,
    BoundAuthenticator,
    Disconnect,
    as_authenticator,
    fingerprint,
    source_allowed,
)
from .errors import ConfigError
from .state import StateStore, StateUnavailable
from .telemetry import TelemetryBus
from .telemetry import bus as default_bus

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Server", "run"]

log = logging.getLogger("sftpd")

#: Seconds between two log lines about refused connections from one address.
REFUSAL_LOG_EVERY = 60.0


@dataclass
class ServerContext:
    """What every connection and channel of one server shares."""

    config: ServerConfig
    backend: BoundBackend
    auth: BoundAuthenticator
    shared: SharedState
    bus: TelemetryBus
    connections: set[_Connection] = field(default_factory=set)
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
            ("sftpd", "connection", "refused"),
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


class _Connection(asyncssh.SSHServer):
    """One client connection: authentication, session bookkeeping, refusals."""

    def __init__(self, context: ServerContext, client: Peer | None = None) -> None:
        self._ctx = context
        self._conn: asyncssh.SSHServerConnection | None = None
        self._client = client  # from a PROXY header; else the socket's peer is the client
        self.peer = Peer("", 0)
        self.session: Session | None = None
        self.state: SessionState | None = None
        self.channels: set[SftpChannel] = set()
        self._budget = ConnectionBudget(context.config.max_requests_per_session)
        self._pending: Session | None = None
        self._counted = False
        self._failed_attempts = 0
        # A certificate being checked: (user, certificate, principal); and those accepted.
        self._offer: tuple[str, SSHOpenSSHCertificate, str] | None = None
        self._accepted_certificates: set[bytes] = set()
        self._validate_key_data: Any = None
        self._interactive: tuple[Conversation, asyncio.Task[bool]] | None = None
        # AuthenticationMethods: the steps passed so far (user, methods), and whether the
        # failure about to be sent is a partial success.
        self._chain: tuple[str, tuple[str, ...], Session | None] = ("", (), None)
        self._partial_success = False
        # The session lease this connection holds in the state store (for session caps),
        # taken when a login is accepted; and the quota of the session about to open.
        self._lease = secrets.token_hex(8)
        self._lease_user: str | None = None
        self._ledger: QuotaLedger | None = None
        self._had_failures = False  # failures of this user and address were counted

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
                ("sftpd", "session", "close"),
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

    # -- auth

    def _at_capacity(self) -> bool:
        return self._ctx.active_sessions >= self._ctx.config.max_sessions

    def _refuse(self, code: int, reason: str) -> None:
        if self._conn is not None:
            self._conn.disconnect(code, reason)

    def begin_auth(self, username: str) -> bool:
        if self._at_capacity():
            self._ctx.refused(self.peer, "max_sessions")
            self._refuse(asyncssh.DISC_TOO_MANY_CONNECTIONS, "Too many sessions")
        return True

    def password_auth_supported(self) -> bool:
        return self._ctx.auth.password is not None and self._may_try("password")

    def _may_try(self, method: str) -> bool:
        """With AuthenticationMethods: whether ``method`` continues a chain now."""
        chains = self._ctx.config.method_chains
        if not chains:
            return True
        done = self._chain[1]
        return any(chain[: len(done)] == done and chain[len(done)] == method
                   for chain in chains if len(chain) > len(done))  # fmt: skip

    def _chain_step(self, username: str, method: str) -> bool:
        """A method succeeded: True if that completes a chain (or none are required);
        False for a partial success, the next step still to come."""
        chains = self._ctx.config.method_chains
        if not chains:
            return True
        user, done, first = self._chain
        if user != username:  # a new user name starts over, as in OpenSSH
            done, first = (), None
        done = (*done, method)
        if any(chain == done for chain in chains):
            pending = self._pending
            if pending is not None and first is not None:
                self._pending = dataclasses.replace(
                    pending, auth_method="+".join(done),
                    key_fingerprint=pending.key_fingerprint or first.key_fingerprint,
                    certificate=pending.certificate or first.certificate,
                )  # fmt: skip
            elif pending is not None:
                self._pending = dataclasses.replace(pending, auth_method="+".join(done))
            self._chain = ("", (), None)
            return True
        following = sorted({c[len(done)] for c in chains if c[: len(done)] == done and
                            len(c) > len(done)})  # fmt: skip
        log.info("%s passed %s from %s; %s still needed", username, method, self.peer,
                 " or ".join(following))  # fmt: skip
        self._chain = (username, done, first or self._pending)
        self._partial_success = True
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        check = self._ctx.auth.password
        if check is None:
            return False
        if not await self._may_attempt(username, "password"):
            return self._attempt_failed()
        accepted = await self._accept(username, "password", None, check, password)
        if accepted:
            await self._login_succeeded(username)
            return self._chain_step(username, "password")
        self._had_failures = True
        await asyncio.sleep(await self._login_failed(username))
        return self._attempt_failed()

    async def _may_attempt(self, username: str, method: str) -> bool:
        """Ask the login throttle about this attempt; hold it first if it says so.

        False: refused (a ban, or a state store that does not answer).
        """
        throttle = self._ctx.throttle
        try:
            refusal, delay, failures = await throttle.check(username, self.peer.host)
        except StateUnavailable:
            self._store_unreachable(username, method)
            return False
        if refusal is not None:
            log.warning("refusing %s login for %s from %s: %s", method, username, self.peer,
                        refusal)  # fmt: skip
            self._auth_event("failure", method, username, 0, "locked out")
            await asyncio.sleep(throttle.limits.max_delay)
            return False
        self._had_failures = self._had_failures or failures > 0
        if delay:
            await asyncio.sleep(delay)
        return True

    async def _login_failed(self, username: str) -> float:
        """Count a failure; the delay before answering."""
        throttle = self._ctx.throttle
        try:
            return await throttle.failed(username, self.peer.host)
        except StateUnavailable:
            return throttle.limits.max_delay

    async def _login_succeeded(self, username: str) -> None:
        if not self._had_failures:
            return  # nothing to forget: no round trip to the store
        with contextlib.suppress(StateUnavailable):  # the lease, taken before, needed it
            await self._ctx.throttle.succeeded(username, self.peer.host)

    def _store_unreachable(self, username: str, method: str, *, event: bool = True) -> None:
        """No login without the state store (bans, caps and quotas live there)."""
        if event:
            self._auth_event("failure", method, username, 0, "state store unreachable")
        self._ctx.refused(self.peer, "state_store_unreachable")
        self._refuse(asyncssh.DISC_SERVICE_NOT_AVAILABLE, "Service unavailable, try again later")

    def kbdint_auth_supported(self) -> bool:
        auth = self._ctx.auth
        offered = auth.interactive is not None or auth.password is not None
        return offered and self._may_try("keyboard-interactive")

    async def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> bool | tuple[str, str, str, list[tuple[str, bool]]]:
        if not await self._may_attempt(username, "keyboard-interactive"):
            return self._attempt_failed()
        if self._interactive is not None:
            self._interactive[1].cancel()
        conversation = Conversation()
        interactive, password = self._ctx.auth.interactive, self._ctx.auth.password

        async def check(user: str, _credential: object, peer: Peer) -> object:
            if interactive is not None:
                return await interactive(user, peer, conversation.ask)
            assert password is not None  # offered only with one of the two
            answers = await conversation.ask([("Password: ", False)])
            # The person's typing is bounded by login_timeout, the check by auth_timeout.
            given = answers[0] if answers else ""
            return await asyncio.wait_for(
                password(user, given, peer), self._ctx.config.auth_timeout
            )

        accepting = asyncio.get_running_loop().create_task(self._accept(
            username, "keyboard-interactive", None, check, None,
            timeout=self._ctx.config.login_timeout,
        ))  # fmt: skip
        self._interactive = (conversation, accepting)
        return await self._interactive_step(username, None)

    async def validate_kbdint_response(
        self, username: str, responses: Sequence[str]
    ) -> bool | tuple[str, str, str, list[tuple[str, bool]]]:
        return await self._interactive_step(username, responses)

    async def _interactive_step(
        self, username: str, answers: Sequence[str] | None
    ) -> bool | tuple[str, str, str, list[tuple[str, bool]]]:
        if self._interactive is None:
            return False
        conversation, accepting = self._interactive
        result = await conversation.next(answers, accepting)
        if not isinstance(result, bool):
            return result  # the next prompts
        self._interactive = None
        if result:
            await self._login_succeeded(username)
            return self._chain_step(username, "keyboard-interactive")
        self._had_failures = True
        await asyncio.sleep(await self._login_failed(username))
        return self._attempt_failed()

    def public_key_auth_supported(self) -> bool:
        auth = self._ctx.auth
        offered = auth.public_key is not None or auth.certificate is not None
        return offered and self._may_try("publickey")

    async def _validate_key_or_certificate(
        self, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        if not await self._validate_key_or_certificate_only(username, key_data, msg, signature):
            return False
        # A signed request proved the key; the query before it (no signature) proves
        # nothing and only asks whether the key would do.
        return not msg or self._chain_step(username, "publickey")

    async def _validate_key_or_certificate_only(
        self, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        cert = parse_certificate(key_data)
        if cert is None:
            return bool(await self._validate_key_data(username, key_data, msg, signature))
        allowed = allowed_principals(username, self._ctx.config.authorized_principals)
        principal = next((p for p in cert.principals if p in allowed), None)
        if principal is None:
            log.info("certificate login failed for %s from %s: no principal of %s is allowed",
                     username, self.peer, list(cert.principals))  # fmt: skip
            self._auth_event("failure", "publickey", username, 0, "certificate principal")
            return self._attempt_failed()
        self._offer = (username, cert, principal)
        try:
            # asyncssh checks the certificate names ``principal``; the login stays ``username``.
            return bool(await self._validate_key_data(principal, key_data, msg, signature))
        finally:
            self._offer = None

    async def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        offer = self._offer
        check = self._ctx.auth.certificate
        if offer is None or check is None:
            return False
        user, cert, principal = offer
        if cert.public_data in self._accepted_certificates:
            return True  # the signed request after the query: already decided
        reason = self._certificate_refusal(cert, key, principal)
        if reason is not None:
            log.info("certificate login failed for %s from %s: %s", user, self.peer, reason)
            self._auth_event("failure", "publickey", user, 0, reason)
            return self._attempt_failed()
        info = certificate_info(cert, trusted_ca=key.public_data in self._ctx.trusted_cas,
                                principal=principal)  # fmt: skip
        if await self._accept(user, "publickey", fingerprint(cert.key), check, info,
                              certificate=info):  # fmt: skip
            self._accepted_certificates.add(cert.public_data)
            return True
        return self._attempt_failed()

    def _certificate_refusal(
        self, cert: SSHOpenSSHCertificate, ca_key: asyncssh.SSHKey, principal: str
    ) -> str | None:
        """Why sshd would refuse this certificate before asking anyone, or None."""
        revoked = self._ctx.revoked
        if ca_key.public_data in revoked or cert.key.public_data in revoked:
            return "revoked key"
        try:
            cert.validate(CERT_TYPE_USER, principal)
        except ValueError as exc:
            return f"certificate: {exc}"
        forced = cert.options.get("force-command")
        if isinstance(forced, str) and not serves_sftp(forced):
            return f"certificate force-command {forced!r} is not SFTP"
        networks = cast("list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None",
                        cert.options.get("source-address"))  # fmt: skip
        if networks:
            try:
                address = ipaddress.ip_address(self.peer.host)
            except ValueError:
                return "certificate source-address: client address unknown"
            if not any(address in network for network in networks):
                return "certificate source-address does not include the client"
        return None

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        check = self._ctx.auth.public_key
        if check is None:
            return False
        if key.public_data in self._ctx.revoked:
            log.info("public key login failed for %s from %s: revoked key", username, self.peer)
            return self._attempt_failed()
        if await self._accept(username, "publickey", fingerprint(key), check, key):
            return True
        return self._attempt_failed()

    def _attempt_failed(self) -> bool:
        """Count a failed attempt; drop the connection after too many. Returns False."""
        self._failed_attempts += 1
        if self._failed_attempts >= self._ctx.config.login_limits.max_attempts_per_connection:
            log.warning("disconnecting %s: too many failed login attempts", self.peer)
            self._refuse(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication failures"
            )
        return False

    def _auth_event(
        self, outcome: str, method: str, username: str, started: int, reason: str | None = None
    ) -> None:
        name = ("sftpd", "auth", outcome)
        if self._ctx.bus.listening(name):
            meta: dict[str, Any] = {"method": method, "username": username, "peer": str(self.peer)}
            if reason is not None:
                meta["reason"] = reason
            duration = time.monotonic_ns() - started if started else 0
            self._ctx.bus.execute(name, {"duration": duration}, meta, self._pending)

    async def _accept(
        self,
        username: str,
        method: str,
        key_fingerprint: str | None,
        check: Any,
        credential: Any,
        *,
        certificate: CertificateInfo | None = None,
        timeout: float | None = None,
    ) -> bool:
        started = time.monotonic_ns()
        accepted, reason = await self._verdict(
            username, method, key_fingerprint, check, credential, certificate,
            self._ctx.config.auth_timeout if timeout is None else timeout,
        )  # fmt: skip
        if accepted:
            self._auth_event("success", method, username, started)
        else:
            self._pending = None
            self._auth_event("failure", method, username, started, reason)
        return accepted

    async def _verdict(
        self,
        username: str,
        method: str,
        key_fingerprint: str | None,
        check: Any,
        credential: Any,
        certificate: CertificateInfo | None,
        timeout: float,
    ) -> tuple[bool, str]:
        try:
            attributes = await asyncio.wait_for(check(username, credential, self.peer), timeout)
        except Disconnect as exc:
            self._refuse(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, exc.reason)
            return False, "disconnected"
        except asyncio.TimeoutError:
            log.error("authenticator timed out for %s from %s; rejecting", username, self.peer)
            return False, "timeout"
        except Exception:
            log.exception("authenticator failed for %s from %s; rejecting", username, self.peer)
            return False, "error"
        if attributes is None or attributes is False:
            log.info("%s login failed for %s from %s", method, username, self.peer)
            return False, "rejected"
        if attributes is True:
            attributes = {}
        if isinstance(attributes, Mapping) and not source_allowed(attributes, self.peer.host):
            log.info("%s login refused for %s from %s: outside the user's source_networks",
                     method, username, self.peer)  # fmt: skip
            return False, "source network"
        if not isinstance(attributes, Mapping):
            log.error(
                "authenticator returned %s for %s; expected a mapping or None",
                type(attributes).__name__,
                username,
            )
            return False, "error"
        try:
            self._pending = Session.from_attributes(
                username=username,
                peer=self.peer,
                auth_method=method,
                attributes=attributes,
                key_fingerprint=key_fingerprint,
                max_file_size=self._ctx.config.max_file_size,
                upload_memory=self._ctx.upload_memory,
                certificate=certificate,
            )
        except ConfigError:
            log.exception("authenticator returned bad session attributes for %s", username)
            return False, "error"
        if not await self._ensure_root(self._pending):
            return False, "error"
        refusal = await self._take_lease(self._pending, method)
        if refusal is not None:
            return False, refusal
        return True, "ok"

    async def _take_lease(self, session: Session, method: str) -> str | None:
        """Take the session's place under the fleet's session caps and know its quota
        usage; the reason if the login is refused."""
        ctx = self._ctx
        store = ctx.shared.store
        per_user = session.attributes.get("max_sessions", ctx.config.max_sessions_per_user)
        try:
            if self._lease_user not in (None, session.username):
                self._give_back_lease()  # a chain's steps for another user name
            refused = await ctx.shared.call(lambda: store.open_session(
                self._lease, session.username, per_user=per_user,
                total=ctx.config.max_sessions_total, ttl=ctx.shared.ttl,
            ))  # fmt: skip
            if refused is not None:
                ctx.refused(self.peer, refused)
                self._refuse(asyncssh.DISC_TOO_MANY_CONNECTIONS,
                             "Too many sessions for this user" if refused.endswith("per_user")
                             else "Too many sessions")  # fmt: skip
                return refused
            ctx.shared.leases[self._lease] = self._lease_user = session.username
            self._ledger = None
            if session.quota is not None:
                ledger = QuotaLedger(ctx.shared, session.quota, lambda: count_usage(
                    lambda directory: ctx.backend.list_dir(directory, session), session.root
                ))  # fmt: skip
                await ledger.ensure_known()
                self._ledger = ledger
        except StateUnavailable:
            self._store_unreachable(session.username, method, event=False)
            return "state store unreachable"
        except Exception:
            log.exception("counting the quota usage of %s failed; refusing the login",
                          session.username)  # fmt: skip
            return "error"
        return None

    def _give_back_lease(self) -> None:
        user, self._lease_user = self._lease_user, None
        if user is None:
            return
        shared = self._ctx.shared
        shared.leases.pop(self._lease, None)

        async def give_back() -> None:
            with contextlib.suppress(StateUnavailable):  # it lapses after state_ttl
                await shared.call(lambda: shared.store.close_session(self._lease, user))

        self._ctx.spawn(give_back(), "giving back a session lease")

    async def _ensure_root(self, session: Session) -> bool:
        """Create the session's root directory (and its parents) if it does not exist."""
        if session.root == "/":
            return True
        backend = self._ctx.backend
        path = ""
        try:
            for part in session.root[1:].split("/"):
                path += "/" + part
                try:
                    attrs = await backend.stat(path, session)
                except FileNotFoundError:
                    await backend.make_dir(path, session)
                    continue
                if not attrs.is_dir:
                    raise NotADirectoryError(path)
        except Exception:
            log.exception("cannot prepare root %s for %s; refusing the login",
                          session.root, session.username)  # fmt: skip
            return False
        return True

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
            ("sftpd", "session", "open"),
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


async def _serve_proxied(
    ctx: ServerContext, sock: socket.socket, client: Peer, ssh_options: dict[str, Any]
) -> None:
    """Run SSH on a connection whose PROXY header named ``client``."""
    try:
        await asyncssh.run_server(
            sock, server_factory=lambda: _Connection(ctx, client), **ssh_options
        )
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        log.debug("connection from %s ended before login: %s", client, exc)
    except Exception:
        log.exception("connection from %s failed", client)


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
            shared=SharedState(cast(StateStore, config.state), config.state_ttl),
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
            ("sftpd", "server", "start"),
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
                    lambda sock, client: _serve_proxied(ctx, sock, Peer(*client), ssh_options),
                    reuse_port=config.reuse_port,
                    allowed=config.proxy_from,
                )
            return await asyncssh.create_server(
                lambda: _Connection(ctx),
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
        (what a load balancer's readiness check asks; ``/readyz`` reports it)."""
        return self.is_serving and self._ctx is not None and self._ctx.shared.available

    async def readiness(self) -> str | None:
        """None while new logins can succeed; else why not: ``"starting"``,
        ``"draining"`` (after :meth:`close`), ``"state store unreachable"``. The store is
        asked now. For a web app's readiness route; ``/readyz`` of ``--admin-port``."""
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
        return cast(StateStore, self.config.state)

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
        store = cast(StateStore, self.config.state)
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
            ("sftpd", "server", "stop"),
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
