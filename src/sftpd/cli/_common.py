"""What the commands share: the console, option parsers, backends and host keys."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import asyncssh
import click
from rich.console import Console
from rich.markup import escape

from .. import _sizes as sizes
from .._bandwidth import Bandwidth
from .._config import HOST_KEY_GLOB
from .._config_file import FileConfig, UserTable
from ..backends.local import LocalBackend
from ..backends.memory import MemoryBackend
from ..errors import ConfigError

__all__ = ["console", "ensure_host_keys", "make_backend", "parse_size"]

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
        from ..backends.s3 import S3Backend

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


def _webhooks(urls: Any, secret_env: str | None) -> Any:
    """The --webhook (or [server] webhooks) notifier, checked; None without URLs."""
    if not urls:
        return None
    from ..webhooks import Webhooks

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
    from ..backends.mounts import Mount, MountBackend

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
