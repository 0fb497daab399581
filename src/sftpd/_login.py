"""Logging in: the SSH authentication callbacks of a connection, and their limits.

Passwords, keyboard-interactive, public keys and certificates each reach the server's
authenticator through :meth:`Login._accept`; throttling, AuthenticationMethods chains,
session caps and quotas are decided here, before a session opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncssh
from asyncssh.public_key import CERT_TYPE_USER, SSHOpenSSHCertificate

from ._authorized_keys import serves_sftp
from ._certificates import (
    CertificateInfo,
    allowed_principals,
    certificate_info,
    parse_certificate,
)
from ._interactive import Conversation
from ._quota import QuotaLedger, count_usage
from ._session import Peer, Session
from .auth import (
    Disconnect,
    fingerprint,
    source_allowed,
)
from .errors import ConfigError
from .state import StateUnavailable

if TYPE_CHECKING:
    pass

from ._context import ServerContext
from .telemetry import AUTH_FAILURE, AUTH_SUCCESS, Meta

__all__ = ["Login"]

C = TypeVar("C")
#: An authenticator's check: (user name, credential, peer) -> attributes, True or None.
Check = Callable[[str, C, Peer], Awaitable[object]]

log = logging.getLogger("sftpd")


class Login(asyncssh.SSHServer):
    """The authentication half of a connection (:class:`sftpd._connection.Connection`)."""

    def __init__(self, context: ServerContext, client: Peer | None = None) -> None:
        super().__init__()
        self._ctx = context
        self._conn: asyncssh.SSHServerConnection | None = None
        self._client = client  # from a PROXY header; else the socket's peer is the client
        self.peer = Peer("", 0)
        self._pending: Session | None = None
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
        False for a partial success, the next step still to come.
        """
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
        return await self._concluded(username, "password", accepted)

    async def _concluded(self, username: str, method: str, accepted: bool) -> bool:
        """A password or keyboard-interactive login was decided: the answer to give."""
        if accepted:
            await self._login_succeeded(username)
            return self._chain_step(username, method)
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
        return await self._concluded(username, "keyboard-interactive", result)

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
        name = AUTH_SUCCESS if outcome == "success" else AUTH_FAILURE
        if self._ctx.bus.listening(name):
            meta: Meta = {"method": method, "username": username, "peer": str(self.peer)}
            if reason is not None:
                meta["reason"] = reason
            duration = time.monotonic_ns() - started if started else 0
            self._ctx.bus.execute(name, {"duration": duration}, meta, self._pending)

    async def _accept(
        self,
        username: str,
        method: str,
        key_fingerprint: str | None,
        check: Check[C],
        credential: C,
        *,
        certificate: CertificateInfo | None = None,
        timeout: float | None = None,
    ) -> bool:
        started = time.monotonic_ns()
        limit = self._ctx.config.auth_timeout if timeout is None else timeout
        answer = asyncio.wait_for(check(username, credential, self.peer), limit)
        accepted, reason = await self._verdict(username, method, key_fingerprint, certificate,
                                               answer)  # fmt: skip
        if accepted:
            self._auth_event("success", method, username, started)
        else:
            self._pending = None
            self._auth_event("failure", method, username, started, reason)
        return accepted

    async def _verdict(
        self, username: str, method: str, key_fingerprint: str | None,
        certificate: CertificateInfo | None, answer: Awaitable[object],
    ) -> tuple[bool, str]:  # fmt: skip
        """Whether the authenticator's ``answer`` lets the login in, and why not."""
        try:
            attributes = await answer
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
        usage; the reason if the login is refused.
        """
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
