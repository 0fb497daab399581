"""The other commands: ``stdio`` (under sshd), ``quota``, ``s3 cleanup``, ``hash-password``."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .._binding import bind_backend, start_backend, stop_backend
from .._config import state_from_url
from .._config_file import load_config_file
from .._quota import Quota, count_usage
from .._session import Peer, Session
from .._shared import SharedState
from ..audit import AuditLog
from ..errors import ConfigError
from ..state import MemoryState, StateUnavailable
from ._common import (
    _bandwidth,
    _print_error,
    console,
    log,
    make_backend,
)

__all__ = ["hash_password_command", "quota_group", "s3_group", "stdio"]


@click.group("s3")
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
    included, are left alone.
    """
    try:
        if not target.startswith("s3://"):
            raise ConfigError(f"{target!r} is not s3://BUCKET/PREFIX")
        loaded = load_config_file(config_file) if config_file is not None else None
        backend = make_backend(target, loaded.s3 if loaded else {})
        from ..backends.s3 import S3Backend

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


@click.command()
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
    from .._binding import bind_backend
    from .._memory import DEFAULT_UPLOAD_MEMORY, UploadMemory
    from .._requests import Settings
    from .._session import Session
    from .._stdio import peer_from_environment, serve_stdio
    from ..telemetry import bus

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


@click.group("quota")
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
    as their usage, replacing what the store had. USERS: only these (default: all).
    """
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


@click.command("hash-password")
@click.option("--scheme", type=click.Choice(["argon2id", "bcrypt", "sha512-crypt"]),
              default="argon2id", show_default=True,
              help="argon2id (recommended), bcrypt, or SHA-512-crypt for old systems.")  # fmt: skip
@click.option("--stdin", "from_stdin", is_flag=True,
              help="Read the password from the first line of standard input.")  # fmt: skip
def hash_password_command(scheme: str, from_stdin: bool) -> None:
    """Print a password hash for a config file's [users.NAME] password = "...".

    Needs the passwords extra: pip install 'pysftpd[passwords]'.
    """
    from .._passwords import hash_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        click.echo(hash_password(password, scheme))
    except (ConfigError, ValueError) as exc:
        _print_error(ConfigError(str(exc)))
        sys.exit(2)
