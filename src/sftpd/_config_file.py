"""The TOML configuration file of ``sftpd serve``, so operators need no Python.

[server]
host = "0.0.0.0"
port = 2222
host_key_dir = "/etc/sftpd/host_keys"
backend = "memory"
max_sessions = 20
idle_timeout = 900
upload_memory = 536870912                # upload bytes in memory, all sessions (0: no limit)
ciphers = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr"]
legacy_sha1 = false                      # true: also SHA-1 kex, MACs, ssh-rsa host sigs
legacy_macs = false                      # true: non-etm hmac-sha2 (libssh2 < 1.11, curl)
legacy_algorithms = false                # true: NIST/DH kex, non-etm MACs (JSch 0.1.x)
proxy_protocol = false                   # true: behind a balancer sending PROXY headers
proxy_from = ["10.0.0.0/8"]              # where the balancer connects from (else: anywhere)
trusted_user_ca_keys = ["user_ca.pub"]   # CAs whose user certificates log in (TrustedUserCAKeys)
revoked_keys = "revoked.pub"             # keys no login may use (RevokedKeys; not a KRL)
authorized_principals = { alice = ["alice", "ops"] }  # certificate principals per user
authentication_methods = ["publickey,password"]  # a key, then a password (AuthenticationMethods)
max_sessions_per_user = 4                # over every instance sharing the [state]
admin_port = 9100                        # /healthz, /readyz, /metrics

[state]                                  # bans, session caps, quotas, bandwidth of a fleet
url = "redis://redis:6379/0"             # default "memory": this process only
prefix = "sftpd:"                        # of every key in Redis
ttl = 60                                 # seconds a dead instance's leases outlive it

[login_limits]                           # failed logins: slowed, then banned (sftpd.LoginLimits)
per_user_and_address = 5
per_address = 50

[bandwidth]                              # bytes/s: session_, user_, server_ x upload/download
user_download = "10M"

[backends]                               # named, for [[mounts]] instead of [server] backend
uploads = "s3://my-bucket"
archive = "local:/srv/archive"

[[mounts]]                               # one folder of the namespace each
path = "/inbox"
backend = "uploads"                      # a name from [backends], or a spec ("memory")
prefix = "/tenants/{username}"           # {username} or any session attribute
[[mounts]]
path = "/archive"
backend = "archive"
read_only = true

[s3]                                     # with backend = "s3://BUCKET/PREFIX"
part_size = 16777216
upload_concurrency = 4
object_args = { ServerSideEncryption = "aws:kms", SSEKMSKeyId = "alias/uploads" }

[groups.partners]
permissions = { "/outbox" = ["list", "download"] }

[users.alice]
password_env = "ALICE_PASSWORD"         # or password = "$argon2id$..." (sftpd hash-password)
authorized_keys = "/etc/sftpd/alice.pub" # a file, or a list of key lines
root = "/tenants/acme"
permissions = "upload-only"              # a preset, or a list such as ["read", "list"], or
                                         # { "/" = "read-only", "/inbox" = ["upload", "list"] }
groups = ["partners"]                    # [groups.partners] permissions apply first
denied_names = ["*.exe"]                 # nothing of these names can be created
hidden_names = [".*"]                    # never listed, missing to every request
max_file_size = 1073741824               # bytes; overrides [server] max_file_size
totp_secret_env = "ALICE_TOTP"           # base32 TOTP secret: password, then a code
source_networks = ["10.0.0.0/8"]         # logins only from these addresses or networks
quota_bytes = "10G"                      # exact over the fleet; df shows it
quota_files = 100000
quota_key = "acme"                       # share one quota with every user of the tenant
download_rate = "5M"                     # this user's sessions together (user_download)
max_sessions = 2                         # this user's sessions at once
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._permissions import Permissions
from ._session import check_max_file_size
from ._sizes import parse_size
from .auth import AuthorizedKeys, CombinedAuthenticator, StaticPasswords, check_source_networks
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found]

log = logging.getLogger("sftpd")

__all__ = ["FileConfig", "UserTable", "load_config_file"]

SERVER_KEYS = {
    "host": str,
    "port": int,
    "host_key_dir": str,
    "backend": str,
    "max_sessions": int,
    "open_timeout": float,
    "close_timeout": float,
    "shutdown_grace": float,
    "login_timeout": float,
    "idle_timeout": float,
    "ciphers": list,
    "workers": int,
    "legacy_sha1": bool,
    "legacy_macs": bool,
    "legacy_algorithms": bool,
    "proxy_protocol": bool,
    "proxy_from": list,
    "max_file_size": int,
    "upload_memory": int,
    "max_open_files": int,
    "max_unauthenticated": int,
    "max_unauthenticated_per_address": int,
    "connection_rate": float,
    "connection_burst": int,
    "trusted_user_ca_keys": list,
    "authentication_methods": list,
    "hash_commands": bool,
    "upload_digests": list,
    "webhooks": list,
    "webhook_secret_env": str,
    "revoked_keys": str,
    "authorized_principals": dict,
    "max_channels": int,
    "max_requests_per_channel": int,
    "max_requests_per_session": int,
    "max_sessions_per_user": int,
    "max_sessions_total": int,
    "admin_port": int,
    "admin_host": str,
}
#: [s3]: options of the S3 backend (sftpd.backends.s3.S3Backend), with their types.
S3_KEYS = {
    "endpoint_url": str,
    "region_name": str,
    "part_size": int,
    "upload_concurrency": int,
    "read_ahead": int,
    "read_chunk": int,
    "copy_concurrency": int,
    "max_attempts": int,
    "setstat": str,
    "content_types": bool,
    "object_args": dict,
    "stale_uploads_after": float,
    "cleanup_every": float,
}
#: [bandwidth]: rates in bytes per second, as numbers or sizes ("10M").
BANDWIDTH_KEYS: dict[str, Any] = dict.fromkeys(
    ("session_upload", "session_download", "user_upload", "user_download", "server_upload",
     "server_download"),
    (int, str),
)  # fmt: skip
#: [[mounts]]: one folder of the namespace each (sftpd.backends.mounts.Mount).
MOUNT_KEYS = {"path", "backend", "prefix", "read_only"}
#: [state]: the state store shared by a fleet.
STATE_KEYS = {"url": str, "prefix": str, "ttl": float}
#: [login_limits]: sftpd.LoginLimits.
LOGIN_LIMIT_KEYS = {"per_user_and_address": int, "per_user": int, "per_address": int,
                    "window": float, "base_delay": float, "max_delay": float,
                    "max_attempts_per_connection": int}  # fmt: skip
USER_KEYS = {"password", "password_env", "authorized_keys", "root", "permissions", "max_file_size",
             "totp_secret", "totp_secret_env", "source_networks", "quota_bytes", "quota_files",
             "quota_key", "upload_rate", "download_rate", "max_sessions", "denied_names",
             "hidden_names", "groups", "mounts"}  # fmt: skip
#: [groups.NAME]: permissions shared by the users that name the group in ``groups``.
GROUP_KEYS = {"permissions", "denied_names", "hidden_names"}


@dataclass
class UserTable:
    """Users collected from the command line and the config file."""

    passwords: dict[str, str] = field(default_factory=dict)
    keys: dict[str, list[str] | str] = field(default_factory=dict)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    totp: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Every user name, sorted."""
        return sorted(set(self.passwords) | set(self.keys))

    def authenticator(self) -> object:
        """One authenticator offering whatever the users have (passwords, keys, or both)."""
        parts: list[object] = []
        if self.passwords:
            parts.append(StaticPasswords(self.passwords, self.attributes, self.totp))
        if self.keys:
            parts.append(AuthorizedKeys(self.keys, self.attributes))
        if not parts:
            raise ConfigError("no users: add --user NAME:PASSWORD or a [users.NAME] section")
        return parts[0] if len(parts) == 1 else CombinedAuthenticator(*parts)


@dataclass
class FileConfig:
    """What a config file holds."""

    server: dict[str, Any]
    users: UserTable
    s3: dict[str, Any] = field(default_factory=dict)
    bandwidth: dict[str, Any] = field(default_factory=dict)
    login_limits: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    backends: dict[str, str] = field(default_factory=dict)


def load_config_file(path: Path) -> FileConfig:
    """Read and check a config file.

    Raises:
        ConfigError: the file is missing, is not TOML, or has unknown or mistyped keys;
            the message names the key.
    """
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    unknown = set(data) - {"server", "users", "groups", "s3", "state", "bandwidth",
                           "login_limits", "mounts", "backends"}  # fmt: skip
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {sorted(unknown)}; use [server], [s3], [state], "
            "[bandwidth], [login_limits], [backends], [[mounts]], [groups], [users]"
        )
    backends = data.get("backends", {})
    if not isinstance(backends, dict) or not all(isinstance(v, str) for v in backends.values()):
        raise ConfigError(f'{path}: [backends] maps names to backends, e.g. uploads = "s3://b"')
    mounts = data.get("mounts", [])
    if not isinstance(mounts, list) or not all(isinstance(m, dict) for m in mounts):
        raise ConfigError(f"{path}: mounts must be [[mounts]] tables with path and backend")
    for mount in mounts:
        extra = set(mount) - MOUNT_KEYS
        if extra or "path" not in mount or "backend" not in mount:
            raise ConfigError(f"{path}: a [[mounts]] table needs path and backend and may "
                              f"have prefix, read_only; got {sorted(mount)}")  # fmt: skip
    if mounts and "backend" in data.get("server", {}):
        raise ConfigError(f"{path}: give either [server] backend or [[mounts]], not both")
    groups = data.get("groups", {})
    for group, spec in groups.items():
        if not isinstance(spec, dict) or set(spec) - GROUP_KEYS:
            raise ConfigError(f"{path}: [groups.{group}] may hold {sorted(GROUP_KEYS)}")
    server = _typed_section(path, "server", data.get("server", {}), SERVER_KEYS)
    for key in ("trusted_user_ca_keys", "revoked_keys"):  # relative to this file
        if key in server:
            value = server[key]
            server[key] = ([str(path.parent / v) for v in value] if isinstance(value, list)
                           else str(path.parent / value))  # fmt: skip
    s3 = _typed_section(path, "s3", data.get("s3", {}), S3_KEYS)
    bandwidth = _typed_section(path, "bandwidth", data.get("bandwidth", {}), BANDWIDTH_KEYS)
    login_limits = _typed_section(path, "login_limits", data.get("login_limits", {}),
                                  LOGIN_LIMIT_KEYS)  # fmt: skip
    state = _typed_section(path, "state", data.get("state", {}), STATE_KEYS)
    table = UserTable()
    for name, spec in data.get("users", {}).items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: [users.{name}] must be a table")
        unknown = set(spec) - USER_KEYS
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {sorted(unknown)} in [users.{name}]; known: "
                f"{sorted(USER_KEYS)}"
            )
        password = _secret(path, name, spec, "password")
        if password is not None:
            table.passwords[name] = password
            if "password" in spec and not password.startswith("$"):
                log.warning("%s: [users.%s] password is plaintext; store a hash instead "
                            "(sftpd hash-password prints one)", path, name)  # fmt: skip
        for key in ("totp_secret", "totp_secret_env"):
            if key in spec and name not in table.passwords:
                raise ConfigError(f"{path}: [users.{name}] {key} needs a password too")
        secret = _secret(path, name, spec, "totp_secret")
        if secret is not None:
            table.totp[name] = secret
        if "authorized_keys" in spec:
            keys = spec["authorized_keys"]
            if isinstance(keys, str) and not keys.lstrip().startswith(("ssh-", "ecdsa-", "sk-")):
                keys = str((path.parent / keys).resolve()) if not Path(keys).is_absolute() else keys
            table.keys[name] = keys
        if name not in table.passwords and name not in table.keys:
            raise ConfigError(f"{path}: [users.{name}] needs a password, password_env or keys")
        attrs: dict[str, Any] = {}
        if "root" in spec:
            attrs["root"] = spec["root"]
        try:
            attrs.update(_permissions(spec, groups))
        except ConfigError as exc:
            raise ConfigError(f"{path}: [users.{name}] {exc}") from None
        if "source_networks" in spec:
            try:
                attrs["source_networks"] = check_source_networks(spec["source_networks"], name)
            except ConfigError as exc:
                raise ConfigError(f"{path}: [users.{name}] {exc}") from None
        if "max_file_size" in spec:
            try:
                check_max_file_size(spec["max_file_size"])
            except ConfigError as exc:
                raise ConfigError(f"{path}: [users.{name}] {exc}") from None
            attrs["max_file_size"] = spec["max_file_size"]
        try:
            attrs.update(_limits(spec))
        except ConfigError as exc:
            raise ConfigError(f"{path}: [users.{name}] {exc}") from None
        if attrs:
            table.attributes[name] = attrs
    return FileConfig(server=server, users=table, s3=s3, bandwidth=bandwidth,
                      login_limits=login_limits, state=state, mounts=mounts,
                      backends=backends)  # fmt: skip


def _permissions(spec: dict[str, Any], groups: dict[str, Any]) -> dict[str, Any]:
    """A user's permissions and name filters over those of its groups, checked.

    Path rules add up (the user's win at the same path); a preset or a list of flags is
    the rule at ``/``; denied and hidden names add up.
    """
    names = spec.get("groups", [])
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError("groups must be a list of group names")
    unknown = [n for n in names if n not in groups]
    if unknown:
        raise ConfigError(f"unknown group(s) {unknown}; define [groups.NAME]")
    layers = [groups[n] for n in names] + [spec]
    permissions: Any = None
    attrs: dict[str, Any] = {}
    for layer in layers:
        for key in ("denied_names", "hidden_names"):
            if key in layer:
                attrs[key] = [*attrs.get(key, []), *layer[key]]
        value = layer.get("permissions")
        if value is None:
            continue
        if not (isinstance(value, dict) and all(str(k).startswith("/") for k in value)):
            value = {"/": value if isinstance(value, str) else
                     sorted(Permissions.parse(value).allows_everywhere())}  # fmt: skip
        permissions = {**(permissions or {}), **value}
    if permissions is not None and len(layers) == 1 and not isinstance(spec["permissions"], dict):
        permissions = spec["permissions"]  # a user on its own: as written
    if permissions is not None:
        attrs["permissions"] = permissions
    Permissions.parse(permissions, denied_names=attrs.get("denied_names"),
                      hidden_names=attrs.get("hidden_names"))  # fmt: skip
    return attrs


def _limits(spec: dict[str, Any]) -> dict[str, Any]:
    """A user's quota, rates and session cap as session attributes, checked."""
    attrs: dict[str, Any] = {}
    for key in ("quota_bytes", "upload_rate", "download_rate"):
        if key in spec:
            attrs[key] = parse_size(spec[key], key)
    for key in ("quota_files", "max_sessions"):
        if key in spec:
            value = spec[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{key} must be a whole number, got {value!r}")
            attrs[key] = value
    if "mounts" in spec:  # this user's own folders, naming [backends]
        attrs["mounts"] = spec["mounts"]
    if "quota_key" in spec:
        attrs["quota_key"] = str(spec["quota_key"])
    if "quota_key" in attrs and not ("quota_bytes" in attrs or "quota_files" in attrs):
        raise ConfigError("quota_key needs quota_bytes or quota_files")
    return attrs


def _secret(path: Path, user: str, spec: dict[str, Any], key: str) -> str | None:
    """``key`` of a user's table, given as such or named by ``<key>_env``; None if absent.

    Raises:
        ConfigError: the variable named is not set.
    """
    if f"{key}_env" in spec:
        variable = spec[f"{key}_env"]
        value = os.environ.get(variable)
        if not value:
            raise ConfigError(f"{path}: [users.{user}] {key}_env {variable} is not set")
        return value
    return str(spec[key]) if key in spec else None


def _typed_section(
    path: Path, name: str, section: dict[str, Any], known: dict[str, Any]
) -> dict[str, Any]:
    """A section's keys checked against ``known`` (integers are accepted as floats)."""
    checked = dict(section)
    for key, value in checked.items():
        kind = known.get(key)
        if kind is None:
            raise ConfigError(f"{path}: unknown [{name}] key {key!r}; known: {sorted(known)}")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            checked[key] = float(value)
        elif not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            what = ("table" if kind is dict else "number or size such as 10M"
                    if isinstance(kind, tuple) else kind.__name__)  # fmt: skip
            raise ConfigError(f"{path}: [{name}] {key} must be a {what}, got {value!r}")
    return checked
