"""Request handling between the SFTP engine and the backend.

The engine (:mod:`sftpd._sftp.engine`) decodes a request and calls one method here. Each
method decodes and scopes its paths into the session's root, checks the session's
permissions, calls the backend, and runs through :meth:`Requests._run`, the one funnel
where every request is counted, timed, reported as a telemetry event and where whatever
it raises becomes the status the client sees.

Symbolic links are resolved here, in the client's view of the tree: a link's target is
read, taken relative to the link's directory, normalized and scoped into the session's
root again, so no link, whatever it says or whenever it was swapped in, leads out of the
root. Backends never follow links themselves.

The rooms: :mod:`.base` (the funnel, paths, permissions, links, handles and the
session's shared state), :mod:`.files` (open, read, write, close, attributes, digests),
:mod:`.tree` (names and directories) and :mod:`.wire` (attributes, flags and listings in
their wire forms). :class:`Requests` is all of them, for one channel.
"""

from __future__ import annotations

from .._sftp.handler import HandleInfo
from .base import DirHandle, SessionState, Settings, log
from .files import FileRequests, close_meta
from .tree import TreeRequests

__all__ = ["HandleInfo", "Requests", "SessionState", "Settings"]


class Requests(FileRequests, TreeRequests):
    """Serves the requests of one SFTP channel of one session from the backend."""

    async def abandon(self) -> None:
        """The channel is gone: abort its uploads (never commit them), drop its handles."""
        for name, found in list(self._handles.items()):
            if isinstance(found, DirHandle):
                await self._close_dir(found)
                self._forget(name)
                continue
            meta = close_meta(found, abandoned=True)
            try:
                await self._run("close", self._close_file(found, False, meta), meta)
            except Exception:
                log.warning("aborting %s at session end failed", found.path, exc_info=True)
            finally:
                self._forget(name)
        self._state.channels.discard(self)
