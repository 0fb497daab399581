"""``sftpd serve``: run a server (and its workers and admin port) from the command line."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from rich.logging import RichHandler
from rich.panel import Panel

from .._admin import AdminServer
from .._config import HOST_KEY_GLOB, ServerConfig, load_host_keys, state_from_url
from .._config_file import load_config_file
from .._server import Server
from .._throttle import LoginLimits
from .._version import __version__
from .._workers import Supervision, Worker, supervise
from ..audit import AuditLog
from ..audit import reopen_all as reopen_audit_logs
from ..auth import fingerprint
from ..backends.memory import MemoryBackend
from ..errors import ConfigError
from ..state import StateUnavailable
from ._common import (
    DEFAULT_KEY_DIR,
    _bandwidth,
    _merge_object_args,
    _parse_object_args,
    _print_error,
    _serve_backend,
    _user_table,
    _webhooks,
    console,
    ensure_host_keys,
    log,
    parse_size,
)

__all__ = ["serve"]

_FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig)}


def _field(name: str) -> dict[str, Any]:
    """A flag's default: ServerConfig's for field ``name``, so it is written once, there."""
    default = _FIELDS[name].default
    assert default is not dataclasses.MISSING, name
    return {"default": default, "show_default": True}


_DIGESTS = ",".join(_FIELDS["upload_digests"].default)  # type: ignore[arg-type]


#: Limits and timeouts: a ServerConfig field each, with its flag's range and help; the
#: default is the field's.
_LIMITS: tuple[tuple[str, click.ParamType[Any], str], ...] = (
    ("max_unauthenticated", click.IntRange(1),
        "Connections not logged in yet, at most (as OpenSSH's MaxStartups); "
        "more are dropped."),
    ("max_unauthenticated_per_address", click.IntRange(1),
        "The same, from one client address."),
    ("connection_rate", click.FloatRange(0, min_open=True),
        "New connections per second from one address, after --connection-burst; "
        "more are closed before the SSH banner (DHEat protection)."),
    ("connection_burst", click.IntRange(1),
        "New connections from one address allowed at once."),
    ("max_open_files", click.IntRange(1),
        "Files and directories one session may have open at once."),
    ("max_channels", click.IntRange(1),
        "SFTP channels one connection may open at once."),
    ("max_requests_per_channel", click.IntRange(1),
        "SFTP requests of one channel served at once."),
    ("max_requests_per_session", click.IntRange(1),
        "SFTP requests of one connection served at once."),
    ("max_sessions", click.IntRange(1),
        "Most sessions at once; more are refused at login."),
    ("open_timeout", click.FloatRange(0.001),
        "Seconds a file open may take."),
    ("close_timeout", click.FloatRange(0.001),
        "Seconds storing an upload at close may take."),
    ("shutdown_grace", click.FloatRange(0.001),
        "Seconds a stop waits for open files before disconnecting."),
    ("idle_timeout", click.FloatRange(0.001),
        "Seconds without requests after which a session is closed."),
    ("login_timeout", click.FloatRange(0.001),
        "Seconds a client has to log in."),
)  # fmt: skip


def _limit_options(command: Callable[..., None]) -> Callable[..., None]:
    """The ``_LIMITS`` flags, in their order."""
    for name, kind, text in reversed(_LIMITS):
        flag = "--" + name.replace("_", "-")
        command = click.option(flag, **_field(name), type=kind, help=text)(command)
    return command


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML file with [server] options and [users.NAME] sections; "
                   "command-line options win over it.")  # fmt: skip
@click.option("--host", **_field("host"), help="Address to listen on.")
@click.option("--port", **_field("port"), type=click.IntRange(0, 65535),
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
@_limit_options
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
@click.option("--upload-digests", default=_DIGESTS, show_default=True, metavar="LIST",
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
        from ..integrations import prometheus
    except ImportError:
        log.info("no /metrics: prometheus-client is not installed (pysftpd[metrics])")
        return None
    metrics: Any = prometheus.PrometheusMetrics().attach()
    page: Callable[[], bytes] = metrics.page
    return page


def _store_probe(url: str, prefix: str) -> Callable[[], str | None]:
    """For the supervisor of --workers: whether the state store answers (a fresh client
    each time, as the workers' own are theirs).
    """
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
            from ..integrations import prometheus
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
        current ones).
        """
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
