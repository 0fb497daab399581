"""ServerConfig: what a server is asked to do, validated before anything starts."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from ._bandwidth import Bandwidth
from ._digests import check_algorithms
from ._ingest import MakeInspector
from ._memory import DEFAULT_UPLOAD_MEMORY
from ._policy import Policy
from ._session import check_max_file_size
from ._sizes import positive_number
from ._throttle import LoginLimits
from ._upload import Upload
from .auth import Authenticator, as_authenticator
from .backend import check_backend
from .errors import ConfigError
from .state import MemoryState, StateStore
from .telemetry import TelemetryBus

__all__ = [
    "CIPHERS",
    "DEFAULT_CIPHERS",
    "DEFAULT_KEX",
    "DEFAULT_MACS",
    "ServerConfig",
    "load_host_keys",
    "state_from_url",
]

HOST_KEY_GLOB = "ssh_host_*_key"

#: The ciphers a server may offer: modern, authenticated ones only.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
    "chacha20-poly1305@openssh.com",
)

#: What a server offers unless told otherwise: AES only. The client picks among what the
#: server offers, and OpenSSH's first choice is chacha20-poly1305, which in asyncssh costs
#: three cipher set-ups per packet: offering it makes downloads through OpenSSH about 40%
#: slower (see benchmarks/). AES runs on the CPU's AES instructions; GCM, and CTR with a
#: SHA-2 or UMAC MAC, are both sound. Pass ``ciphers=CIPHERS`` to offer chacha20 as well.
DEFAULT_CIPHERS = CIPHERS[:5]


#: Key exchanges offered unless ``legacy_algorithms`` is set: the post-quantum hybrid
#: ML-KEM/X25519 first, then X25519 alone for clients without ML-KEM (ssh-audit warns that
#: these two give no post-quantum protection; they are kept for every client older than
#: OpenSSH 9.9). No NIST curve (ssh-audit
#: fails them), no finite-field Diffie-Hellman (each handshake costs the server a modular
#: exponentiation: the DHEat denial of service). OpenSSH since 6.5, PuTTY since 0.68,
#: paramiko since 2.2, libssh2 since 1.9, Go's x/crypto (rclone, pkg/sftp) and current
#: JSch forks all have curve25519.
DEFAULT_KEX = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)

#: MACs offered unless ``legacy_algorithms`` is set: encrypt-then-MAC with 128-bit or
#: longer tags only (GCM ciphers need none).
DEFAULT_MACS = (
    "umac-128-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
)

#: What ``legacy_macs`` adds: SHA-2 MACs over the plaintext (MAC-then-encrypt), for
#: libssh2 before 1.11 (curl and PHP's ssh2 on Debian 12, Ubuntu 22.04), which has no etm
#: MAC and no GCM cipher.
LEGACY_MACS = ("hmac-sha2-256", "hmac-sha2-512")

#: What ``legacy_sha1`` adds to the defaults above.
SHA1_KEX = ("diffie-hellman-group14-sha1",)
SHA1_MACS = ("hmac-sha1-etm@openssh.com", "hmac-sha1")


def algorithm_options(
    *, legacy: bool, legacy_sha1: bool, legacy_macs: bool = False
) -> dict[str, list[str] | str]:
    """The asyncssh options choosing key exchanges, MACs, compression and the host
    signature algorithms advertised.

    Args:
        legacy: asyncssh's whole default lists (NIST curves, finite-field DH, non-etm and
            64-bit MACs, zlib) for old clients, still without SHA-1 unless ``legacy_sha1``.
        legacy_sha1: Also the SHA-1 key exchange, MACs and ``ssh-rsa`` signatures.
        legacy_macs: Also the non-etm SHA-2 MACs (:data:`LEGACY_MACS`).
    """
    if legacy:
        return {} if legacy_sha1 else dict(WITHOUT_SHA1)
    return {
        **({} if legacy_sha1 else {"signature_algs": WITHOUT_SHA1["signature_algs"]}),
        "kex_algs": [*DEFAULT_KEX, *(SHA1_KEX if legacy_sha1 else ())],
        "mac_algs": [
            *DEFAULT_MACS,
            *(LEGACY_MACS if legacy_macs else ()),
            *(SHA1_MACS if legacy_sha1 else ()),
        ],
        "compression_algs": ["none"],
    }


#: What is taken out of asyncssh's defaults unless ``legacy_sha1`` is set, in asyncssh's
#: OpenSSH-style syntax ("-" removes the matching names). ``signature_algs`` only changes
#: the ``server-sig-algs`` list sent to clients: asyncssh's server does not check which
#: algorithm a client key signed with, so client RSA keys may still use ``ssh-rsa``.
WITHOUT_SHA1 = {
    "kex_algs": "-*-sha1",
    "mac_algs": "-hmac-sha1*",
    "signature_algs": "-ssh-rsa",
}


def host_key_pairs(
    keys: Sequence[asyncssh.SSHKey], *, legacy_sha1: bool
) -> list[asyncssh.SSHKeyPair]:
    """The host keys as asyncssh key pairs; RSA keys sign with SHA-2 only unless legacy."""
    pairs = list(asyncssh.load_keypairs(list(keys)))
    if not legacy_sha1:
        for pair in pairs:
            pair.host_key_algorithms = [a for a in pair.host_key_algorithms if a != b"ssh-rsa"]
    return pairs


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything a :class:`~sftpd.Server` needs, checked in ``__post_init__``.

    Attributes:
        backend: The storage; any object implementing :class:`sftpd.backend.Backend`.
        auth: An authenticator, or a ``{"user": "password"}`` mapping for static users.
        system_dir: Directory holding the host keys (``ssh_host_*_key`` files, as
            ``ssh-keygen`` writes them); every private key in it is served.
        host_keys: Host keys given directly (paths or asyncssh keys), instead of or as
            well as ``system_dir``.
        host: Address to listen on.
        port: TCP port; 0 picks a free one (read it from ``Server.port``).
        max_sessions: Most authenticated sessions at once; more are refused at login.
        open_timeout: Seconds a file open may take at the backend.
        close_timeout: Seconds committing an upload at close may take.
        shutdown_grace: Seconds a graceful stop waits for open files and requests.
        login_timeout: Seconds a client has to authenticate before it is dropped.
        auth_timeout: Seconds one authenticator call may take; a slower one rejects
            that attempt.
        idle_timeout: Seconds without a request after which a session is disconnected
            (``None``: never).
        login_limits: Throttling of failed logins (:class:`LoginLimits`).
        telemetry: The event bus to emit to (default: the process-wide
            :data:`sftpd.telemetry.bus`).
        on_upload: Called (sync or async) with an :class:`~sftpd.Upload` after each upload
            is stored, in the background; for post-upload processing: the file is stored
            first, then handed on.
        server_version: Text after ``SSH-2.0-`` in the server's greeting.
        ciphers: The SSH ciphers offered, from :data:`CIPHERS` (default
            :data:`DEFAULT_CIPHERS`: AES in GCM and CTR modes; see there why not chacha20).
        reuse_port: Listen with ``SO_REUSEPORT``, so several processes can serve one port
            (``sftpd serve --workers N`` sets it).
        legacy_sha1: Also offer what rests on SHA-1: ``diffie-hellman-group14-sha1`` key
            exchange, ``hmac-sha1`` MACs and ``ssh-rsa`` host key signatures, for clients
            that support nothing newer. Off by default, as in OpenSSH since 8.8; every
            client the tests drive works without it. (Client keys signing with
            ``ssh-rsa`` are accepted either way: asyncssh does not let a server refuse
            them.)
        legacy_macs: Also offer ``hmac-sha2-256`` and ``hmac-sha2-512`` without
            encrypt-then-MAC (ssh-audit warns), for libssh2 before 1.11: curl and PHP's
            ssh2 on Debian 12 and Ubuntu 22.04. Off by default.
        legacy_algorithms: Also offer what old clients need and ssh-audit flags: NIST
            curve (``ecdh-sha2-nistp*``) and finite-field Diffie-Hellman key exchanges,
            non-etm and 64-bit-tag MACs, zlib compression. JSch 0.1.x (Debian's
            libjsch-java) needs it, and an ECDSA host key (``sftpd serve --legacy``
            generates one). Off by default.
        proxy_protocol: Every connection starts with a PROXY protocol header (v1 or v2)
            from a TCP load balancer, naming the client's address; that address is then
            the session's peer (login throttling, audit, authenticators). Connections
            without one are dropped. Only the balancer must be able to reach the port.
        max_unauthenticated: Connections that have not logged in yet, at most (as
            OpenSSH's MaxStartups): more are dropped at once. Each costs a key exchange
            and is held until ``login_timeout``; this keeps a flood of idle or slow
            connections from tying the server up.
        connection_rate: New connections accepted per second from one client address, after
            a burst of ``connection_burst`` (None: no limit). Those beyond are closed before
            the SSH banner, as OpenSSH's MaxStartups and PerSourcePenalties do, so a flood
            of handshakes from one address costs nothing; ssh-audit's DHEat rate test
            passes. Raise it for many clients behind one NAT address (without the PROXY
            protocol every client of a load balancer is the balancer).
        connection_burst: New connections from one address allowed at once before
            ``connection_rate`` applies.
        max_unauthenticated_per_address: The same, from one client address (None: no
            such limit), so one address cannot take every slot. Behind a load balancer,
            turn on ``proxy_protocol`` or every client shares the balancer's address.
        max_open_files: Files and directories one session may have open at once, over
            all its SFTP channels; more opens fail ("too many open files"), and
            ``limits@openssh.com`` tells clients this number. Each open upload holds up
            to one part in memory (S3: ``part_size * (upload_concurrency + 1)``), so this
            bounds a session's memory. Clients open one file per transfer; parallel ones
            a few.
        upload_memory: Bytes of upload data the server keeps in memory at most, over all
            sessions (None: no limit); per worker process. Counted: S3 parts being filled
            and in flight, the in-memory start of spooled uploads, batches waiting for the
            thread pool. A spool that would go beyond spills to a temporary file early; an
            S3 upload waits before its next part (its client is answered later), so
            uploads slow down rather than fail, and one that needs more than the whole
            budget still runs once it has the budget to itself. Give each S3 upload you
            want at full speed ``part_size * (upload_concurrency + 1)``.
        trusted_user_ca_keys: Files of CA public keys (one per line, as OpenSSH's
            ``TrustedUserCAKeys``) or key objects: user certificates they sign may log in,
            for users the authenticator accepts (``authorize_certificate``). A
            certificate must name the user as a principal, or one of
            ``authorized_principals[user]``.
        authorized_principals: ``{"user": ["principal", ...]}``: the principals whose
            certificates may log in as that user (as ``AuthorizedPrincipalsFile``);
            users not listed accept their own name only.
        revoked_keys: A file of public keys (as OpenSSH's ``RevokedKeys``) no login may
            use: plain keys, certified keys and CA keys alike. KRLs are not read.
        policy: Consulted before each operation (open for reading or writing, list,
            remove, rename, mkdir, rmdir, setstat, symlink, link) with a
            :class:`sftpd.Operation`, sync or async; it refuses by returning False or a
            reason (the client sees it), allows by returning None or True.
        inspector: Called at each open for writing with a :class:`sftpd.Operation`
            (sync or async); it returns None (this upload is not inspected) or an object
            with ``feed(data)``, which sees every byte in order as it streams in, and
            ``verdict()`` at close: None or True publish the upload, False or a reason
            refuse it (nothing is stored, the client's close fails with the reason).
            Inspected uploads are written whole: appends and resumes are refused.
        upload_digests: Digests computed as each upload streams in (no second read) and
            kept with the file where the backend can (S3 metadata, local extended
            attributes, memory): ``check-file`` and rclone's hash commands answer from
            them. From md5, sha1, sha224, sha256, sha384, sha512; empty: none.
        hash_commands: Answer the exec commands rclone's sftp backend runs for hashes
            (``md5sum PATH``, ``sha1sum PATH`` and its shell probe), parsed strictly and
            computed by sftpd itself: no process is ever started, and every other exec
            or shell request is still refused. Off by default; with it, ``rclone
            md5sum``, ``sha1sum`` and ``check`` compare by hash.
        authentication_methods: Chains of methods a login must pass, in order, as
            OpenSSH's ``AuthenticationMethods``: ``["publickey,password",
            "publickey,keyboard-interactive"]`` asks for a key and then a password or
            keyboard-interactive (a TOTP code, say). Each step but the last answers with
            partial success. Empty: any one method the authenticator accepts.
        max_channels: SFTP channels one connection may open at once (OpenSSH's
            MaxSessions is 10); more are refused.
        max_requests_per_channel: SFTP requests of one channel served at the same time;
            the next waits (the client is read no further) until one is answered.
            Clients keep up to 64 requests outstanding (OpenSSH's ``sftp -R``).
        max_requests_per_session: The same over all channels of one connection.
        max_file_size: The largest file, in bytes, a session may upload (None: no
            limit); an authenticator's ``max_file_size`` attribute overrides it per
            session. A write past it fails ("quota exceeded") and the upload stores
            nothing.
        state: Where what a fleet must agree on is kept: failed logins and bans, session
            leases, quota usage, bandwidth buckets. ``"memory"`` (the default): in this
            process. A Redis URL (``"redis://host:6379/0"``) or a
            :class:`~sftpd.state.StateStore` shares it between workers and hosts.
        state_ttl: Seconds a session lease or quota reservation outlives the process
            holding it: a process that dies stops counting against caps and quotas after
            this. Renewed every third of it.
        max_sessions_per_user: Sessions one user may have open at once, over every
            process sharing ``state`` (None: no limit); an authenticator's
            ``max_sessions`` attribute overrides it per user.
        max_sessions_total: Sessions open at once over every process sharing ``state``
            (None: no limit); ``max_sessions`` still bounds each process.
        bandwidth: Upload and download rates per session, per user and per server
            (:class:`sftpd.Bandwidth`); reads and writes are paced, never refused.
        proxy_from: With ``proxy_protocol``, the addresses or networks (``"10.0.0.0/8"``)
            the balancer connects from; connections from anywhere else are dropped before
            their header is read, so a client reaching the port directly cannot claim an
            address. Empty: from anywhere.
    """

    backend: object
    auth: Authenticator | Mapping[str, str]
    system_dir: str | os.PathLike[str] | None = None
    host_keys: Sequence[str | os.PathLike[str] | asyncssh.SSHKey] = ()
    host: str = "127.0.0.1"
    port: int = 2222
    max_sessions: int = 10
    open_timeout: float = 30.0
    close_timeout: float = 30.0
    shutdown_grace: float = 10.0
    login_timeout: float = 120.0
    auth_timeout: float = 10.0
    idle_timeout: float | None = 900.0
    login_limits: LoginLimits = field(default_factory=LoginLimits)
    on_upload: Callable[[Upload], Awaitable[None] | None] | None = None
    telemetry: TelemetryBus | None = None
    server_version: str = "sftpd"
    ciphers: Sequence[str] = DEFAULT_CIPHERS
    reuse_port: bool = False
    legacy_sha1: bool = False
    legacy_macs: bool = False
    legacy_algorithms: bool = False
    proxy_protocol: bool = False
    proxy_from: Sequence[str] = ()
    max_unauthenticated: int = 100
    max_unauthenticated_per_address: int | None = 32
    connection_rate: float | None = 5.0
    connection_burst: int = 20
    max_open_files: int = 32
    max_file_size: int | None = None
    upload_memory: int | None = DEFAULT_UPLOAD_MEMORY
    trusted_user_ca_keys: Sequence[str | os.PathLike[str] | asyncssh.SSHKey] = ()
    authorized_principals: Mapping[str, Sequence[str]] | None = None
    revoked_keys: str | os.PathLike[str] | None = None
    policy: Policy | None = None
    inspector: MakeInspector | None = None
    upload_digests: Sequence[str] = ("md5", "sha256")
    hash_commands: bool = False
    authentication_methods: Sequence[str] = ()
    max_channels: int = 10
    max_requests_per_channel: int = 64
    max_requests_per_session: int = 256
    state: StateStore | str = "memory"  # a URL becomes its StateStore at construction
    state_ttl: float = 60.0
    max_sessions_per_user: int | None = None
    max_sessions_total: int | None = None
    bandwidth: Bandwidth = field(default_factory=Bandwidth)
    authenticator: Authenticator = field(init=False, repr=False)
    method_chains: tuple[tuple[str, ...], ...] = field(init=False, repr=False)

    @property
    def store(self) -> StateStore:
        """The state store (``state`` after construction, which turned a URL into one)."""
        assert not isinstance(self.state, str)  # __post_init__ replaced it
        return self.state

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or isinstance(self.port, bool):
            raise ConfigError(f"port must be an integer, got {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("host must be an address to listen on, such as '127.0.0.1'")
        counts = ["max_sessions", "max_open_files", "max_unauthenticated", "max_channels"]
        counts += ["max_requests_per_channel", "max_requests_per_session"]
        if self.max_unauthenticated_per_address is not None:
            counts.append("max_unauthenticated_per_address")
        counts.append("connection_burst")
        counts += [name for name in ("max_sessions_per_user", "max_sessions_total")
                   if getattr(self, name) is not None]  # fmt: skip
        if self.upload_memory is not None:
            counts.append("upload_memory")
        if self.connection_rate is not None and not positive_number(self.connection_rate):
            raise ConfigError(
                "connection_rate must be a positive number of connections per second, "
                f"or None for no limit; got {self.connection_rate!r}"
            )
        for name in counts:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        timeouts = ["open_timeout", "close_timeout", "shutdown_grace", "login_timeout"]
        timeouts += ["auth_timeout", "state_ttl"]
        timeouts += ["idle_timeout"] if self.idle_timeout is not None else []
        for name in timeouts:
            value = getattr(self, name)
            if not positive_number(value):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(self.ciphers, str) or not self.ciphers:
            raise ConfigError("ciphers must be a non-empty list of names from sftpd.CIPHERS")
        unknown = [name for name in self.ciphers if name not in CIPHERS]
        if unknown:
            raise ConfigError(
                f"unsupported cipher(s) {', '.join(map(str, unknown))}; choose from "
                f"{', '.join(CIPHERS)}"
            )
        object.__setattr__(self, "ciphers", tuple(self.ciphers))
        flags = ("legacy_sha1", "legacy_macs", "legacy_algorithms", "proxy_protocol", "reuse_port",
                 "hash_commands")  # fmt: skip
        for name in flags:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.proxy_from, str):
            raise ConfigError("proxy_from must be a list of addresses or networks")
        if self.proxy_from and not self.proxy_protocol:
            raise ConfigError("proxy_from needs proxy_protocol=True")
        for network in self.proxy_from:
            try:
                ipaddress.ip_network(network, strict=False)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"proxy_from: {network!r} is not an address or network such as 10.0.0.0/8"
                ) from exc
        object.__setattr__(self, "proxy_from", tuple(self.proxy_from))
        check_max_file_size(self.max_file_size)
        if isinstance(self.trusted_user_ca_keys, (str, os.PathLike)):
            object.__setattr__(self, "trusted_user_ca_keys", (self.trusted_user_ca_keys,))
        principals = self.authorized_principals
        if principals is not None and (
            not isinstance(principals, Mapping)
            or any(isinstance(v, str) or not all(isinstance(p, str) for p in v)
                   for v in principals.values())
        ):  # fmt: skip
            raise ConfigError('authorized_principals must map users to lists of principals, '
                              'e.g. {"alice": ["alice", "ops"]}')  # fmt: skip
        object.__setattr__(self, "method_chains", _method_chains(self.authentication_methods))
        if isinstance(self.state, str):
            object.__setattr__(self, "state", state_from_url(self.state))
        elif not isinstance(self.state, StateStore):
            raise ConfigError("state must be 'memory', a Redis URL or a sftpd.state.StateStore")
        if not isinstance(self.bandwidth, Bandwidth):
            raise ConfigError("bandwidth must be a sftpd.Bandwidth")
        if not isinstance(self.login_limits, LoginLimits):
            raise ConfigError("login_limits must be a sftpd.LoginLimits")
        try:
            object.__setattr__(self, "upload_digests", check_algorithms(self.upload_digests))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.inspector is not None and not callable(self.inspector):
            raise ConfigError("inspector must be a function taking a sftpd.Operation")
        if self.policy is not None and not callable(self.policy):
            raise ConfigError("policy must be a function taking a sftpd.Operation")
        if self.on_upload is not None and not callable(self.on_upload):
            raise ConfigError("on_upload must be a function taking a sftpd.Upload")
        if self.backend is None:
            raise ConfigError("backend is required, e.g. backend=sftpd.MemoryBackend()")
        if isinstance(self.backend, type):
            raise ConfigError(
                f"backend must be an instance, not the class {self.backend.__name__}; "
                f"write backend={self.backend.__name__}()"
            )
        check_backend(self.backend)
        object.__setattr__(self, "authenticator", as_authenticator(self.auth))
        if self.system_dir is None and not self.host_keys:
            raise ConfigError(
                "no host keys: pass system_dir='DIR' with ssh_host_*_key files "
                "(ssh-keygen -t ed25519 -N '' -f DIR/ssh_host_ed25519_key)"
            )


AUTH_METHODS = ("publickey", "password", "keyboard-interactive")


def state_from_url(url: str, *, prefix: str = "sftpd:") -> StateStore:
    """A store from ``"memory"`` or a ``redis://`` / ``rediss://`` / ``unix://`` URL.

    Raises:
        ConfigError: the URL is neither, or Redis support is not installed.
    """
    if url == "memory":
        return MemoryState()
    if url.split(":", 1)[0] in ("redis", "rediss", "unix"):
        try:
            from .redis_state import RedisState
        except ImportError as exc:  # the extra is not installed: say which
            raise ConfigError(str(exc)) from exc
        return RedisState(url, prefix=prefix)
    raise ConfigError(
        f"state {url!r} must be 'memory' or a Redis URL such as redis://localhost:6379/0"
    )


def _method_chains(chains: Sequence[str] | Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """``["publickey,password"]`` as ``(("publickey", "password"),)``, checked."""
    if isinstance(chains, str):
        chains = [chains]
    parsed: list[tuple[str, ...]] = []
    for chain in chains:
        steps = tuple(chain.split(",") if isinstance(chain, str) else chain)
        unknown = [step for step in steps if step not in AUTH_METHODS]
        if not steps or unknown:
            raise ConfigError(
                f"authentication_methods: {chain!r} must be methods joined by commas, from "
                f"{', '.join(AUTH_METHODS)}; e.g. 'publickey,password'"
            )
        parsed.append(steps)
    return tuple(parsed)


def load_host_keys(config: ServerConfig) -> list[asyncssh.SSHKey]:
    """Read every host private key the configuration names.

    Raises:
        ConfigError: the directory is missing or holds no keys, or a key cannot be read;
            the message names the path and says how to fix it.
    """
    keys: list[asyncssh.SSHKey] = []
    if config.system_dir is not None:
        directory = Path(config.system_dir)
        if not directory.exists():
            raise ConfigError(
                f"host key directory {directory} does not exist; create it with "
                f"ssh-keygen -t ed25519 -N '' -f {directory}/ssh_host_ed25519_key"
            )
        if not directory.is_dir():
            raise ConfigError(f"system_dir {directory} is not a directory")
        files = sorted(p for p in directory.glob(HOST_KEY_GLOB) if p.is_file())
        if not files:
            raise ConfigError(
                f"host key directory {directory} has no ssh_host_*_key files; create one with "
                f"ssh-keygen -t ed25519 -N '' -f {directory}/ssh_host_ed25519_key"
            )
        keys.extend(_read_key(file) for file in files)
    keys.extend(
        key if isinstance(key, asyncssh.SSHKey) else _read_key(Path(key))
        for key in config.host_keys
    )
    return keys


def _read_key(path: Path) -> asyncssh.SSHKey:
    try:
        return asyncssh.read_private_key(str(path))
    except (OSError, asyncssh.KeyImportError) as exc:
        raise ConfigError(
            f"cannot read host key {path}: {exc}; it must be an unencrypted OpenSSH or "
            "PEM private key (rsa, ecdsa or ed25519)"
        ) from exc
