"""The plumbing every request shares: the funnel, paths, permissions, links, handles."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .. import paths
from .._bandwidth import Shaper
from .._binding import BoundBackend
from .._handles import FileHandle
from .._ingest import MakeInspector
from .._policy import Operation, Policy, consult
from .._quota import QuotaLedger
from .._session import Session
from .._sftp import codec
from .._sftp.handler import HandleInfo
from .._upload import Upload
from ..backend import AttrChanges, DirEntry, FileAttrs, FileType
from ..errors import (
    Failure,
    NoSuchFile,
    PermissionDenied,
    SftpStatus,
    Unsupported,
    is_expected,
    to_sftp_error,
)
from ..state import StateUnavailable
from ..telemetry import SFTP_EVENTS, Meta, TelemetryBus
from .wire import extensions_for

__all__ = ["REFUSALS", "DirHandle", "Refused", "RequestBase", "SessionState", "Settings"]

log = logging.getLogger("sftpd")

T = TypeVar("T")
H = TypeVar("H")

#: Entries per READDIR reply at most (OpenSSH's sftp-server sends 100).
READDIR_BATCH = 100
#: Symbolic links followed for one path at most, as Linux's MAXSYMLINKS.
MAX_LINKS = 40
#: Taken off the modes clients ask for new files and directories, as a POSIX umask.
UMASK = 0o022

#: What the client reads when an operation is refused by the session's permissions.
REFUSALS = {
    "list": "Listing directories is not allowed",
    "download": "Downloads are not allowed",
    "upload": "Uploads are not allowed",
    "overwrite": "Overwriting files is not allowed",
    "delete": "Deleting is not allowed",
    "rename": "Renaming is not allowed",
    "mkdir": "Creating directories is not allowed",
    "rmdir": "Removing directories is not allowed",
    "setstat": "Changing files is not allowed",
    "symlink": "Creating links is not allowed",
    "link": "Creating links is not allowed",
}


class Refused(PermissionDenied):
    """A request the session's permissions refuse; ``rule`` is what decided (telemetry
    and the audit log record it): a rule's path, ``"session"``, or a denied name.
    """

    def __init__(self, reason: str, rule: str) -> None:
        super().__init__(reason)
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Settings:
    """What a server's configuration says about serving requests."""

    open_timeout: float = 30.0
    close_timeout: float = 30.0
    max_open_handles: int = 32
    on_upload: Callable[[Upload], None] | None = None
    policy: Policy | None = None
    inspector: MakeInspector | None = None
    upload_digests: tuple[str, ...] = ()


@dataclass(slots=True)
class SessionState:
    """What every SFTP channel of one session shares: its open handles and uploads.

    Open files and directories are counted across all channels, so opening more channels
    never raises the session's limit. A file being uploaded is visible to its own session
    from the open on (stat and listings report it with its current size); other sessions
    see it only once the upload is committed.
    """

    session: Session
    client_version: str = ""
    open_handles: int = 0
    uploads: dict[str, list[FileHandle]] = field(default_factory=dict)
    last_active: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    channels: set[RequestBase] = field(default_factory=set)
    ledger: QuotaLedger | None = None
    shaper: Shaper | None = None
    own_files: set[str] = field(default_factory=set)  # uploaded by this session

    def upload_of(self, path: str) -> FileHandle | None:
        """The latest open upload of ``path`` in this session, if any."""
        handles = self.uploads.get(path)
        return handles[-1] if handles else None

    @property
    def busy(self) -> bool:
        """True while any channel has a request running or a handle open."""
        return any(channel.busy for channel in self.channels)

    @property
    def in_flight(self) -> bool:
        """True while any channel has a request running."""
        return any(channel.running for channel in self.channels)


class DirHandle:
    """An open directory: its listing, streamed from the backend batch by batch."""

    def __init__(
        self,
        path: str,
        client_path: str,
        head: list[tuple[str, FileAttrs]],
        entries: AsyncIterator[DirEntry],
        uploads: dict[str, FileHandle],
    ) -> None:
        self.path = path
        self.client_path = client_path
        self.head = head
        self.entries: AsyncIterator[DirEntry] | None = entries
        self.uploads = uploads  # own uploads in this directory not yet listed
        self.count = 0
        self.started = time.monotonic_ns()
        self.reported = False


class RequestBase:
    """What every request of one SFTP channel needs: the funnel, paths and handles."""

    def __init__(
        self,
        backend: BoundBackend,
        state: SessionState,
        bus: TelemetryBus,
        settings: Settings,
    ) -> None:
        self._backend = backend
        self._state = state
        self._session = state.session
        self._root = state.session.root
        # Where relative paths start and realpath(".") answers: the "home" attribute.
        self._home_dir = paths.normalize(
            paths.decode(str(state.session.attributes.get("home", "/")))
        )
        self._bus = bus
        self._settings = settings
        self._handles: dict[bytes, FileHandle | DirHandle] = {}
        self._next_handle = 0
        self.running = 0
        self._extensions = extensions_for(backend, quota=state.ledger is not None)
        self.advertised = frozenset(name for name, _ in self._extensions)
        self.max_open_handles = settings.max_open_handles
        # SYMLINK's arguments: OpenSSH's order (target, link) from every client but
        # asyncssh's, which sends the draft's order to servers that are not OpenSSH.
        self.target_first = "AsyncSSH" not in state.client_version
        state.channels.add(self)

    @property
    def session(self) -> Session:
        """The session this channel belongs to."""
        return self._session

    @property
    def busy(self) -> bool:
        """True while a request runs or a handle is open (a graceful stop waits)."""
        return self.running > 0 or bool(self._handles)

    def extensions(self) -> list[tuple[bytes, bytes]]:
        """The ``SSH_FXP_VERSION`` extension pairs."""
        return self._extensions

    async def _run(
        self, operation: str, call: Awaitable[T], meta: Meta, *, report: bool = True
    ) -> T:
        """Run one request: count it, emit its event, translate what it raises.

        Args:
            operation: The catalog name (``read``, ``make_dir``...), also the event name.
            call: The work.
            meta: Event metadata; ``bytes`` here becomes a measurement.
            report: Emit the event on success too (listings report once, at their end).
        """
        self.running += 1
        self._state.last_active = time.monotonic()
        name = SFTP_EVENTS[operation]
        listening = self._bus.listening(name)
        start = time.monotonic_ns() if listening else 0
        try:
            result = await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise self._failed(operation, exc, start if listening else None, meta) from exc
        else:
            if listening and report:
                if operation == "read" and isinstance(result, bytes):  # its size; the end?
                    meta["bytes"] = len(result)
                    meta["result"] = "ok" if result else "eof"
                else:
                    meta["result"] = "ok"
                self._emit(name, start, meta)
            return result
        finally:
            self.running -= 1

    def _failed(self, operation: str, exc: Exception, start: int | None, meta: Meta) -> SftpStatus:
        """Log a failed request, emit its event (when ``start`` is given), map it."""
        expected = is_expected(exc)
        if expected:
            log.debug("%s failed for %s: %s", operation, self._session.username, exc)
        else:
            log.exception(
                "unexpected error in %s for session %s (%s)",
                operation,
                self._session.id,
                self._session.username,
            )
        mapped = to_sftp_error(exc)
        if start is not None:
            if isinstance(exc, Refused):
                meta["rule"] = exc.rule
            if expected:
                meta.update(result="error", reason=mapped.reason, code=mapped.code)
            else:
                meta.update(result="exception", kind=type(exc).__name__, reason=str(exc))
            self._emit(SFTP_EVENTS[operation], start, meta)
        return mapped

    def _emit(self, name: tuple[str, ...], start: int, info: Meta) -> None:
        measurements: dict[str, float] = {"duration": time.monotonic_ns() - start}
        moved = info.pop("bytes", None)
        if isinstance(moved, int):
            measurements["bytes"] = moved
        for key in ("path", "src_path", "dst_path"):
            value = info.get(key)
            if isinstance(value, bytes):
                info[key] = paths.normalize(value.decode("utf-8", "replace"))
        info["backend"] = self._backend.name
        info["backend_kind"] = self._backend.kind
        self._bus.execute(name, measurements, info, self._session)

    def _path(self, raw: bytes) -> str:
        """Decode a client path (relative ones from the home) and scope it into the root."""
        text = paths.decode(raw)
        if self._home_dir != "/" and not text.startswith("/"):
            text = paths.normalize(text, self._home_dir)
        return paths.scope(self._root, text)

    def _client(self, path: str) -> str:
        return paths.unscope(self._root, path)

    def _check(self, operation: str, path: str) -> None:
        """Refuse ``operation`` at ``path`` (scoped) unless the permissions allow it there."""
        allowed, rule = self._session.permissions.allows(operation, self._client(path))
        if not allowed:
            raise Refused(REFUSALS[operation], rule)

    def _check_name(self, path: str) -> None:
        """Refuse to create a name the permissions deny (``*.exe``...)."""
        pattern = self._session.permissions.denies_name(paths.basename(path))
        if pattern is not None:
            raise Refused(f"Names like {pattern} are not allowed", f"denied name {pattern}")

    def _hidden(self, path: str) -> None:
        """A hidden name is missing to every request."""
        if self._session.permissions.hides(self._client(path)):
            raise NoSuchFile()

    def _own(self, path: str) -> bool:
        """True for a file this session uploaded (or is uploading)."""
        return path in self._state.own_files or self._state.upload_of(path) is not None

    def _outside_drop_box(self, path: str, attrs: FileAttrs) -> None:
        """A drop box sees no file but its own: any other is missing to it."""
        permissions = self._session.permissions
        if permissions.own_files_only and not attrs.is_dir and not self._own(path):
            raise NoSuchFile()

    def _may_see(self, path: str, attrs: FileAttrs) -> None:
        """Stat of a file needs ``list`` or ``download`` there, or that the session
        uploaded it; a directory's always answers (clients need it to cd and upload).
        A drop box sees only its own files.
        """
        if attrs.is_dir or self._own(path):
            return
        permissions = self._session.permissions
        client = self._client(path)
        self._outside_drop_box(path, attrs)
        for operation in ("list", "download"):
            if permissions.allows(operation, client)[0]:
                return
        raise Refused("Not allowed to see this file", permissions.allows("list", client)[1])

    async def _veto(self, name: str, path: str, target: str | None = None) -> None:
        """Ask the server's policy, if it has one, before touching the backend."""
        policy = self._settings.policy
        if policy is not None:
            client_target = None if target is None else self._client(target)
            await consult(policy, Operation(self._session, name, self._client(path),
                                            client_target))  # fmt: skip

    def _refuse_root(self, path: str, action: str) -> None:
        if path == self._root:
            raise PermissionDenied(f"Cannot {action} the top directory")

    async def _lstat(self, path: str) -> FileAttrs:
        """A path's own attributes; an upload of this session shows as it is now."""
        upload = self._state.upload_of(path)
        if upload is not None:
            return upload.attrs()
        attrs: FileAttrs = await self._backend.stat(path, self._session)
        return attrs

    async def _resolve(
        self, path: str, *, walk_missing: bool = True
    ) -> tuple[str, FileAttrs | None]:
        """Follow symbolic links in the client's view; ``None`` attrs: nothing there.

        The last component's links are followed directly. Links among the directories
        (``/link/file``) make the backend fail the lookup; only then is the path walked
        one directory at a time, so a path without links costs one lookup. With
        ``walk_missing`` false, a path that is simply missing is not walked (a create
        walks only if the backend then fails to create it).
        """
        walked = False
        for _ in range(MAX_LINKS):
            try:
                attrs = await self._lstat(path)
            except (FileNotFoundError, PermissionError) as exc:
                missing = isinstance(exc, FileNotFoundError)
                can_walk = walk_missing or not missing
                if self._backend.read_link is not None and not walked and can_walk:
                    walked = True
                    path = await self._resolve_dirs(path)
                    continue
                if isinstance(exc, FileNotFoundError):
                    return path, None
                raise
            if attrs.type is not FileType.SYMLINK:
                return path, attrs
            path = await self._link_target(path)
        raise SftpStatus(codec.FX_FAILURE, "Too many levels of symbolic links")

    async def _resolve_dirs(self, path: str) -> str:
        """``path`` with every link among its directories followed, inside the root."""
        parts = [p for p in self._client(path).split("/") if p]
        here, index, hops = "/", 0, 0
        while index < len(parts) - 1:
            step = paths.join(here, parts[index])
            scoped = paths.scope(self._root, step)
            try:
                attrs = await self._lstat(scoped)
            except FileNotFoundError:
                return path
            if attrs.type is FileType.SYMLINK:
                hops += 1
                if hops > MAX_LINKS:
                    raise SftpStatus(codec.FX_FAILURE, "Too many levels of symbolic links")
                target = self._client(await self._link_target(scoped))
                parts = [p for p in target.split("/") if p] + parts[index + 1 :]
                here, index = "/", 0
                continue
            here, index = step, index + 1
        return paths.scope(self._root, paths.join(here, parts[-1]) if parts else here)

    async def _link_target(self, path: str) -> str:
        """Where the link at ``path`` points, scoped into the root again."""
        if self._backend.read_link is None:
            raise PermissionDenied("Symbolic links are not followed")
        target: str = await self._backend.read_link(path, self._session)
        client_dir = paths.parent(self._client(path))
        return paths.scope(self._root, paths.normalize(paths.decode(target), client_dir))

    def _get(self, handle: bytes, kind: type[H]) -> H:
        """The open handle of that kind named ``handle``, or the client's "invalid handle"."""
        found = self._handles.get(handle)
        if not isinstance(found, kind):
            raise SftpStatus(codec.FX_FAILURE, "Invalid handle")
        return found

    def _file(self, handle: bytes) -> FileHandle:
        return self._get(handle, FileHandle)

    def handle_info(self, handle: bytes) -> HandleInfo | None:
        """How requests on ``handle`` are ordered; ``None`` for an unknown handle."""
        found = self._handles.get(handle)
        if not isinstance(found, FileHandle):
            return None
        return HandleInfo(
            upload=found.mode.write,
            append=found.mode.append,
            concurrent_writes=found.concurrent_writes,
        )

    def _new_handle(self) -> bytes:
        """A name for a new handle, its place in the session's limit taken (or refused)."""
        if self._state.open_handles >= self.max_open_handles:
            raise SftpStatus(
                codec.FX_FAILURE,
                f"Too many open files (at most {self.max_open_handles} per session)",
            )
        self._state.open_handles += 1
        self._next_handle += 1
        return str(self._next_handle).encode()

    def owner_names(self, owner_id: int) -> bytes:
        """The name shown for any owner or group id: the session's user."""
        return self._session.username.encode("utf-8")

    def _forget(self, name: bytes) -> None:
        """Drop a handle: its place in the session's limit, and its upload's visibility."""
        handle = self._handles.pop(name, None)
        if handle is None:
            return
        self._state.open_handles -= 1
        uploads = self._state.uploads.get(handle.path)
        if isinstance(handle, FileHandle) and uploads is not None and handle in uploads:
            uploads.remove(handle)
            if not uploads:
                del self._state.uploads[handle.path]

    async def _close_file(self, handle: FileHandle, commit: bool, meta: Meta) -> bool:
        stored = await handle.close(commit=commit)
        meta["stored"] = stored
        return stored

    async def _close_dir(self, directory: DirHandle) -> None:
        entries, directory.entries = directory.entries, None
        closer = getattr(entries, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:
                log.debug("closing a listing of %s failed", directory.path, exc_info=True)

    def _check_setstat(self, path: str, changes: AttrChanges, size: int, upload: bool) -> None:
        """A size change is an overwrite; times and modes are ``setstat``, or part of the
        upload for a file this session is uploading or uploaded.
        """
        own_upload = self._own(path) and self._session.permissions.allows(
            "upload", self._client(path))[0]  # fmt: skip
        resized = changes.size is not None and (changes.size != size or not upload)
        if resized and not (own_upload and upload):
            self._check("overwrite", path)
        other = AttrChanges(permissions=changes.permissions, atime=changes.atime,
                            mtime=changes.mtime)  # fmt: skip
        if not other.is_empty() and not own_upload:
            self._check("setstat", path)

    async def _file_size(self, path: str) -> int | None:
        """The size of the regular file at ``path``; None if there is none (for quotas)."""
        try:
            attrs: FileAttrs = await self._backend.stat(path, self._session)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return attrs.size if attrs.is_file else None

    async def _statvfs(self, where: bytes | str) -> bytes:
        # A client's path is decoded here, inside the request: a bad name is its error.
        path = self._path(where) if isinstance(where, bytes) else where
        ledger = self._state.ledger
        if self._backend.disk_usage is None and ledger is None:
            raise Unsupported("This storage does not report its capacity")
        info = (await self._backend.disk_usage(path, self._session)
                if self._backend.disk_usage is not None else None)  # fmt: skip
        block = max(1, info.block_size) if info is not None else 4096
        total = info.total if info is not None else 0
        free = info.free if info is not None else 0
        files = free_files = 0
        if ledger is not None:  # df shows the quota (and the storage's room, if less)
            block = 1024  # df's unit, so a quota shows to the KiB
            quota = ledger.quota
            try:
                usage = await ledger.usage()
            except StateUnavailable:
                raise Failure("Storage quota cannot be checked now; try again later") from None
            used = usage.bytes + usage.reserved_bytes if usage is not None else 0
            if quota.max_bytes is not None:
                room = max(0, quota.max_bytes - used)
                total, free = quota.max_bytes, room if info is None else min(room, free)
            if quota.max_files is not None:
                in_use = usage.files + usage.reserved_files if usage is not None else 0
                files, free_files = quota.max_files, max(0, quota.max_files - in_use)
        name_max = info.max_name_length if info is not None else 255
        fields = (block, block, total // block, free // block, free // block,
                  files, free_files, free_files, 0, 0, name_max)  # fmt: skip
        return b"".join(codec.u64(n) for n in fields)
