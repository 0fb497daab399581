"""``sftpd serve``: run a server from the command line; ``sftpd stdio``: serve under sshd."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.panel import Panel

from . import _sizes as sizes
from ._admin import AdminServer
from ._bandwidth import Bandwidth
from ._binding import bind_backend, start_backend, stop_backend
from ._config import HOST_KEY_GLOB, ServerConfig, load_host_keys, state_from_url
from ._config_file import FileConfig, UserTable, load_config_file
from ._quota import Quota, count_usage
from ._server import Server
from ._session import Peer, Session
from ._shared import SharedState
from ._throttle import LoginLimits
from ._version import __version__
from ._workers import Supervision, Worker, supervise
from .audit import AuditLog
from .audit import reopen_all as reopen_audit_logs
from .auth import fingerprint
from .backends.local import LocalBackend
from .backends.memory import MemoryBackend
from .errors import ConfigError
from .state import MemoryState, StateUnavailable

__all__ = ["main"]

DEFAULT_KEY_DIR = Path(".sftpd") / "host_keys"

console = Console(stderr=True)
log = logging.getLogger("sftpd")


def parse_size(text: str, option: str = "--max-file-size") -> int:
    """``"100M"`` -> 104857600: bytes, or a number with K, M, G or T (powers of 1024)."""
    try:
        return sizes.parse_size(text, option)
    except ConfigError:
        raise click.BadParameter(
            f"{text!r} is not a size such as 1048576, 512K, 100M or 2G",
            param_hint=option,
        ) from None


def _parse_object_args(values: tuple[str, ...]) -> dict[str, Any]:
    """``--s3-object-arg`` values: ``KEY=VALUE``, ``Metadata.NAME=VALUE``, booleans as words."""
    args: dict[str, Any] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key or not text:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--s3-object-arg")
        if key.startswith("Metadata."):
            args.setdefault("Metadata", {})[key.removeprefix("Metadata.")] = text
        elif key == "BucketKeyEnabled":
            if text.lower() not in ("true", "false"):
                raise click.BadParameter(
                    "BucketKeyEnabled is true or false", param_hint="--s3-object-arg"
                )
            args[key] = text.lower() == "true"
        else:
            args[key] = text
    return args


def _merge_object_args(base: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The config file's object_args with the flags' over them (metadata name by name)."""
    merged = {**base, **flags}
    if "Metadata" in base and "Metadata" in flags:
        merged["Metadata"] = {**base["Metadata"], **flags["Metadata"]}
    return merged


def _parse_user(value: str) -> tuple[str, str]:
    name, sep, password = value.partition(":")
    if not sep or not name or not password:
        raise click.BadParameter(f"{value!r} is not NAME:PASSWORD", param_hint="--user")
    return name, password


def make_backend(spec: str, s3_options: dict[str, Any] | None = None) -> Any:
    """Build a backend from its command-line form (``memory``, ``local:/path``, ``s3://...``).

    ``s3_options`` are further :class:`~sftpd.backends.s3.S3Backend` options (the config
    file's ``[s3]`` section, ``--s3-object-arg``); they need an ``s3://`` backend.
    """
    kind, _, rest = spec.partition(":")
    kind = kind.lower()
    if s3_options and kind != "s3":
        raise ConfigError(
            "[s3] settings and --s3-object-arg are for the S3 backend; "
            "use --backend s3://BUCKET/PREFIX (or backend = 's3://...' in [server])"
        )
    if kind == "memory" and not rest:
        return MemoryBackend()
    if kind == "local":
        if not rest:
            raise click.BadParameter(
                "local needs a folder: local:/srv/sftp", param_hint="--backend"
            )
        return LocalBackend(rest)
    if kind == "s3":
        bucket, _, prefix = rest.removeprefix("//").partition("/")
        if not bucket:
            raise click.BadParameter(
                "s3 needs a bucket: s3://BUCKET/PREFIX", param_hint="--backend"
            )
        from .backends.s3 import S3Backend

        return S3Backend(bucket, prefix=prefix, **(s3_options or {}))
    raise click.BadParameter(
        f"unknown backend {spec!r}; choose: memory, local:/path, s3://BUCKET/PREFIX",
        param_hint="--backend",
    )


#: The host keys generated for a directory that has none: ed25519 for current clients, RSA
#: 3072 for the oldest (signing with SHA-2 where asked). ECDSA (NIST P-256, which ssh-audit
#: fails) only with ``--legacy``: JSch 0.1.x, still common in Java systems, knows neither
#: ed25519 nor SHA-2 RSA signatures.
GENERATED_HOST_KEYS: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("ed25519", "ssh-ed25519", {}),
    ("rsa", "ssh-rsa", {"key_size": 3072}),
)
LEGACY_HOST_KEYS: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("ecdsa", "ecdsa-sha2-nistp256", {}),
)


def ensure_host_keys(directory: Path, *, legacy: bool = False) -> list[Path]:
    """Create ed25519 and RSA host keys (and ECDSA if ``legacy``) in ``directory``, unless
    it has a key already.

    Returns:
        The new keys' paths; empty when the directory had a key (it is left as it is).
    """
    if directory.is_dir() and any(directory.glob(HOST_KEY_GLOB)):
        return []
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = []
    for name, algorithm, options in GENERATED_HOST_KEYS + (LEGACY_HOST_KEYS if legacy else ()):
        path = directory / f"ssh_host_{name}_key"
        key = asyncssh.generate_private_key(algorithm, comment="sftpd host key", **options)
        key.write_private_key(str(path))
        os.chmod(path, 0o600)
        key.write_public_key(str(path) + ".pub")
        created.append(path)
    return created


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sftpd")
def main() -> None:
    """sftpd: an embeddable SFTP server with pluggable storage."""


@main.group("s3")
def s3_group() -> None:
    """Maintenance of a bucket sftpd serves."""


@s3_group.command("cleanup")
@click.argument("target", metavar="s3://BUCKET/PREFIX")
@click.option("--older-than", default=86400.0, show_default=True, type=click.FloatRange(0),
              help="Abort multipart uploads under the prefix started more than this many "
                   "seconds ago.")  # fmt: skip
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file whose [s3] section (endpoint_url...) applies.")  # fmt: skip
def s3_cleanup(target: str, older_than: float, config_file: Path | None) -> None:
    """Abort the multipart uploads nobody finished (what `sftpd serve` does at start-up and
    hourly), once, and list them. Uploads younger than --older-than, a live server's
    included, are left alone."""
    try:
        if not target.startswith("s3://"):
            raise ConfigError(f"{target!r} is not s3://BUCKET/PREFIX")
        loaded = load_config_file(config_file) if config_file is not None else None
        backend = make_backend(target, loaded.s3 if loaded else {})
        from .backends.s3 import S3Backend

        assert isinstance(backend, S3Backend)

        async def clean() -> list[str]:
            try:
                return await backend.abort_stale_uploads(older_than)
            finally:
                await backend.aclose()

        try:
            aborted = asyncio.run(clean())
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"cleaning {target} failed: {exc}") from exc
    except ConfigError as exc:
        _print_error(exc)
        sys.exit(2)
    for key in aborted:
        console.print(f"aborted  {key}")
    console.print(f"{len(aborted)} stale multipart upload(s) aborted")


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file with [server] options and [users.NAME] sections; "
                   "command-line options win over it.")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=2222, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0 picks a free one).")  # fmt: skip
@click.option("--user", "users", multiple=True, metavar="NAME:PASSWORD",
              help="A user that may log in with a password (repeatable). "
                   "Default: dev:dev when no user is given anywhere.")  # fmt: skip
@click.option("--authorized-keys", "key_files", multiple=True, metavar="NAME:FILE",
              help="An OpenSSH authorized_keys file whose keys may log in as NAME "
                   "(repeatable).")  # fmt: skip
@click.option("--host-key-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help=f"Directory of ssh_host_*_key files. Default: {DEFAULT_KEY_DIR}, where "
                   "keys are generated on first run and reused.")  # fmt: skip
@click.option("--generate-host-key", is_flag=True,
              help="Generate ed25519, ECDSA and RSA host keys in --host-key-dir if it has "
                   "no key (as ssh-keygen -A).")  # fmt: skip
@click.option("--backend", "backend_spec", default="memory", show_default=True,
              metavar="SPEC",
              help="Storage: 'memory', 'local:/path' to serve a folder, or "
                   "'s3://BUCKET/PREFIX' (standard AWS environment and AWS_ENDPOINT_URL; "
                   "needs pysftpd[s3]).")  # fmt: skip
@click.option("--s3-object-arg", "object_args", multiple=True, metavar="KEY=VALUE",
              help="With an s3:// backend: how every object is stored (repeatable), e.g. "
                   "ServerSideEncryption=aws:kms, SSEKMSKeyId=..., StorageClass=STANDARD_IA, "
                   "ACL=bucket-owner-full-control, Tagging=k=v, Metadata.NAME=VALUE.")  # fmt: skip
@click.option("--max-file-size", type=str, default=None, metavar="SIZE",
              help="Largest file a session may upload, in bytes or with a K, M, G or T "
                   "suffix (powers of 1024); a larger upload fails and stores nothing. "
                   "Default: no limit.")  # fmt: skip
@click.option("--upload-memory", type=str, default="512M", show_default=True, metavar="SIZE",
              help="Upload bytes held in memory at most, over all sessions (per worker): "
                   "S3 parts, spooled and batched uploads. Beyond it uploads wait or "
                   "spill to temporary files; none fails. 0: no limit.")  # fmt: skip
@click.option("--max-unauthenticated", default=100, show_default=True,
              type=click.IntRange(1),
              help="Connections not logged in yet, at most (as OpenSSH's MaxStartups); "
                   "more are dropped.")  # fmt: skip
@click.option("--max-unauthenticated-per-address", default=32, show_default=True,
              type=click.IntRange(1),
              help="The same, from one client address.")  # fmt: skip
@click.option("--connection-rate", default=5.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="New connections per second from one address, after --connection-burst; "
                   "more are closed before the SSH banner (DHEat protection).")  # fmt: skip
@click.option("--connection-burst", default=20, show_default=True, type=click.IntRange(1),
              help="New connections from one address allowed at once.")  # fmt: skip
@click.option("--max-open-files", default=32, show_default=True, type=click.IntRange(1),
              help="Files and directories one session may have open at once.")  # fmt: skip
@click.option("--max-channels", default=10, show_default=True, type=click.IntRange(1),
              help="SFTP channels one connection may open at once.")  # fmt: skip
@click.option("--max-requests-per-channel", default=64, show_default=True,
              type=click.IntRange(1),
              help="SFTP requests of one channel served at once.")  # fmt: skip
@click.option("--max-requests-per-session", default=256, show_default=True,
              type=click.IntRange(1),
              help="SFTP requests of one connection served at once.")  # fmt: skip
@click.option("--max-sessions", default=10, show_default=True, type=click.IntRange(1),
              help="Most sessions at once; more are refused at login.")  # fmt: skip
@click.option("--open-timeout", default=30.0, show_default=True, type=click.FloatRange(0.001),
              help="Seconds a file open may take.")  # fmt: skip
@click.option("--close-timeout", default=30.0, show_default=True, type=click.FloatRange(0.001),
              help="Seconds storing an upload at close may take.")  # fmt: skip
@click.option("--shutdown-grace", default=10.0, show_default=True,
              type=click.FloatRange(0.001),
              help="Seconds a stop waits for open files before disconnecting.")  # fmt: skip
@click.option("--idle-timeout", default=900.0, show_default=True, type=click.FloatRange(0.001),
              help="Seconds without requests after which a session is closed.")  # fmt: skip
@click.option("--login-timeout", default=120.0, show_default=True,
              type=click.FloatRange(0.001),
              help="Seconds a client has to log in.")  # fmt: skip
@click.option("--ciphers", default=None, metavar="LIST",
              help="Comma-separated SSH ciphers to offer. Default: AES-GCM and AES-CTR; "
                   "add chacha20-poly1305@openssh.com to offer it too (slower here).")  # fmt: skip
@click.option("--legacy-sha1", is_flag=True,
              help="Also offer SHA-1 key exchange, hmac-sha1 and ssh-rsa host signatures, "
                   "for clients with nothing newer (off by default, as in OpenSSH).")  # fmt: skip
@click.option("--legacy-macs", is_flag=True,
              help="Also offer hmac-sha2-256/512 without encrypt-then-MAC: for libssh2 "
                   "before 1.11 (curl and PHP ssh2 on Debian 12, Ubuntu 22.04).")  # fmt: skip
@click.option("--legacy", "legacy_algorithms", is_flag=True,
              help="Also offer NIST-curve and Diffie-Hellman key exchanges, non-etm MACs and "
                   "zlib, and generate an ECDSA host key: for JSch 0.1.x and other old "
                   "clients (ssh-audit flags them; off by default).")  # fmt: skip
@click.option("--upload-digests", default="md5,sha256", show_default=True, metavar="LIST",
              help="Digests computed as uploads stream in and kept with the files, for "
                   "check-file and --hash-commands (none: off).")  # fmt: skip
@click.option("--hash-commands", is_flag=True,
              help="Answer rclone's md5sum/sha1sum exec commands (computed by sftpd, no "
                   "shell or process), so rclone check compares hashes.")  # fmt: skip
@click.option("--authentication-methods", multiple=True, metavar="CHAIN",
              help="Methods a login must pass in order, as OpenSSH's "
                   "AuthenticationMethods, e.g. publickey,password. Repeat for "
                   "alternatives. Default: any one.")  # fmt: skip
@click.option("--trusted-user-ca-keys", multiple=True, metavar="FILE",
              help="CA public keys (one per line, as OpenSSH's TrustedUserCAKeys) whose "
                   "user certificates may log in as a user they name. Repeatable.")  # fmt: skip
@click.option("--revoked-keys", default=None, metavar="FILE",
              help="Public keys no login may use, plain, certified or CA (as OpenSSH's "
                   "RevokedKeys; not a KRL).")  # fmt: skip
@click.option("--proxy-protocol", is_flag=True,
              help="Behind a TCP load balancer that sends PROXY protocol headers (v1 or v2): "
                   "take each client's address from them. Connections without one are "
                   "dropped.")  # fmt: skip
@click.option("--proxy-from", "proxy_from", multiple=True, metavar="CIDR",
              help="With --proxy-protocol: an address or network the balancer connects "
                   "from (repeatable); connections from elsewhere are dropped.")  # fmt: skip
@click.option("--admin-port", "--metrics-port", "admin_port", type=click.IntRange(0, 65535),
              default=None,
              help="Serve /healthz, /readyz (503 while starting, draining or without the "
                   "state store) and Prometheus /metrics (with pysftpd[metrics]) at "
                   "http://HOST:PORT.")  # fmt: skip
@click.option("--admin-host", "--metrics-host", "admin_host", default="127.0.0.1",
              show_default=True, help="Address for --admin-port.")  # fmt: skip
@click.option("--state", "state_url", default="memory", show_default=True, metavar="URL",
              help="Where login bans, session caps, quota usage and bandwidth buckets are "
                   "kept: memory (this process) or redis://HOST:PORT/DB, shared by every "
                   "worker and instance given the same URL (needs pysftpd[redis]).")  # fmt: skip
@click.option("--state-prefix", default="sftpd:", show_default=True,
              help="Prefix of every key sftpd writes in Redis.")  # fmt: skip
@click.option(
    "--max-sessions-per-user",
    type=click.IntRange(1),
    default=None,
    help="Sessions one user may have at once, over all processes sharing --state.",
)
@click.option(
    "--max-sessions-total",
    type=click.IntRange(1),
    default=None,
    help="Sessions at once over all processes sharing --state.",
)
@click.option("--bandwidth", "bandwidth", multiple=True, metavar="NAME=RATE",
              help="A rate limit in bytes per second (512K, 10M), NAME one of "
                   "session-upload, session-download, user-upload, user-download, "
                   "server-upload, server-download; repeatable.")  # fmt: skip
@click.option("--audit-log", type=str, default=None, metavar="FILE|-",
              help="Append one JSON line per login, logout, upload, download, delete, "
                   "rename, mkdir and rmdir to FILE ('-' for standard output).")  # fmt: skip
@click.option("--webhook", "webhooks", multiple=True, metavar="URL",
              help="POST a signed JSON event to URL for each upload (stored, failed, "
                   "abandoned), delete and rename; retried; repeatable.")  # fmt: skip
@click.option("--webhook-secret-env", default=None, metavar="VAR",
              help="Environment variable holding the webhooks' HMAC-SHA256 key.")  # fmt: skip
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Server processes sharing the port, e.g. one per core; each has its own "
                   "sessions (and --max-sessions); --metrics-port serves their sum. Not with "
                   "the memory backend.")  # fmt: skip
@click.option("--check", is_flag=True,
              help="Check the configuration (users, host keys, storage reachable) and exit "
                   "without serving: 0 if it is sound, 2 with what to fix.")  # fmt: skip
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
@click.pass_context
def serve(ctx: click.Context, /, config_file: Path | None, users: tuple[str, ...],
          key_files: tuple[str, ...], generate_host_key: bool, log_level: str,
          object_args: tuple[str, ...], check: bool, **options: Any) -> None:  # fmt: skip
    """Serve SFTP until Ctrl-C or SIGTERM (both stop gracefully).

    SIGHUP reopens the --audit-log file (for logrotate) and reloads the users (config
    file, --authorized-keys files) for new logins; open sessions stay.

    With no options: the memory backend on 127.0.0.1:2222, user dev with password dev, and
    host keys generated into .sftpd/host_keys. Connect with: sftp -P 2222 dev@localhost
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        s3_options: dict[str, Any] = {}
        loaded = load_config_file(config_file) if config_file is not None else None
        if loaded is not None:
            s3_options = loaded.s3
            for key, value in loaded.server.items():
                name = "backend_spec" if key == "backend" else key
                source = ctx.get_parameter_source(name)  # None: a key with no flag
                if source is None or source is click.core.ParameterSource.DEFAULT:
                    options[name] = Path(value) if name == "host_key_dir" else value
        table = _user_table(loaded, users, key_files)

        def reload_users() -> Any:
            """The users as the config file and authorized_keys files now say (SIGHUP)."""
            fresh = load_config_file(config_file) if config_file is not None else None
            return _user_table(fresh, users, key_files).authenticator()

        host_key_dir = options.pop("host_key_dir")
        key_dir = host_key_dir if host_key_dir is not None else DEFAULT_KEY_DIR
        ciphers = options.pop("ciphers")
        if ciphers is not None:
            options["ciphers"] = ciphers.split(",") if isinstance(ciphers, str) else ciphers
        if isinstance(options["max_file_size"], str):  # the flag's text ([server]: an int)
            options["max_file_size"] = parse_size(options["max_file_size"])
        if isinstance(options["upload_digests"], str):  # the flag's text ([server]: a list)
            text = options["upload_digests"].strip()
            options["upload_digests"] = [] if text in ("", "none") else text.split(",")
        if isinstance(options["upload_memory"], str):
            options["upload_memory"] = parse_size(options["upload_memory"], "--upload-memory")
        options["upload_memory"] = options["upload_memory"] or None  # 0: no limit
        workers = options.pop("workers")
        admin_port = options.pop("admin_port")
        admin_host = options.pop("admin_host")
        if loaded is not None:
            for key, name in (("url", "state_url"), ("prefix", "state_prefix")):
                if key in loaded.state and ctx.get_parameter_source(name) in (
                    None, click.core.ParameterSource.DEFAULT):  # fmt: skip
                    options[name] = loaded.state[key]
            if "ttl" in loaded.state:
                options["state_ttl"] = loaded.state["ttl"]
        state_url, state_prefix = options.pop("state_url"), options.pop("state_prefix")
        options["state"] = state_from_url(state_url, prefix=state_prefix)
        if loaded is not None and loaded.login_limits:
            options["login_limits"] = LoginLimits(**loaded.login_limits)
        section = loaded.bandwidth if loaded is not None else {}
        options["bandwidth"] = _bandwidth(options["bandwidth"], section)
        audit_target = options.pop("audit_log")
        hooks = _webhooks(options.pop("webhooks"), options.pop("webhook_secret_env"))
        if object_args:
            s3_options = {**s3_options, "object_args": _merge_object_args(
                s3_options.get("object_args", {}), _parse_object_args(object_args)
            )}  # fmt: skip
        config = ServerConfig(
            backend=_serve_backend(options.pop("backend_spec"), s3_options, loaded),
            auth=table.authenticator(),  # type: ignore[arg-type]
            system_dir=key_dir,
            **options,
        )
        if workers > 1 and isinstance(config.backend, MemoryBackend):
            raise ConfigError(
                "the memory backend keeps files inside one process, so workers would "
                "not see each other's files: use --backend local:/path or s3://BUCKET"
            )
        generating = (host_key_dir is None or generate_host_key) and not any(
            Path(key_dir).glob(HOST_KEY_GLOB)
        )
        if check:
            keys = asyncio.run(Server(config).check(host_keys=not generating))
            lines = [f"  {k.get_algorithm()}  {fingerprint(k)}" for k in keys] or [
                f"  none yet: generated in {key_dir} on the first start"
            ]
            console.print(
                f"Configuration OK: {type(config.backend).__name__} started and stopped; "
                f"users: {', '.join(table.names)}; host keys:\n" + "\n".join(lines)
            )
            return
        # Only a configuration found valid gets its side effects: keys, log file, port.
        if host_key_dir is None or generate_host_key:
            for created in ensure_host_keys(key_dir, legacy=config.legacy_algorithms):
                console.print(f"Generated host key [bold]{created}[/]")
        if audit_target is not None:
            AuditLog(audit_target).attach()
        if hooks is not None:
            hooks.attach()
        if workers > 1:
            fleet = Supervision()
            store_probe = _store_probe(state_url, state_prefix)
            with _worker_admin(admin_port, admin_host, fleet, store_probe) as on_exit:
                names = table.names
                status = supervise(
                    config,
                    workers,
                    lambda cfg, worker: _run_worker(cfg, worker, reload_users),
                    lambda cfg: _announce(cfg, names, load_host_keys(cfg), workers),
                    on_exit,
                    fleet,
                )
            sys.exit(status)
        probe = _ServerProbe()
        admin = _admin_server(admin_port, admin_host, probe)
        try:
            asyncio.run(_serve(config, table.names, reload_users, probe=probe))
        finally:
            if admin is not None:
                admin.close()
    except ConfigError as exc:
        _print_error(exc)
        sys.exit(2)


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="TOML config file: its [server] backend, its [s3] section "
                                 "and the user's [users.NAME] root, permissions and "
                                 "max_file_size apply.")  # fmt: skip
@click.option("--backend", "backend_spec", default=None,
              help="memory, local:/path or s3://BUCKET/PREFIX (default: the config's, "
                   "else memory).")  # fmt: skip
@click.option(
    "--user", default=None, help="The session's user name (default: $USER, as sshd sets it)."
)
@click.option("--root", default=None, help="Confine the session to this directory.")
@click.option("--read-only", is_flag=True, help="Refuse every change.")
@click.option("--max-open-files", default=32, show_default=True, type=click.IntRange(1))
@click.option(
    "--audit-log",
    type=str,
    default=None,
    metavar="FILE",
    help="Append one JSON line per operation to FILE.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the log here (default: standard error, which sshd passes on).",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option("--state", "state_url", default=None, metavar="URL",
              help="The state store for the user's quota and bandwidth limits (default: the "
                   "config's [server] state, else this process: the quota is then counted "
                   "afresh for each session).")  # fmt: skip
def stdio(config_file: Path | None, backend_spec: str | None, user: str | None,
          root: str | None, read_only: bool, max_open_files: int, audit_log: str | None,
          log_file: Path | None, log_level: str, state_url: str | None) -> None:  # fmt: skip
    """Serve one SFTP session on standard input and output, for OpenSSH's sshd.

    In sshd_config: Subsystem sftp /path/to/sftpd stdio --backend local:/srv/sftp
    (sshd authenticates; this serves the user it names with sftpd's engine and backends).
    """
    from ._binding import bind_backend
    from ._memory import DEFAULT_UPLOAD_MEMORY, UploadMemory
    from ._requests import Settings
    from ._session import Session
    from ._stdio import peer_from_environment, serve_stdio
    from .telemetry import bus

    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file is not None else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler])
    try:
        loaded = load_config_file(config_file) if config_file is not None else None
        spec = backend_spec or (loaded.server.get("backend") if loaded else None) or "memory"
        name = user or os.environ.get("USER") or os.environ.get("LOGNAME") or "sftp"
        attributes: dict[str, Any] = dict(loaded.users.attributes.get(name, {})) if loaded else {}
        if root is not None:
            attributes["root"] = root
        if read_only:
            attributes["permissions"] = "read-only"
        session = Session.from_attributes(
            username=name, peer=peer_from_environment(), auth_method="sshd",
            attributes=attributes, upload_memory=UploadMemory(DEFAULT_UPLOAD_MEMORY),
        )  # fmt: skip
        backend = bind_backend(make_backend(spec, loaded.s3 if loaded else {}))
        section = loaded.state if loaded else {}
        store = state_from_url(state_url or section.get("url", "memory"),
                               prefix=section.get("prefix", "sftpd:"))  # fmt: skip
        if audit_log is not None:
            AuditLog(audit_log).attach()
        asyncio.run(serve_stdio(
            backend, session, bus=bus,
            settings=Settings(max_open_handles=max_open_files),
            stdin=sys.stdin.buffer, stdout=sys.stdout.buffer,
            shared=SharedState(store, section.get("ttl", 60.0)),
            bandwidth=_bandwidth((), loaded.bandwidth if loaded else {}),
        ))  # fmt: skip
    except ConfigError as exc:
        log.error("sftpd stdio: %s", exc)
        sys.exit(2)


@main.group("quota")
def quota_group() -> None:
    """Storage quotas kept in the state store."""


def _quota_setup(
    config_file: Path, state_url: str | None, users: tuple[str, ...]
) -> tuple[Any, Any, dict[str, list[tuple[str, Any]]]]:
    """The backend, the store and ``{quota key: [(user, quota)]}`` a config file names."""
    loaded = load_config_file(config_file)
    server = loaded.server
    backend = make_backend(server.get("backend", "memory"), loaded.s3)
    url = state_url or loaded.state.get("url", "memory")
    store = state_from_url(url, prefix=loaded.state.get("prefix", "sftpd:"))
    keys: dict[str, list[tuple[str, Any]]] = {}
    for name in loaded.users.names:
        attrs = loaded.users.attributes.get(name, {})
        quota = Quota.from_attributes(name, attrs)
        if quota is not None and (not users or name in users):
            keys.setdefault(quota.key, []).append((name, attrs))
    missing = [u for u in users if not any(u == n for group in keys.values() for n, _ in group)]
    if missing:
        raise ConfigError(f"no quota for user(s) {', '.join(missing)} in {config_file}")
    return backend, store, keys


def _quota_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options of every `sftpd quota` command."""
    for option in reversed([
        click.option("--config", "config_file", required=True,
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="The config file of `sftpd serve`: its backend, [state] and users."),
        click.option("--state", "state_url", default=None, metavar="URL",
                     help="The state store (default: the config file's [state] url)."),
        click.argument("users", nargs=-1),
    ]):  # fmt: skip
        command = option(command)
    return command


@quota_group.command("scan")
@_quota_options
def quota_scan(config_file: Path, state_url: str | None, users: tuple[str, ...]) -> None:
    """Count what the users with a quota hold (every file under their roots) and record it
    as their usage, replacing what the store had. USERS: only these (default: all)."""
    try:
        backend, store, keys = _quota_setup(config_file, state_url, users)
        if isinstance(store, MemoryState):
            raise ConfigError("a scan recorded in memory is lost at exit: give --state "
                              "redis://... (or [server] state) of the running servers")  # fmt: skip
        counted = asyncio.run(_scan_quotas(backend, store, keys))
    except ConfigError as exc:
        _print_error(exc)
        sys.exit(2)
    for key, (nbytes, files) in sorted(counted.items()):
        console.print(f"{key}: {nbytes} bytes in {files} files")


async def _scan_quotas(
    backend: object, store: Any, keys: dict[str, list[tuple[str, Any]]]
) -> dict[str, tuple[int, int]]:
    bound = bind_backend(backend)
    await store.start()
    await start_backend(bound)
    counted: dict[str, tuple[int, int]] = {}
    try:
        for key, members in keys.items():
            total_bytes = total_files = 0
            name, attrs = members[0]
            for root in sorted({str(a.get("root", "/")) for _, a in members}):
                session = Session.from_attributes(
                    username=name, peer=Peer("sftpd-quota", 0), auth_method="none",
                    attributes={**attrs, "root": root},
                )  # fmt: skip
                nbytes, files = await count_usage(
                    lambda d, s=session: bound.list_dir(d, s),  # type: ignore[misc]
                    session.root,
                )
                total_bytes, total_files = total_bytes + nbytes, total_files + files
            await store.set_usage(key, total_bytes, total_files)
            counted[key] = (total_bytes, total_files)
    except StateUnavailable as exc:
        raise ConfigError(str(exc)) from exc
    finally:
        await stop_backend(bound)
        await store.close()
    return counted


@quota_group.command("show")
@_quota_options
def quota_show(config_file: Path, state_url: str | None, users: tuple[str, ...]) -> None:
    """Print each quota's limits and what the store counts: committed and reserved."""
    try:
        _backend, store, keys = _quota_setup(config_file, state_url, users)

        async def show() -> list[str]:
            await store.start()
            try:
                lines = []
                for key, members in sorted(keys.items()):
                    quota = Quota.from_attributes(members[0][0], members[0][1])
                    assert quota is not None
                    usage = await store.usage(key)
                    held = ("unknown (counted at the next login)" if usage is None else
                            f"{usage.bytes} bytes in {usage.files} files, "
                            f"{usage.reserved_bytes} bytes reserved")  # fmt: skip
                    limit = (f"{quota.max_bytes if quota.max_bytes is not None else 'any'} "
                             f"bytes, {quota.max_files if quota.max_files is not None else 'any'}"
                             " files")  # fmt: skip
                    users_of = ", ".join(name for name, _ in members)
                    lines.append(f"{key} ({users_of}): {held}; limit {limit}")
                return lines
            except StateUnavailable as exc:
                raise ConfigError(str(exc)) from exc
            finally:
                await store.close()

        for line in asyncio.run(show()):
            console.print(line)
    except ConfigError as exc:
        _print_error(exc)
        sys.exit(2)


@main.command("hash-password")
@click.option("--scheme", type=click.Choice(["argon2id", "bcrypt", "sha512-crypt"]),
              default="argon2id", show_default=True,
              help="argon2id (recommended), bcrypt, or SHA-512-crypt for old systems.")  # fmt: skip
@click.option("--stdin", "from_stdin", is_flag=True,
              help="Read the password from the first line of standard input.")  # fmt: skip
def hash_password_command(scheme: str, from_stdin: bool) -> None:
    """Print a password hash for a config file's [users.NAME] password = "...".

    Needs the passwords extra: pip install 'pysftpd[passwords]'.
    """
    from ._passwords import hash_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        click.echo(hash_password(password, scheme))
    except (ConfigError, ValueError) as exc:
        _print_error(ConfigError(str(exc)))
        sys.exit(2)


def _webhooks(urls: Any, secret_env: str | None) -> Any:
    """The --webhook (or [server] webhooks) notifier, checked; None without URLs."""
    if not urls:
        return None
    from .webhooks import Webhooks

    secret = None
    if secret_env is not None:
        secret = os.environ.get(secret_env)
        if not secret:
            raise ConfigError(f"--webhook-secret-env: {secret_env} is not set")
    return Webhooks(list(urls), secret=secret)


def _serve_backend(spec: str, s3_options: dict[str, Any], loaded: FileConfig | None) -> Any:
    """The backend: ``--backend``/[server] backend, or the namespace of [[mounts]]."""
    if loaded is None or not (loaded.mounts or loaded.backends):
        return make_backend(spec, s3_options)
    from .backends.mounts import Mount, MountBackend

    def build(text: str) -> Any:
        is_s3 = text.lower().startswith("s3:")
        return make_backend(text, s3_options if is_s3 else {})

    named = {name: build(text) for name, text in loaded.backends.items()}
    mounts = []
    for table in loaded.mounts:
        name = table["backend"]
        backend = name if name in named else build(name)
        mounts.append(Mount(table["path"], backend, table.get("prefix", "/"),
                            bool(table.get("read_only", False))))  # fmt: skip
    return MountBackend(mounts, backends=named)


def _bandwidth(flags: tuple[str, ...], section: dict[str, Any]) -> Bandwidth:
    """The rates of ``--bandwidth NAME=RATE`` flags over the config file's [bandwidth]."""
    rates = {name: sizes.parse_size(value, f"[bandwidth] {name}")
             for name, value in section.items()}  # fmt: skip
    if flags:
        given = Bandwidth.parse(",".join(flags))
        rates.update({name: getattr(given, name) for name in Bandwidth.__dataclass_fields__
                      if getattr(given, name) is not None})  # fmt: skip
    return Bandwidth(**rates)


def _nothing(_pid: int) -> None:
    """What to do when a worker exits, without metrics."""


class _ServerProbe:
    """What the admin port's checks ask of the server this process runs."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _ask(self, work: Coroutine[Any, Any, str | None]) -> str | None:
        loop = self.loop
        if loop is None:
            work.close()
            return "starting"
        try:
            return asyncio.run_coroutine_threadsafe(work, loop).result(PROBE_TIMEOUT)
        except TimeoutError:
            return "the event loop is not answering"
        except RuntimeError:  # the loop has closed
            work.close()
            return "stopped"

    def live(self) -> str | None:
        """None while the event loop answers."""
        if self.loop is None:
            return None  # starting up is alive

        async def nothing() -> None:
            return None

        return self._ask(nothing())

    def ready(self) -> str | None:
        """None while new logins can succeed."""
        server = self.server
        if server is None:
            return "starting"
        return self._ask(server.readiness())


#: Seconds an admin check waits for the server's answer.
PROBE_TIMEOUT = 3.0


def _admin_server(port: int | None, host: str, probe: _ServerProbe) -> AdminServer | None:
    """The admin port of a single-process server (with --admin-port)."""
    if port is None:
        return None
    page = _metrics_page()
    admin = AdminServer(host, port, live=probe.live, ready=probe.ready, metrics=page)
    _print_admin(admin, page is not None, "")
    return admin


def _print_admin(admin: AdminServer, metrics: bool, whose: str) -> None:
    if metrics:
        console.print(f"Metrics: {admin.url('/metrics')}{whose}")
    console.print(f"Health: {admin.url('/healthz')} {admin.url('/readyz')}")


def _metrics_page() -> Callable[[], bytes] | None:
    """Attach Prometheus metrics and return what makes their page (None: not installed)."""
    try:
        from .integrations import prometheus
    except ImportError:
        log.info("no /metrics: prometheus-client is not installed (pysftpd[metrics])")
        return None
    metrics: Any = prometheus.PrometheusMetrics().attach()
    page: Callable[[], bytes] = metrics.page
    return page


def _store_probe(url: str, prefix: str) -> Callable[[], str | None]:
    """For the supervisor of --workers: whether the state store answers (a fresh client
    each time, as the workers' own are theirs)."""
    if url == "memory":
        return lambda: None

    def probe() -> str | None:
        async def ping() -> str | None:
            store = state_from_url(url, prefix=prefix)
            try:
                await store.ping()
            except StateUnavailable:
                return "state store unreachable"
            finally:
                await store.close()
            return None

        return asyncio.run(ping())

    return probe


@contextlib.contextmanager
def _worker_admin(
    port: int | None, host: str, fleet: Supervision, probe: Callable[[], str | None]
) -> Iterator[Callable[[int], None]]:
    """With --admin-port and --workers: the workers count metrics in files, this process
    serves their sum and the health checks. Yields what to call when a worker exits.
    """
    if port is None:
        yield lambda pid: None
        return
    with contextlib.ExitStack() as stack:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="sftpd-metrics-"))
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
            stack.callback(os.environ.pop, "PROMETHEUS_MULTIPROC_DIR", None)
        page: Callable[[], bytes] | None = None
        on_exit: Callable[[int], None] = _nothing
        try:
            from .integrations import prometheus
        except ImportError:
            log.info("no /metrics: prometheus-client is not installed (pysftpd[metrics])")
        else:
            # Attached here, inherited by every forked worker; each counts in its own files.
            stack.callback(prometheus.PrometheusMetrics().attach().detach)
            page, on_exit = prometheus.multiprocess_page(), prometheus.worker_exited

        def ready() -> str | None:
            return fleet.problem() or probe()

        admin = AdminServer(host, port, live=lambda: None, ready=ready, metrics=page)
        stack.callback(admin.close)
        _print_admin(admin, page is not None, " (all workers)")
        yield on_exit


def _print_error(exc: ConfigError) -> None:
    console.print(f"[bold red]error:[/] {escape(str(exc))}")


def _user_table(
    loaded: FileConfig | None, users: tuple[str, ...], key_files: tuple[str, ...]
) -> UserTable:
    """Users from the config file, then --user and --authorized-keys; dev:dev if none."""
    table = loaded.users if loaded is not None else UserTable()
    for spec in users:
        name, password = _parse_user(spec)
        table.passwords[name] = password
    for spec in key_files:
        name, sep, file = spec.partition(":")
        if not sep or not name or not file:
            raise click.BadParameter(f"{spec!r} is not NAME:FILE", param_hint="--authorized-keys")
        table.keys[name] = file
    if not table.names:
        table.passwords["dev"] = "dev"
    return table


def _run_worker(config: ServerConfig, worker: Worker, reload_users: Callable[[], Any]) -> int:
    """One worker process of --workers: serve until told to stop; return the exit status."""
    try:
        asyncio.run(_serve(config, [], reload_users, worker=worker))
    except ConfigError as exc:
        _print_error(exc)
        return 2
    except Exception:
        log.exception("worker %d failed", worker.index)
        return 1
    return 0


def _announce(
    config: ServerConfig,
    users: list[str],
    host_keys: list[asyncssh.SSHKey],
    workers: int,
    port: int | None = None,
) -> None:
    """Print where the server listens, who may log in and the host key fingerprints."""
    prints = "\n".join(f"  {k.get_algorithm()}  {fingerprint(k)}" for k in host_keys)
    where = "localhost" if config.host in ("127.0.0.1", "::1", "localhost") else config.host
    port = config.port if port is None else port
    processes = f" in {workers} worker processes" if workers > 1 else ""
    console.print(
        Panel.fit(
            f"sftpd {__version__} serving [bold]{type(config.backend).__name__}[/] on "
            f"{config.host}:{port}{processes}\n"
            f"Users: {', '.join(users)}\n"
            f"Connect: [bold]sftp -P {port} {users[0]}@{where}[/]\n"
            f"Host key fingerprints:\n{prints}",
            title="sftpd",
        )
    )


async def _serve(
    config: ServerConfig,
    users: list[str],
    reload_users: Callable[[], Any],
    worker: Worker | None = None,
    probe: _ServerProbe | None = None,
) -> None:
    server = Server(config)
    loop = asyncio.get_running_loop()
    if probe is not None:
        probe.loop = loop
    await server.start()
    if probe is not None:
        probe.server = server
    stopping = False

    def on_hangup() -> None:
        """Reopen the audit log files (logrotate), reload the users (on any error keep the
        current ones)."""
        if reopen_audit_logs():
            log.info("audit log reopened")
        try:
            server.replace_auth(reload_users())
        except (ConfigError, click.ClickException, OSError, ValueError) as exc:
            log.error("reloading users failed, keeping the previous ones: %s", exc)
            return
        log.info("users reloaded (the [server] settings need a restart)")

    def on_signal(signum: int) -> None:
        nonlocal stopping
        if stopping:
            if worker is None:
                console.print("Stopping now.")
            server.close(grace=0.001)
            return
        stopping = True
        if worker is None:
            console.print(
                f"{signal.Signals(signum).name}: finishing open transfers "
                f"(up to {config.shutdown_grace:g} s; press Ctrl-C again to stop now)"
            )
        server.close()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    if worker is None:
        _announce(config, users, server.host_keys, 1, port=server.port)
    else:
        os.write(worker.ready_fd, b"1")
        os.close(worker.ready_fd)

        def orphaned() -> None:  # the supervisor is gone: stop as if told to
            loop.remove_reader(worker.lifeline_fd)
            on_signal(signal.SIGTERM)

        loop.add_reader(worker.lifeline_fd, orphaned)
    try:
        await server.serve_forever()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(signum)
