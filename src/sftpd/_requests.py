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
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import stat as stat_module
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from . import paths
from ._bandwidth import Shaper
from ._binding import BoundBackend
from ._digests import ALGORITHMS, HashCommand, choose_algorithm, hash_range
from ._handles import FileHandle, OpenMode, within
from ._ingest import Inspector
from ._policy import Operation, Policy, consult
from ._quota import QuotaLedger
from ._session import Session
from ._sftp import codec
from ._sftp.codec import WireAttrs
from ._sftp.engine import HandleInfo
from ._upload import Upload
from ._version import __version__
from .backend import AttrChanges, FileAttrs, FileType
from .errors import (
    Failure,
    FileAlreadyExists,
    InvalidParameter,
    IsADirectory,
    NoSuchFile,
    NotADirectory,
    PermissionDenied,
    SftpStatus,
    Unsupported,
    is_expected,
    to_sftp_error,
)
from .state import StateUnavailable
from .telemetry import TelemetryBus

__all__ = ["HandleInfo", "Requests", "SessionState", "Settings"]

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
    and the audit log record it): a rule's path, ``"session"``, or a denied name."""

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
    inspector: Callable[[Operation], Any] | None = None
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
    channels: set[Requests] = field(default_factory=set)
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


class _DirHandle:
    """An open directory: its listing, streamed from the backend batch by batch."""

    def __init__(self, path: str, client_path: str, head: list[tuple[str, FileAttrs]],
                 entries: AsyncIterator[Any], uploads: dict[str, FileHandle]) -> None:  # fmt: skip
        self.path = path
        self.client_path = client_path
        self.head = head
        self.entries: AsyncIterator[Any] | None = entries
        self.uploads = uploads  # own uploads in this directory not yet listed
        self.count = 0
        self.started = time.monotonic_ns()
        self.reported = False


_TYPES = {
    FileType.FILE: stat_module.S_IFREG,
    FileType.DIRECTORY: stat_module.S_IFDIR,
    FileType.SYMLINK: stat_module.S_IFLNK,
}


def wire_attrs(attrs: FileAttrs) -> bytes:
    """Backend attributes as they go on the wire."""
    return codec.encode_attrs(
        attrs.size,
        attrs.uid if attrs.uid is not None else 0,
        attrs.gid if attrs.gid is not None else 0,
        attrs.mode,
        attrs.atime if attrs.atime is not None else attrs.mtime,
        attrs.mtime,
    )


def to_changes(attrs: WireAttrs) -> AttrChanges:
    """Read what a setstat request asks to change (owner changes are ignored)."""
    return AttrChanges(
        size=attrs.size,
        permissions=attrs.permissions & 0o7777 if attrs.permissions is not None else None,
        atime=float(attrs.atime) if attrs.atime is not None else None,
        mtime=float(attrs.mtime) if attrs.mtime is not None else None,
    )


def open_mode(pflags: int) -> OpenMode:
    """Decode SFTP v3 open flags."""
    read = bool(pflags & codec.FXF_READ)
    write = bool(pflags & (codec.FXF_WRITE | codec.FXF_APPEND))
    if not read and not write:
        read = True
    mode = OpenMode(
        read=read,
        write=write,
        append=bool(pflags & codec.FXF_APPEND),
        create=bool(pflags & codec.FXF_CREAT),
        truncate=bool(pflags & codec.FXF_TRUNC),
        exclusive=bool(pflags & codec.FXF_EXCL),
    )
    if (mode.truncate or mode.create) and not mode.write:
        raise InvalidParameter("Create and truncate need write access")
    return mode


_FLAG_NAMES = (
    (codec.FXF_READ, "read"),
    (codec.FXF_WRITE, "write"),
    (codec.FXF_APPEND, "append"),
    (codec.FXF_CREAT, "create"),
    (codec.FXF_TRUNC, "truncate"),
    (codec.FXF_EXCL, "exclusive"),
)


def _flag_names(pflags: int) -> list[str]:
    return [name for bit, name in _FLAG_NAMES if pflags & bit]


def longname(name: str, attrs: FileAttrs, owner: str) -> str:
    """The ``ls -l`` line of a listing entry."""
    mode = stat_module.filemode(attrs.mode)
    nlink = "2" if attrs.is_dir else "1"
    now = time.time()
    when = time.localtime(attrs.mtime)
    recent = now - 182 * 86400 < attrs.mtime <= now + 86400
    stamp = time.strftime("%b %e %H:%M" if recent else "%b %e  %Y", when)
    return f"{mode:10s} {nlink:>4s} {owner:8s} {owner:8s} {attrs.size:>8d} {stamp:12s} {name}"


def _close_meta(handle: FileHandle, *, abandoned: bool) -> dict[str, Any]:
    return {
        "handle": handle.id,
        "path": handle.client_path,
        "mode": handle.mode.label,
        "close_timeout": handle.close_timeout,
        "abandoned": abandoned,
        "bytes_read": handle.bytes_read,
        "bytes_written": handle.bytes_written,
        "open_for": time.monotonic_ns() - handle.opened,
        "stored": False,
    }


def extensions_for(backend: BoundBackend, *, quota: bool = False) -> list[tuple[bytes, bytes]]:
    """The extensions a server on ``backend`` advertises, each one it really serves
    (statvfs with a quota even where the storage has no capacity to tell)."""
    caps = backend.capabilities
    names: list[tuple[bytes, bytes]] = [
        (b"posix-rename@openssh.com", b"1"),
        (b"lsetstat@openssh.com", b"1"),
        (b"limits@openssh.com", b"1"),
        (b"expand-path@openssh.com", b"1"),
        (b"home-directory", b"1"),
        (b"users-groups-by-id@openssh.com", b"1"),
        (b"copy-data", b"1"),
        (b"check-file-name", b"1"),
        (b"check-file-handle", b"1"),
        (b"check-file", b"1"),  # the filexfer-v6 draft's name, which paramiko sends
    ]
    if "disk_usage" in caps or quota:
        names += [(b"statvfs@openssh.com", b"2"), (b"fstatvfs@openssh.com", b"2")]
    if "hard_links" in caps:
        names.append((b"hardlink@openssh.com", b"1"))
    vendor = (
        codec.string(b"sftpd")
        + codec.string(b"sftpd")
        + codec.string(__version__.encode())
        + codec.u64(0)
    )
    names.append((b"vendor-id", vendor))
    return names


class Requests:
    """Serves the requests of one SFTP channel of one session from the backend."""

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
        self._handles: dict[bytes, FileHandle | _DirHandle] = {}
        self._next_handle = 0
        self.running = 0
        self._extensions = extensions_for(backend, quota=state.ledger is not None)
        self.advertised = frozenset(name for name, _ in self._extensions)
        self.max_open_handles = settings.max_open_handles
        # SYMLINK's arguments: OpenSSH's order (target, link) from every client but
        # asyncssh's, which sends the draft's order to servers that are not OpenSSH.
        self.target_first = "AsyncSSH" not in state.client_version
        state.channels.add(self)

    # ------------------------------------------------------------------ plumbing

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
        self, operation: str, call: Awaitable[T], meta: dict[str, Any], *, report: bool = True
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
        name = ("sftpd", "sftp", operation)
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
                if operation == "read":
                    meta["bytes"] = len(result)  # type: ignore[arg-type]
                    meta["result"] = "ok" if result else "eof"
                else:
                    meta["result"] = "ok"
                self._emit(name, start, meta)
            return result
        finally:
            self.running -= 1

    def _failed(
        self, operation: str, exc: Exception, start: int | None, meta: dict[str, Any]
    ) -> SftpStatus:
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
            self._emit(("sftpd", "sftp", operation), start, meta)
        return mapped

    def _emit(self, name: tuple[str, ...], start: int, info: dict[str, Any]) -> None:
        measurements: dict[str, float] = {"duration": time.monotonic_ns() - start}
        if "bytes" in info:
            measurements["bytes"] = info.pop("bytes")
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
        A drop box sees only its own files."""
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

    # ------------------------------------------------------------------ files

    async def open(self, raw: bytes, pflags: int, attrs: WireAttrs) -> bytes:
        """Open a file (SFTP v3 flags); returns the handle."""
        meta: dict[str, Any] = {"path": raw, "requested_modes": _flag_names(pflags)}
        return await self._run("open", self._open(raw, pflags, attrs, meta), meta)

    async def _open(self, raw: bytes, pflags: int, attrs: WireAttrs, meta: dict[str, Any]) -> bytes:
        mode = open_mode(pflags)
        meta["mode"] = mode.label
        meta["open_timeout"] = self._settings.open_timeout
        path = self._path(raw)
        name = self._new_handle()
        try:
            handle = await within(
                self._settings.open_timeout, self._open_backend(path, mode, attrs, int(name))
            )
        except TimeoutError:
            self._state.open_handles -= 1
            raise SftpStatus(codec.FX_FAILURE, "Opening the file timed out") from None
        except BaseException:
            self._state.open_handles -= 1
            raise
        self._handles[name] = handle
        if mode.write:
            self._state.uploads.setdefault(handle.path, []).append(handle)
        meta["handle"] = handle.id
        return name

    async def _open_backend(
        self, path: str, mode: OpenMode, attrs: WireAttrs, handle_id: int
    ) -> FileHandle:
        self._hidden(path)
        resolved, existing = await self._resolve(path, walk_missing=not mode.create)
        self._check_open(resolved, existing, mode)
        if mode.read:
            await self._veto("read", path)
        if mode.write:
            await self._veto("write", path)
        try:
            return await self._open_handle(resolved, existing, mode, attrs, handle_id)
        except (FileNotFoundError, PermissionError):
            if existing is not None or self._backend.read_link is None:
                raise
            # A new file whose directories may hold a link: walk them, then try again.
            walked = await self._resolve_dirs(resolved)
            if walked == resolved:
                raise
            resolved, existing = await self._resolve(walked)
            self._check_open(resolved, existing, mode)
            return await self._open_handle(resolved, existing, mode, attrs, handle_id)

    def _check_open(self, path: str, existing: FileAttrs | None, mode: OpenMode) -> None:
        """An open is a download, an upload of a new file or an overwrite of one."""
        self._hidden(path)
        own = self._own(path)
        permissions = self._session.permissions
        if existing is not None and not existing.is_dir and not own and permissions.own_files_only:
            # A drop box sees no file but its own: refuse as if it were not there to
            # read, and as existing (never overwritten) to write.
            if mode.write and not mode.read:
                raise Refused("The file exists; overwriting is not allowed", "drop box")
            raise NoSuchFile()
        if mode.read:
            self._check("download", path)
        if mode.write:
            if existing is None:
                self._check("upload", path)
                self._check_name(path)
            else:
                self._check("overwrite", path)

    async def _open_handle(
        self,
        path: str,
        existing: FileAttrs | None,
        mode: OpenMode,
        attrs: WireAttrs,
        handle_id: int,
    ) -> FileHandle:
        if existing is not None and existing.is_dir:
            raise IsADirectory()
        if mode.write:
            if path == self._root:
                raise IsADirectory()
            if existing is not None and mode.create and mode.exclusive:
                raise FileAlreadyExists()
            if existing is None and not mode.create:
                raise NoSuchFile()
        elif existing is None:
            raise NoSuchFile()
        upload = self._state.upload_of(path)
        if upload is not None and existing is not None and not mode.truncate:
            # The file is being written by this session: a new handle starts from what
            # that upload holds, not from the stored file it will replace.
            existing = upload.attrs()
        inspector = await self._inspector(path, mode, existing)
        handle = FileHandle(
            backend=self._backend,
            session=self._session,
            path=path,
            client_path=self._client(path),
            mode=mode,
            attrs=existing,
            close_timeout=self._settings.close_timeout,
            handle_id=handle_id,
            source=upload if upload is not None and not mode.write else None,
            inspector=inspector,
            digests=self._settings.upload_digests,
            quota=self._state.ledger,
        )
        await handle.start()
        if mode.write and existing is None and attrs.permissions is not None:
            # A new file gets the mode the client asked for, less the usual umask (022),
            # as OpenSSH's sftp-server creates it.
            handle.set_initial_permissions(attrs.permissions & 0o7777 & ~UMASK)
        return handle

    async def _inspector(
        self, path: str, mode: OpenMode, existing: FileAttrs | None
    ) -> Inspector | None:
        """The server's inspector for an upload of ``path``, if it wants to see this one."""
        make = self._settings.inspector
        if make is None or not mode.write:
            return None
        inspector = make(Operation(self._session, "write", self._client(path)))
        if inspect.isawaitable(inspector):
            inspector = await inspector
        if inspector is None:
            return None
        if existing is not None and not mode.truncate and existing.size:
            raise PermissionDenied("Uploads here are inspected whole: appending to or "
                                   "resuming a stored file is not allowed")  # fmt: skip
        return cast(Inspector, inspector)

    async def close(self, name: bytes) -> None:
        """Close a handle; an upload is committed, and a failed commit fails the close."""
        found = self._handles.get(name)
        if isinstance(found, _DirHandle):
            self._forget(name)
            await self._close_dir(found)
            return
        handle = self._file(name)
        meta = _close_meta(handle, abandoned=False)
        try:
            stored = await self._run("close", self._close_file(handle, True, meta), meta)
        finally:
            self._forget(name)
        if stored:
            self._state.own_files.add(handle.path)
            self._notify(handle)

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

    def _notify(self, handle: FileHandle) -> None:
        callback = self._settings.on_upload
        if callback is not None:
            callback(
                Upload(
                    session=self._session,
                    path=handle.client_path,
                    backend_path=handle.path,
                    size=handle.size,
                    bytes_written=handle.bytes_written,
                )
            )

    async def _close_file(self, handle: FileHandle, commit: bool, meta: dict[str, Any]) -> bool:
        stored = await handle.close(commit=commit)
        meta["stored"] = stored
        return stored

    async def _close_dir(self, directory: _DirHandle) -> None:
        entries, directory.entries = directory.entries, None
        closer = getattr(entries, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:
                log.debug("closing a listing of %s failed", directory.path, exc_info=True)

    async def read(self, name: bytes, offset: int, length: int) -> bytes:
        """Read from an open file; ``b""`` at the end."""
        handle = self._file(name)
        meta = {"handle": handle.id, "offset": offset, "bytes_requested": length}
        data = await self._run("read", handle.read(offset, length), meta)
        self._state.bytes_out += len(data)
        if self._state.shaper is not None:
            await self._state.shaper.pace("download", len(data))
        return data

    async def write(self, name: bytes, offset: int, data: bytes) -> None:
        """Write to an open file."""
        handle = self._file(name)
        meta = {"handle": handle.id, "offset": offset, "bytes": len(data)}
        await self._run("write", handle.write(offset, data), meta)
        self._state.bytes_in += len(data)
        if self._state.shaper is not None:
            await self._state.shaper.pace("upload", len(data))

    async def fstat(self, name: bytes) -> bytes:
        """Attributes of an open file, including what was written so far."""
        found = self._handles.get(name)
        if isinstance(found, _DirHandle):  # the directory may be gone: a status, not a crash
            meta = {"path": found.client_path.encode("utf-8")}
            return wire_attrs(await self._run("read_link_info", self._lstat(found.path), meta))
        return wire_attrs(self._file(name).attrs())

    async def fsetstat(self, name: bytes, attrs: WireAttrs) -> None:
        """Change an open file's size, times or permissions."""
        found = self._handles.get(name)
        if isinstance(found, _DirHandle):
            await self.setstat(found.client_path.encode("utf-8"), attrs)
            return
        handle = self._file(name)
        meta = {"handle": handle.id, "path": handle.client_path}
        await self._run("write_file_info", self._fsetstat(handle, attrs), meta)

    async def _fsetstat(self, handle: FileHandle, attrs: WireAttrs) -> None:
        changes = to_changes(attrs)
        self._check_setstat(handle.path, changes, handle.size, handle.mode.write)
        await self._veto("setstat", handle.path)
        await handle.set_attrs(changes)

    def _check_setstat(self, path: str, changes: AttrChanges, size: int, upload: bool) -> None:
        """A size change is an overwrite; times and modes are ``setstat``, or part of the
        upload for a file this session is uploading or uploaded."""
        own_upload = self._own(path) and self._session.permissions.allows(
            "upload", self._client(path))[0]  # fmt: skip
        resized = changes.size is not None and (changes.size != size or not upload)
        if resized and not (own_upload and upload):
            self._check("overwrite", path)
        other = AttrChanges(permissions=changes.permissions, atime=changes.atime,
                            mtime=changes.mtime)  # fmt: skip
        if not other.is_empty() and not own_upload:
            self._check("setstat", path)

    async def fstatvfs(self, name: bytes) -> bytes:
        """Capacity of the storage holding an open file."""
        found = self._handles.get(name)  # a file or a directory
        if found is None:
            raise SftpStatus(codec.FX_FAILURE, "Invalid handle")
        meta = {"path": found.client_path}
        return await self._run("disk_usage", self._statvfs(found.path), meta)

    async def copy_data(
        self, source: bytes, offset: int, length: int, target: bytes, target_offset: int
    ) -> None:
        """copy-data: copy a range of one open file into another, on the server."""
        src, dst = self._file(source), self._file(target)
        meta = {"handle": dst.id, "src_path": src.client_path, "dst_path": dst.client_path}
        await self._run("copy_data", dst.copy_from(src, offset, length, target_offset), meta)

    async def check_file(
        self, *, handle: bytes | None, raw: bytes | None, algorithms: bytes, offset: int,
        length: int, block_size: int,
    ) -> bytes:  # fmt: skip
        """check-file-handle / check-file-name: digests of a range of a file, as the
        extended reply's body (``check-file``, the algorithm used, the digests)."""
        meta: dict[str, Any] = {"offset": offset, "length": length, "path": raw}

        async def check() -> bytes:  # inside the request: every failure is a status
            algorithm = meta["algorithm"] = choose_algorithm(algorithms)
            if handle is not None:
                found = self._file(handle)
                meta["path"] = found.client_path
                digests = await self._hash_handle(found, algorithm, offset, length, block_size)
            else:
                assert raw is not None
                digests = await self._hash_path(raw, algorithm, offset, length, block_size)
            return codec.string(b"check-file") + codec.string(algorithm.encode()) + digests

        result: bytes = await self._run("check_file", check(), meta)
        return result

    async def _hash_handle(
        self, handle: FileHandle, algorithm: str, offset: int, length: int, block_size: int
    ) -> bytes:
        if not handle.mode.read:
            raise PermissionDenied("File not open for reading")
        if not handle.mode.write and self._state.upload_of(handle.path) is None:
            stored = await self._stored_digest(handle.path, handle.size, algorithm, offset,
                                               length, block_size)  # fmt: skip
            if stored is not None:
                return stored
        return await hash_range(handle.read, algorithm, offset, length, block_size)

    async def _stored_digest(
        self, path: str, size: int, algorithm: str, offset: int, length: int, block_size: int
    ) -> bytes | None:
        """The digest kept with the file, when the request is for the whole of it."""
        read = self._backend.read_digests
        whole = offset == 0 and block_size == 0 and length in (0, size)
        if read is None or not whole:
            return None
        digests = await read(path, self._session)
        value = digests.get(algorithm) if digests else None
        return bytes.fromhex(value) if value else None

    async def _hash_path(
        self, raw: bytes, algorithm: str, offset: int = 0, length: int = 0, block_size: int = 0
    ) -> bytes:
        path = self._path(raw)
        reading = OpenMode(read=True, write=False, append=False, create=False, truncate=False,
                           exclusive=False)  # fmt: skip
        handle = await within(self._settings.open_timeout,
                              self._open_backend(path, reading, WireAttrs(), -1))  # fmt: skip
        try:
            return await self._hash_handle(handle, algorithm, offset, length, block_size)
        finally:
            await handle.close(commit=False)

    async def hash_command(self, command: HashCommand) -> tuple[bytes, bytes, int]:
        """Answer one of rclone's exec commands: stdout, stderr and exit status, as the
        real command would print them."""
        if command.kind == "probe":
            return b"%ComSpec%\n", b"", 0  # what a POSIX sh prints: no Windows here
        tool = "md5sum" if command.algorithm == "md5" else "sha1sum"
        if command.kind == "empty":
            digest = ALGORITHMS[command.algorithm]().hexdigest()
            return f"{digest}  -\n".encode(), b"", 0
        name = command.path.decode("utf-8", "replace")
        try:
            meta = {"path": command.path, "algorithm": command.algorithm, "command": tool}
            work = self._hash_path(command.path, command.algorithm)
            digest = await self._run("check_file", work, meta)
        except SftpStatus as status:
            return b"", f"{tool}: {name}: {status.reason}\n".encode(), 1
        return f"{digest.hex()}  {name}\n".encode(), b"", 0

    async def fsync(self, name: bytes) -> None:
        """Not offered: an upload is stored when it is closed, and not before."""
        raise Unsupported("Data is stored when the file is closed")

    # ------------------------------------------------------------------ paths

    async def stat(self, raw: bytes) -> bytes:
        """Attributes of a path, following symbolic links."""
        return await self._run("read_file_info", self._stat(raw, follow=True), {"path": raw})

    async def lstat(self, raw: bytes) -> bytes:
        """Attributes of a path itself (a symbolic link is reported as one)."""
        return await self._run("read_link_info", self._stat(raw, follow=False), {"path": raw})

    async def _stat(self, raw: bytes, *, follow: bool) -> bytes:
        path = self._path(raw)
        self._hidden(path)
        if not follow:
            attrs: FileAttrs | None = await self._lstat(path)
        else:
            path, attrs = await self._resolve(path)
        if attrs is None:
            raise NoSuchFile()
        self._hidden(path)
        self._may_see(path, attrs)
        return wire_attrs(attrs)

    async def setstat(self, raw: bytes, attrs: WireAttrs, *, link: bool = False) -> None:
        """Change a path's size, times or permissions (``link``: of a link itself)."""
        await self._run("write_file_info", self._setstat(raw, attrs, link), {"path": raw})

    async def _setstat(self, raw: bytes, attrs: WireAttrs, link: bool) -> None:
        path = self._path(raw)
        self._hidden(path)
        if link:
            current: FileAttrs | None = await self._lstat(path)
        else:
            path, current = await self._resolve(path)
        if current is None:
            raise NoSuchFile()
        self._outside_drop_box(path, current)
        changes = to_changes(attrs)
        upload = self._state.upload_of(path)
        self._check_setstat(path, changes, current.size, upload is not None)
        await self._veto("setstat", path)
        if changes.size is not None and current.is_dir:
            raise IsADirectory()
        if changes.is_empty():
            return
        upload = self._state.upload_of(path)
        if upload is not None:
            await upload.set_attrs(changes)
            return
        if current.type is FileType.SYMLINK:
            return  # links have no mode or times of their own here; as on Linux
        if self._backend.set_attrs is not None:
            resized = changes.size is not None and changes.size != current.size
            ledger = self._state.ledger
            if resized and ledger is not None and changes.size is not None:
                if changes.size > current.size:  # room first; a shrink gives it back after
                    await ledger.change(changes.size - current.size, 0)
                    await self._backend.set_attrs(path, changes, self._session)
                    return
                await self._backend.set_attrs(path, changes, self._session)
                await ledger.change(changes.size - current.size, 0)
                return
            await self._backend.set_attrs(path, changes, self._session)
        elif changes.size is not None and changes.size != current.size:
            raise Unsupported("This storage cannot resize files")
        # Without set_attrs, times and modes are accepted and ignored: clients such as
        # WinSCP set them after every upload and must not fail because of it.

    async def opendir(self, raw: bytes) -> bytes:
        """Open a directory for listing; fails here if it is missing or a file."""
        meta: dict[str, Any] = {"path": raw, "entries": 0}
        return await self._run("list_dir", self._opendir(raw), meta, report=False)

    async def _opendir(self, raw: bytes) -> bytes:
        self._hidden(self._path(raw))
        self._check("list", self._path(raw))
        await self._veto("list", self._path(raw))
        directory, attrs = await self._resolve(self._path(raw))
        if attrs is None:
            raise NoSuchFile()
        if not attrs.is_dir:
            raise NotADirectory()
        self._check("list", directory)
        parent = paths.parent(directory) if directory != self._root else directory
        parent_attrs = attrs if parent == directory else await self._lstat(parent)
        prefix = directory.rstrip("/") + "/"
        uploads = {
            path[len(prefix) :]: handles[-1]
            for path, handles in self._state.uploads.items()
            if handles and paths.parent(path) == directory and path.startswith(prefix)
        }
        name = self._new_handle()
        self._handles[name] = _DirHandle(
            directory,
            self._client(directory),
            [(".", attrs), ("..", parent_attrs)],
            self._backend.list_dir(directory, self._session).__aiter__(),
            uploads,
        )
        return name

    async def readdir(self, name: bytes) -> list[tuple[bytes, bytes, bytes]]:
        """The next batch of a listing; empty at the end."""
        found = self._get(name, _DirHandle)
        meta: dict[str, Any] = {"path": found.client_path, "entries": found.count}
        batch = await self._run("list_dir", self._readdir(found, meta), meta, report=False)
        if found.entries is None and not found.reported:
            found.reported = True
            event = ("sftpd", "sftp", "list_dir")
            if self._bus.listening(event):
                meta["result"] = "ok"
                self._emit(event, found.started, meta)
        return batch

    async def _readdir(
        self, directory: _DirHandle, meta: dict[str, Any]
    ) -> list[tuple[bytes, bytes, bytes]]:
        batch: list[tuple[str, FileAttrs]] = directory.head
        directory.head = []
        entries = directory.entries
        while entries is not None and len(batch) < READDIR_BATCH:
            try:
                entry = await entries.__anext__()
            except StopAsyncIteration:
                directory.entries = entries = None
                batch.extend((n, h.attrs()) for n, h in directory.uploads.items())
                directory.uploads = {}
                break
            if entry.name in (".", "..") or "/" in entry.name:
                continue
            if not self._listed(directory.path, entry.name, entry.attrs):
                continue
            upload = directory.uploads.pop(entry.name, None)
            batch.append((entry.name, upload.attrs() if upload is not None else entry.attrs))
        self._state.last_active = time.monotonic()
        directory.count += sum(1 for n, _ in batch if n not in (".", ".."))
        meta["entries"] = directory.count
        owner = self._session.username
        return [
            (n.encode("utf-8"), longname(n, a, owner).encode("utf-8"), wire_attrs(a))
            for n, a in batch
        ]

    def _listed(self, directory: str, name: str, attrs: FileAttrs) -> bool:
        """Whether a listing shows this entry: not a hidden name, and for a drop box
        only directories and the session's own files."""
        permissions = self._session.permissions
        if permissions.hidden_names and permissions.hides(name):
            return False
        if permissions.own_files_only and not attrs.is_dir:
            return self._own(paths.join(directory, name))
        return True

    async def remove(self, raw: bytes) -> None:
        """Remove a file."""
        await self._run("delete", self._remove(raw), {"path": raw})

    async def _remove(self, raw: bytes) -> None:
        path = self._path(raw)
        self._hidden(path)
        self._check("delete", path)
        self._refuse_root(path, "remove")
        await self._veto("remove", path)
        ledger = self._state.ledger
        gone = await self._file_size(path) if ledger is not None else None
        await self._backend.remove_file(path, self._session)
        self._state.own_files.discard(path)
        if ledger is not None and gone is not None:
            await ledger.change(-gone, -1)

    async def _file_size(self, path: str) -> int | None:
        """The size of the regular file at ``path``; None if there is none (for quotas)."""
        try:
            attrs: FileAttrs = await self._backend.stat(path, self._session)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return attrs.size if attrs.is_file else None

    async def mkdir(self, raw: bytes, attrs: WireAttrs) -> None:
        """Create a directory."""
        await self._run("make_dir", self._mkdir(raw, attrs), {"path": raw})

    async def _mkdir(self, raw: bytes, attrs: WireAttrs) -> None:
        path = self._path(raw)
        self._hidden(path)
        self._check("mkdir", path)
        self._check_name(path)
        if path == self._root:
            raise FileAlreadyExists()
        await self._veto("mkdir", path)
        await self._backend.make_dir(path, self._session)
        if attrs.permissions is not None and self._backend.set_attrs is not None:
            changes = AttrChanges(permissions=attrs.permissions & 0o7777 & ~UMASK)
            await self._backend.set_attrs(path, changes, self._session)

    async def rmdir(self, raw: bytes) -> None:
        """Remove an empty directory."""
        await self._run("del_dir", self._rmdir(raw), {"path": raw})

    async def _rmdir(self, raw: bytes) -> None:
        path = self._path(raw)
        self._hidden(path)
        self._check("rmdir", path)
        self._refuse_root(path, "remove")
        await self._veto("rmdir", path)
        await self._backend.remove_dir(path, self._session)

    async def rename(self, old: bytes, new: bytes, *, overwrite: bool) -> None:
        """Rename; ``overwrite`` (posix-rename) replaces an existing target."""
        meta = {"src_path": old, "dst_path": new, "overwrite": overwrite}
        await self._run("rename", self._rename(old, new, overwrite), meta)

    async def _rename(self, raw_src: bytes, raw_dst: bytes, overwrite: bool) -> None:
        src, dst = self._path(raw_src), self._path(raw_dst)
        self._hidden(src)
        self._hidden(dst)
        self._check("rename", src)
        self._check("rename", dst)
        self._check_name(dst)
        self._refuse_root(src, "rename")
        self._refuse_root(dst, "replace")
        if self._session.permissions.own_files_only and not self._own(src):
            raise NoSuchFile()
        ledger = self._state.ledger
        counted = ledger is not None and src != dst  # a replaced file gives its space back
        guarded = overwrite and not self._session.permissions.allows(
            "overwrite", self._client(dst))[0]  # fmt: skip
        # One stat of the target serves both: the overwrite check and the quota.
        replaced = await self._file_size(dst) if guarded or counted else None
        if guarded and replaced is not None:
            self._check("overwrite", dst)
        await self._veto("rename", src, dst)
        await self._backend.rename(src, dst, self._session, overwrite=overwrite)
        if src in self._state.own_files:
            self._state.own_files.discard(src)
            self._state.own_files.add(dst)
        if ledger is not None and counted and replaced is not None:
            await ledger.change(-replaced, -1)

    async def realpath(self, raw: bytes) -> str:
        """Canonical form of a client path, as the client sees it."""
        return await self._run("get_cwd", self._realpath(raw), {"path": raw})

    async def _realpath(self, raw: bytes) -> str:
        return paths.normalize(paths.decode(raw), self._home_dir)

    async def expand_path(self, raw: bytes) -> str:
        """expand-path: like realpath, with ``~`` and ``~/...`` taken from the home."""
        return await self._run("get_cwd", self._expand(raw), {"path": raw})

    async def _expand(self, raw: bytes) -> str:
        text = paths.decode(raw)
        if text == "~" or text.startswith("~/"):
            text = self._home_dir + "/" + text[2:]
        elif text.startswith("~"):
            user = text[1:].partition("/")[0]
            if user != self._session.username:
                raise NoSuchFile("Unknown user")
            text = self._home_dir + "/" + text[1 + len(user) :].lstrip("/")
        return paths.normalize(text, self._home_dir)

    async def home_directory(self, raw_user: bytes) -> str:
        """home-directory: the session's home (``/`` unless the ``home`` attribute says),
        for its own user only."""
        return await self._run("get_cwd", self._home(raw_user), {"path": b"/"})

    async def _home(self, raw_user: bytes) -> str:
        user = raw_user.decode("utf-8", "replace")
        if user and user != self._session.username:
            raise NoSuchFile("Unknown user")
        return self._home_dir

    async def statvfs(self, raw: bytes) -> bytes:
        """Capacity of the storage holding a path."""
        return await self._run("disk_usage", self._statvfs(raw), {"path": raw})

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

    async def readlink(self, raw: bytes) -> str:
        """The target of a symbolic link, as it was written."""
        return await self._run("read_link", self._readlink(raw), {"path": raw})

    async def _readlink(self, raw: bytes) -> str:
        path = self._path(raw)
        if self._backend.read_link is None:
            raise Unsupported("Symbolic links are not supported")
        attrs = await self._lstat(path)
        if attrs.type is not FileType.SYMLINK:
            raise InvalidParameter("Not a symbolic link")
        target: str = await self._backend.read_link(path, self._session)
        return target

    async def symlink(self, raw_target: bytes, raw_link: bytes) -> None:
        """Create a symbolic link at ``raw_link`` that points to ``raw_target``."""
        meta = {"src_path": raw_target, "dst_path": raw_link}
        await self._run("make_symlink", self._symlink(raw_target, raw_link), meta)

    async def _symlink(self, raw_target: bytes, raw_link: bytes) -> None:
        link = self._path(raw_link)
        self._hidden(link)
        self._check("symlink", link)
        self._check_name(link)
        if self._backend.make_symlink is None:
            raise Unsupported("Symbolic links are not supported")
        self._refuse_root(link, "replace")
        target = paths.decode(raw_target)
        if not target:
            raise InvalidParameter("Empty link target")
        await self._veto("symlink", link)
        await self._backend.make_symlink(target, link, self._session)

    async def hardlink(self, raw_old: bytes, raw_new: bytes) -> None:
        """hardlink@openssh.com: a second name for an existing file."""
        meta = {"src_path": raw_old, "dst_path": raw_new}
        await self._run("make_link", self._hardlink(raw_old, raw_new), meta)

    async def _hardlink(self, raw_old: bytes, raw_new: bytes) -> None:
        old, new = self._path(raw_old), self._path(raw_new)
        self._hidden(old)
        self._hidden(new)
        self._check("link", new)
        self._check("download", old)  # a second name to read it by
        self._check_name(new)
        if self._backend.make_link is None:
            raise Unsupported("Hard links are not supported")
        self._refuse_root(new, "replace")
        attrs = await self._lstat(old)
        if attrs.is_dir:
            raise PermissionDenied("Directories cannot be hard-linked")
        await self._veto("link", old, new)
        await self._backend.make_link(old, new, self._session)

    # ------------------------------------------------------------------ the end

    async def abandon(self) -> None:
        """The channel is gone: abort its uploads (never commit them), drop its handles."""
        for name, found in list(self._handles.items()):
            if isinstance(found, _DirHandle):
                await self._close_dir(found)
                self._forget(name)
                continue
            meta = _close_meta(found, abandoned=True)
            try:
                await self._run("close", self._close_file(found, False, meta), meta)
            except Exception:
                log.warning("aborting %s at session end failed", found.path, exc_info=True)
            finally:
                self._forget(name)
        self._state.channels.discard(self)
