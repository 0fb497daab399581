"""Policy: one callable consulted before each operation, which may refuse it.

``policy(request)`` gets an :class:`Operation` (the session, what, where) before the
request touches the backend, sync or async. It allows by returning None or True, and
refuses by returning False ("Refused by policy"), a string (the reason the client
sees), or by raising :class:`~sftpd.PermissionDenied`. Refusals are reported like any
failed request (telemetry and audit, with the reason).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import PermissionDenied

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["Operation", "Policy", "consult"]


@dataclass(frozen=True, slots=True)
class Operation:
    """An operation about to run, as a policy sees it.

    Attributes:
        session: Who asks.
        name: ``"read"`` (open for reading), ``"write"`` (open for writing: upload,
            overwrite, append), ``"list"``, ``"remove"``, ``"rename"``, ``"mkdir"``,
            ``"rmdir"``, ``"setstat"``, ``"symlink"`` or ``"link"``.
        path: The path as the client names it (inside the session's root).
        target: The second path of a rename or link (the new name), else None.
    """

    session: Session
    name: str
    path: str
    target: str | None = None


Policy = Callable[[Operation], "bool | str | Awaitable[bool | str | None] | None"]


async def consult(policy: Policy, operation: Operation) -> None:
    """Ask ``policy``; raise PermissionDenied with its reason if it refuses."""
    verdict = policy(operation)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    if verdict is None or verdict is True:
        return
    if verdict is False:
        raise PermissionDenied("Refused by policy")
    if isinstance(verdict, str):
        raise PermissionDenied(verdict or "Refused by policy")
    raise TypeError(f"a policy returns None, True, False or a reason, not {verdict!r}")
