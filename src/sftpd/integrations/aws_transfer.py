r"""AWS Transfer Family compatibility: keep the identity provider, serve it with sftpd.

A Transfer Family custom identity provider (a Lambda function or an API Gateway method)
answers each login with a response such as::

    {"Role": "arn:aws:iam::123456789012:role/sftp-access",
     "HomeDirectoryType": "LOGICAL",
     "HomeDirectoryDetails": "[{\"Entry\": \"/\", \"Target\":
                              \"/uploads/home/${transfer:UserName}\"}]",
     "Policy": "{...a session policy...}",
     "PublicKeys": ["ssh-ed25519 AAAA..."]}

:func:`session_attributes` turns that into sftpd session attributes:

- the logical directories become ``mounts`` of a
  :class:`~sftpd.backends.mounts.MountBackend` whose ``backends`` are named by bucket;
- ``HomeDirectoryType: PATH`` mounts the home directory's bucket at ``/<bucket>`` and
  starts the session in the home directory (``home``);
- the session policy becomes per-path permissions where the mapping is clear (S3
  actions on object ARNs under a mapped target); statements with conditions other than
  string matches, ``NotAction`` or ``NotResource`` are ignored (and logged);
- ``Role`` is ignored: sftpd's S3 credentials are its own.

:class:`TransferIdentity` wraps the function itself as an authenticator, so the
Lambda's logic is kept as it is.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncssh

from .._session import Peer
from ..auth import decode_authorized_key
from ..errors import ConfigError

__all__ = ["TransferIdentity", "session_attributes"]

log = logging.getLogger("sftpd")

#: S3 actions and the sftpd operations they allow.
ACTIONS: dict[str, frozenset[str]] = {
    "s3:ListBucket": frozenset({"list"}),
    "s3:GetObject": frozenset({"download"}),
    "s3:GetObjectVersion": frozenset({"download"}),
    "s3:PutObject": frozenset({"upload", "overwrite", "mkdir", "setstat"}),
    "s3:DeleteObject": frozenset({"delete", "rmdir"}),
    "s3:DeleteObjectVersion": frozenset({"delete", "rmdir"}),
}
_ALL = frozenset().union(*ACTIONS.values()) | {"rename"}


def _fill(text: str, username: str, home: str) -> str:
    bucket, _, folder = home.lstrip("/").partition("/")
    for name, value in (("UserName", username), ("HomeDirectory", home),
                        ("HomeBucket", bucket), ("HomeFolder", folder)):  # fmt: skip
        text = text.replace("${transfer:" + name + "}", value)
    return text


def _mappings(response: Mapping[str, Any], username: str) -> list[tuple[str, str, str]]:
    """``(entry, bucket, prefix)`` for each logical directory (or the PATH home)."""
    home = str(response.get("HomeDirectory") or "")
    kind = str(response.get("HomeDirectoryType") or "PATH").upper()
    if kind == "LOGICAL":
        details = response.get("HomeDirectoryDetails") or []
        if isinstance(details, str):
            try:
                details = json.loads(details)
            except ValueError as exc:
                raise ConfigError(f"HomeDirectoryDetails is not JSON: {exc}") from None
        if not isinstance(details, Sequence) or not details:
            raise ConfigError("HomeDirectoryType LOGICAL needs HomeDirectoryDetails")
        found = []
        for item in details:
            if not isinstance(item, Mapping) or "Entry" not in item or "Target" not in item:
                raise ConfigError(f"a HomeDirectoryDetails item needs Entry and Target: {item}")
            target = _fill(str(item["Target"]), username, home)
            bucket, _, prefix = target.lstrip("/").partition("/")
            if not bucket:
                raise ConfigError(f"Target {item['Target']!r} names no bucket")
            found.append((str(item["Entry"]), bucket, "/" + prefix))
        return found
    if kind != "PATH":
        raise ConfigError(f"HomeDirectoryType {kind!r} is not LOGICAL or PATH")
    if not home:
        raise ConfigError("HomeDirectoryType PATH needs HomeDirectory (/bucket/folder)")
    bucket = _fill(home, username, home).lstrip("/").partition("/")[0]
    return [(f"/{bucket}", bucket, "/")]


def _policy_rules(
    policy: object, mappings: list[tuple[str, str, str]], username: str, home: str
) -> dict[str, list[str]] | None:
    """Per-path permissions from a session policy, or None when there is none."""
    if policy in (None, ""):
        return None
    if isinstance(policy, str):
        try:
            policy = json.loads(_fill(policy, username, home))
        except ValueError as exc:
            raise ConfigError(f"Policy is not JSON: {exc}") from None
    if not isinstance(policy, Mapping):
        raise ConfigError("Policy must be a JSON object")
    statements = policy.get("Statement", [])
    if isinstance(statements, Mapping):
        statements = [statements]
    allowed: dict[str, set[str]] = {entry: set() for entry, _, _ in mappings}
    denied: dict[str, set[str]] = {entry: set() for entry, _, _ in mappings}
    for statement in statements:
        if not isinstance(statement, Mapping) or "NotAction" in statement or (
                "NotResource" in statement) or set(statement.get("Condition", {})) - {
                "StringLike", "StringEquals"}:  # fmt: skip
            log.warning("AWS session policy: a statement sftpd cannot map is ignored: %s",
                        json.dumps(statement)[:200])  # fmt: skip
            continue
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else list(actions)
        operations = set().union(*(_ALL if a in ("s3:*", "*") else ACTIONS.get(a, frozenset())
                                   for a in actions))  # fmt: skip
        resources = statement.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else list(resources)
        into = denied if statement.get("Effect") == "Deny" else allowed
        for entry, bucket, prefix in mappings:
            for resource in resources:
                if _covers(str(resource), bucket, prefix, operations):
                    into[entry] |= operations
    rules: dict[str, list[str]] = {}
    for entry in allowed:
        granted = allowed[entry] - denied[entry]
        if {"upload", "delete"} <= granted:
            granted.add("rename")  # a move is a put and a delete, as S3 does it
        rules[entry] = sorted(granted)
    return {"/": [], **rules}


def _covers(resource: str, bucket: str, prefix: str, operations: set[str]) -> bool:
    """Whether a policy resource covers a whole mapped target (its objects, or the bucket
    for listing).
    """
    if resource in ("*", "arn:aws:s3:::*"):
        return True
    base = resource.removeprefix("arn:aws:s3:::")
    if base == bucket:  # the bucket itself: ListBucket
        return operations <= {"list"}
    objects = base.removesuffix("*").rstrip("/")
    target = f"{bucket}{prefix}".rstrip("/")
    return objects == target or target.startswith(objects + "/") or (
        base.endswith("*") and target.startswith(objects))  # fmt: skip


def session_attributes(response: Mapping[str, Any], username: str) -> dict[str, Any]:
    """sftpd session attributes for a Transfer Family identity provider's response.

    Raises:
        ConfigError: the response is malformed (the login is then refused and logged).
    """
    home = str(response.get("HomeDirectory") or "")
    mappings = _mappings(response, username)
    mounts = [{"path": entry, "backend": bucket, "prefix": prefix}
              for entry, bucket, prefix in mappings]  # fmt: skip
    attributes: dict[str, Any] = {"mounts": mounts}
    if str(response.get("HomeDirectoryType") or "PATH").upper() == "PATH":
        attributes["home"] = _fill(home, username, home)  # where the session starts
    rules = _policy_rules(response.get("Policy"), mappings, username, home)
    if rules is not None:
        attributes["permissions"] = rules
    return attributes


Provider = Callable[[Mapping[str, Any]], "Mapping[str, Any] | Awaitable[Mapping[str, Any]]"]


class TransferIdentity:
    """An authenticator that asks a Transfer Family identity provider function.

    The function gets the event Transfer sends a Lambda (``username``, ``password``
    (empty for keys), ``protocol``, ``serverId``, ``sourceIp``) and returns its response;
    an empty response refuses. Public keys are checked against ``PublicKeys``.

    Args:
        provider: The function (sync or async), e.g. your Lambda handler wrapped as
            ``lambda event: handler(event, None)``.
        server_id: What ``serverId`` says.
    """

    def __init__(self, provider: Provider, *, server_id: str = "sftpd") -> None:
        self.provider = provider
        self.server_id = server_id

    async def _ask(self, username: str, password: str, peer: Peer) -> Mapping[str, Any] | None:
        event = {"username": username, "password": password, "protocol": "SFTP",
                 "serverId": self.server_id, "sourceIp": peer.host}  # fmt: skip
        answer = self.provider(event)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer or None

    async def authenticate_password(
        self, username: str, password: str, peer: Peer
    ) -> dict[str, Any] | None:
        """Accept the login if the provider answers with a home directory."""
        response = await self._ask(username, password, peer)
        return session_attributes(response, username) if response else None

    async def authorize_public_key(
        self, username: str, key: asyncssh.SSHKey, peer: Peer
    ) -> dict[str, Any] | None:
        """Accept a key among the provider's ``PublicKeys`` for this user."""
        response = await self._ask(username, "", peer)
        if not response:
            return None
        for line in response.get("PublicKeys") or []:
            try:
                if decode_authorized_key(str(line)).public_data == key.public_data:
                    return session_attributes(response, username)
            except ValueError:  # one bad line does not spoil the others
                log.warning("AWS identity response: an unreadable public key for %s", username)
        return None
