"""One namespace over several backends: virtual folders, per session if need be.

    from sftpd.backends.mounts import Mount, MountBackend
    backend = MountBackend([
        Mount("/inbox", S3Backend("uploads"), prefix="/tenants/{username}"),
        Mount("/archive", LocalBackend("/srv/archive"), read_only=True),
        Mount("/scratch", MemoryBackend()),
    ])

A session sees the mounts as directories; the directories above mount points (``/``, or
``/shared`` above ``/shared/team``) are virtual: they list the mount points below them
and refuse to hold anything else. Every path inside a mount goes to that mount's backend
as ``prefix`` + the rest, with ``{username}`` or ``{any_attribute}`` of the session put
into the prefix (a value holding ``/`` or ``..`` refuses the session's access there).

- A session's own ``mounts`` attribute (a list of ``{"path", "backend", "prefix",
  "read_only"}``, ``backend`` naming one of ``backends``) replaces the default mounts:
  that is how an authenticator gives each user their own folders, and what
  :mod:`sftpd.integrations.aws_transfer` builds from an AWS Transfer Family response.
- A rename within one mount is that backend's rename; across mounts it is refused
  ("Cannot move between mounts"): a move on S3 between buckets would be a full copy the
  client did not ask for. Clients copy instead (download and upload, or copy-data).
- Capabilities are those of the mount a path falls in: statvfs answers for that mount,
  links, times and digests work where its backend has them and are refused (or, for
  times, ignored) where it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import string
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import paths
from .._binding import (
    BoundBackend,
    BoundWriter,
    bind_backend,
    bind_writer,
    start_backend,
    stop_backend,
)
from .._session import Session
from ..backend import AttrChanges, DirEntry, FileAttrs, Reader, SpaceInfo, directory_info
from ..errors import ConfigError, FileAlreadyExists, NoSuchFile, PermissionDenied, Unsupported

__all__ = ["Mount", "MountBackend"]

_FIELDS = string.Formatter()


@dataclass(frozen=True, slots=True)
class Mount:
    """A backend shown at ``path``.

    Attributes:
        path: Where the session sees it (``/inbox``). A mount at ``/`` holds every path
            no deeper mount does; the deeper ones show in its listings.
        backend: Any backend object, or the name of one of the ``MountBackend``'s
            ``backends``.
        prefix: Where in that backend the mount starts; ``{username}`` and
            ``{attribute}`` are taken from the session.
        read_only: Refuse every change inside it.
    """

    path: str
    backend: object
    prefix: str = "/"
    read_only: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ConfigError(f"a mount's path must be absolute, got {self.path!r}")
        object.__setattr__(self, "path", paths.normalize(self.path))
        if not isinstance(self.prefix, str):
            raise ConfigError(f"mount {self.path}: prefix must be a string")
        prefix = self.prefix if self.prefix.startswith("/") else "/" + self.prefix
        try:
            fields = [f for _, f, _, _ in _FIELDS.parse(prefix) if f is not None]
        except ValueError as exc:
            raise ConfigError(f"mount {self.path}: prefix {self.prefix!r}: {exc}") from None
        if any(not f.isidentifier() for f in fields):
            raise ConfigError(f"mount {self.path}: prefix placeholders must be names such "
                              f"as {{username}}, got {self.prefix!r}")  # fmt: skip
        object.__setattr__(self, "prefix", prefix)

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any], backends: Mapping[str, object]) -> Mount:
        """A mount from ``{"path", "backend", "prefix", "read_only"}``, naming a backend.

        Raises:
            ConfigError: a key is unknown or missing, or the backend is not one of
                ``backends``.
        """
        unknown = set(value) - {"path", "backend", "prefix", "read_only"}
        if unknown or "path" not in value or "backend" not in value:
            raise ConfigError(f"a mount needs path and backend (and may have prefix, "
                              f"read_only), got {dict(value)!r}")  # fmt: skip
        name = value["backend"]
        if not isinstance(name, str) or name not in backends:
            raise ConfigError(f"mount {value['path']}: unknown backend {name!r}; known: "
                              f"{', '.join(sorted(backends)) or 'none'}")  # fmt: skip
        return cls(str(value["path"]), name, str(value.get("prefix", "/")),
                   bool(value.get("read_only", False)))  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a namespace path leads: a mount (and the backend's path), or virtual."""

    mount: Mount | None
    bound: BoundBackend | None
    inner: str


class MountBackend:
    """A backend that composes other backends under paths (see the module docstring).

    Args:
        mounts: The mounts every session sees unless its ``mounts`` attribute says
            otherwise.
        backends: Named backends that mounts (and sessions' ``mounts``) may name.

    Raises:
        ConfigError: two mounts at one path, or a name no backend has.
    """

    def __init__(
        self, mounts: Sequence[Mount] = (), *, backends: Mapping[str, object] | None = None
    ) -> None:
        self._named = dict(backends or {})
        self._bound: dict[int, BoundBackend] = {}
        for backend in self._named.values():
            self._bind(backend)
        self.mounts = self._check(mounts)
        self._sessions: dict[str, tuple[Mount, ...]] = {}
        self._prepared: set[tuple[str, str]] = set()  # (inner backend id, prefix) made

    def __repr__(self) -> str:
        return f"MountBackend({', '.join(m.path for m in self.mounts)})"

    def _bind(self, backend: object) -> BoundBackend:
        bound = self._bound.get(id(backend))
        if bound is None:
            bound = self._bound[id(backend)] = bind_backend(backend)
        return bound

    def _backend_of(self, mount: Mount) -> BoundBackend:
        backend = mount.backend
        if isinstance(backend, str):
            if backend not in self._named:
                raise ConfigError(f"mount {mount.path}: unknown backend {backend!r}")
            backend = self._named[backend]
        return self._bind(backend)

    def _check(self, mounts: Sequence[Mount]) -> tuple[Mount, ...]:
        seen: set[str] = set()
        for mount in mounts:
            if not isinstance(mount, Mount):
                raise ConfigError(f"mounts must be sftpd.backends.mounts.Mount, got {mount!r}")
            if mount.path in seen:
                raise ConfigError(f"two mounts at {mount.path}")
            seen.add(mount.path)
            self._backend_of(mount)
        # Deepest first: /shared/team wins over /shared for the paths under it.
        return tuple(sorted(mounts, key=lambda m: -m.path.count("/") - (m.path != "/")))

    # ------------------------------------------------------------------ routing

    def _mounts_of(self, session: Session) -> tuple[Mount, ...]:
        own = session.attributes.get("mounts")
        if own is None:
            return self.mounts
        cached = self._sessions.get(session.id)
        if cached is None:
            if isinstance(own, (str, bytes)) or not isinstance(own, Sequence):
                raise PermissionDenied("This session's mounts are misconfigured")
            parsed = [m if isinstance(m, Mount) else Mount.from_mapping(m, self._named)
                      for m in own]  # fmt: skip
            cached = self._sessions[session.id] = self._check(parsed)
        return cached

    def _place(self, path: str, session: Session) -> _Place:
        for mount in self._mounts_of(session):
            if mount.path == "/" or path == mount.path or path.startswith(mount.path + "/"):
                rest = path[len(mount.path) :] if mount.path != "/" else path
                prefix = _fill(mount.prefix, session)
                inner = paths.normalize(prefix.rstrip("/") + "/" + rest.lstrip("/"))
                return _Place(mount, self._backend_of(mount), inner)
        return _Place(None, None, path)

    def _virtual_children(self, path: str, session: Session) -> list[str]:
        """The names of mount points (or directories above them) right below ``path``."""
        base = path.rstrip("/") + "/"
        return sorted(
            {
                mount.path[len(base) :].split("/", 1)[0]
                for mount in self._mounts_of(session)
                if mount.path != path and mount.path.startswith(base)
            }
        )

    def _mounted(self, path: str, session: Session, *, change: bool = True) -> _Place:
        """The mount holding ``path``, for an operation on it (a change unless told)."""
        place = self._place(path, session)
        if place.mount is None:
            parent = paths.parent(path)
            virtual = path == "/" or self._virtual_children(path, session)
            if virtual or (change and (parent == "/" or self._virtual_children(parent, session))):
                raise PermissionDenied("Nothing can be stored here; use a folder such as "
                                       + ", ".join(self._top(session)))  # fmt: skip
            raise NoSuchFile()
        if change and place.mount.read_only:
            raise PermissionDenied(f"{place.mount.path} is read-only")
        return place

    def _top(self, session: Session) -> list[str]:
        return [m.path for m in self._mounts_of(session)][:3]

    def _changing(self, path: str, session: Session) -> _Place:
        place = self._mounted(path, session)
        if place.mount is not None and path == place.mount.path:
            raise PermissionDenied(f"{path} is a mount point")
        return place

    async def _creating(self, path: str, session: Session) -> _Place:
        """A place something is created at; the mount's prefix directory is made first
        (a user's folder that does not exist yet), once.
        """
        place = self._changing(path, session)
        mount, bound = place.mount, place.bound
        assert mount is not None
        assert bound is not None
        if paths.parent(path) == mount.path and mount.prefix != "/":
            prefix = paths.parent(place.inner)
            key = (str(id(bound)), prefix)
            if key not in self._prepared:
                await _make_dirs(bound, prefix, session)
                self._prepared.add(key)
        return place

    # ------------------------------------------------------------------ the contract

    async def stat(self, path: str, session: Session) -> FileAttrs:
        place = self._place(path, session)
        if place.bound is not None:
            if path == place.mount.path:  # type: ignore[union-attr]
                try:
                    attrs: FileAttrs = await place.bound.stat(place.inner, session)
                    return attrs
                except FileNotFoundError:
                    return directory_info()  # a prefix not created yet is empty
            result: FileAttrs = await place.bound.stat(place.inner, session)
            return result
        if path == "/" or self._virtual_children(path, session):
            return directory_info(permissions=0o555)
        raise NoSuchFile()

    async def list_dir(self, path: str, session: Session) -> AsyncIterator[DirEntry]:
        place = self._place(path, session)
        virtual = self._virtual_children(path, session)
        if place.bound is not None:
            try:
                async for entry in place.bound.list_dir(place.inner, session):
                    if entry.name not in virtual:
                        yield entry
            except FileNotFoundError:
                if path != place.mount.path:  # type: ignore[union-attr]
                    raise
        elif not virtual and path != "/":
            raise NoSuchFile()
        for name in virtual:
            yield DirEntry(name, directory_info(permissions=0o555))

    async def make_dir(self, path: str, session: Session) -> None:
        place = await self._creating(path, session)
        await place.bound.make_dir(place.inner, session)  # type: ignore[union-attr]

    async def remove_dir(self, path: str, session: Session) -> None:
        place = self._changing(path, session)
        await place.bound.remove_dir(place.inner, session)  # type: ignore[union-attr]

    async def remove_file(self, path: str, session: Session) -> None:
        place = self._changing(path, session)
        await place.bound.remove_file(place.inner, session)  # type: ignore[union-attr]

    async def rename(self, src: str, dst: str, session: Session, *, overwrite: bool) -> None:
        source, target = self._changing(src, session), await self._creating(dst, session)
        if source.mount is not target.mount:
            raise Unsupported(f"Cannot move between mounts ({source.mount.path} and "  # type: ignore[union-attr]
                              f"{target.mount.path}); copy the file instead")  # type: ignore[union-attr]  # fmt: skip
        await source.bound.rename(source.inner, target.inner, session, overwrite=overwrite)  # type: ignore[union-attr]

    async def read_file(self, path: str, session: Session) -> bytes:
        place = self._mounted(path, session, change=False)
        data: bytes = await place.bound.read_file(place.inner, session)  # type: ignore[union-attr]
        return data

    async def write_file(self, path: str, data: bytes, session: Session) -> None:
        place = await self._creating(path, session)
        await place.bound.write_file(place.inner, data, session)  # type: ignore[union-attr]

    async def open_reader(self, path: str, session: Session) -> Reader:
        place = self._mounted(path, session, change=False)
        bound = place.bound
        assert bound is not None
        if bound.open_reader is not None:
            return await bound.open_reader(place.inner, session)
        return _Reader(bound, place.inner, session)

    async def open_writer(
        self, path: str, session: Session, *, keep_existing: bool, exclusive: bool = False
    ) -> BoundWriter:
        place = await self._creating(path, session)
        bound = place.bound
        assert bound is not None
        if bound.open_writer is None:
            initial = await bound.read_file(place.inner, session) if keep_existing else b""
            return bind_writer(
                _BufferedWriter(bound, place.inner, session, initial, exclusive=exclusive)
            )
        native = exclusive and "exclusive_writes" in bound.capabilities
        extra = {"exclusive": True} if native else {}
        writer = await bound.open_writer(place.inner, session, keep_existing=keep_existing, **extra)
        return _mounted_writer(writer, self, place, session, exclusive and not native)

    async def set_attrs(self, path: str, changes: AttrChanges, session: Session) -> None:
        place = self._changing(path, session)
        bound = place.bound
        assert bound is not None
        if bound.set_attrs is not None:
            await bound.set_attrs(place.inner, changes, session)
            return
        await bound.stat(place.inner, session)  # a missing file is still missing
        if changes.size is not None:
            raise Unsupported("This storage cannot resize files")
        # Times and modes on a storage that keeps none are accepted and ignored, as the
        # request layer does for a backend without set_attrs.

    async def disk_usage(self, path: str, session: Session) -> SpaceInfo:
        place = self._mounted(path, session, change=False)
        bound = place.bound
        assert bound is not None
        if bound.disk_usage is None:
            raise Unsupported("This storage does not report its capacity")
        info: SpaceInfo = await bound.disk_usage(place.inner, session)
        return info

    async def read_digests(self, path: str, session: Session) -> Mapping[str, str] | None:
        place = self._mounted(path, session, change=False)
        bound = place.bound
        if bound is None or bound.read_digests is None:
            return None
        found: Mapping[str, str] | None = await bound.read_digests(place.inner, session)
        return found

    async def store_digests(self, path: str, digests: Mapping[str, str], session: Session) -> None:
        place = self._place(path, session)
        bound = place.bound
        if bound is not None and bound.store_digests is not None:
            await bound.store_digests(place.inner, digests, session)

    async def read_link(self, path: str, session: Session) -> str:
        place = self._mounted(path, session, change=False)
        bound = place.bound
        if bound is None or bound.read_link is None:
            raise NoSuchFile("Not a symbolic link")
        target: str = await bound.read_link(place.inner, session)
        return target

    async def make_symlink(self, target: str, link: str, session: Session) -> None:
        place = await self._creating(link, session)
        bound = place.bound
        if bound is None or bound.make_symlink is None:
            raise Unsupported("Symbolic links are not supported here")
        await bound.make_symlink(target, place.inner, session)

    async def make_link(self, existing: str, new: str, session: Session) -> None:
        source, target = (
            self._mounted(existing, session, change=False),
            self._changing(new, session),
        )
        if source.mount is not target.mount:
            raise Unsupported("Cannot link between mounts")
        bound = target.bound
        if bound is None or bound.make_link is None:
            raise Unsupported("Hard links are not supported here")
        await bound.make_link(source.inner, target.inner, session)

    async def session_closed(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        for bound in self._bound.values():
            if bound.session_closed is not None:
                await bound.session_closed(session)

    async def session_opened(self, session: Session) -> None:
        for bound in self._bound.values():
            if bound.session_opened is not None:
                await bound.session_opened(session)

    async def startup(self) -> None:
        started: list[BoundBackend] = []
        try:
            for bound in self._bound.values():
                await start_backend(bound)
                started.append(bound)
        except BaseException:
            for bound in started:
                await stop_backend(bound)
            raise

    async def shutdown(self) -> None:
        for bound in self._bound.values():
            await stop_backend(bound)


async def _refuse_if_there(bound: BoundBackend, path: str, session: Session) -> None:
    """An exclusive create's commit: refuse if the file appeared since the open."""
    try:
        await bound.stat(path, session)
    except FileNotFoundError:
        return
    raise FileAlreadyExists()


async def _make_dirs(bound: BoundBackend, path: str, session: Session) -> None:
    """Make ``path`` and its parents in ``bound`` where missing."""
    missing = []
    while path != "/":
        try:
            await bound.stat(path, session)
            break
        except FileNotFoundError:
            missing.append(path)
            path = paths.parent(path)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another session
            await bound.make_dir(directory, session)


def _fill(prefix: str, session: Session) -> str:
    """The prefix with the session's values put in; a value that could climb is refused."""
    if "{" not in prefix:
        return prefix
    values = {"username": session.username, **{str(k): v for k, v in session.attributes.items()}}
    try:
        filled = prefix.format_map(_Values(values))
    except (KeyError, ValueError, IndexError, AttributeError) as exc:
        raise PermissionDenied("This session's folder is misconfigured") from exc
    return filled


class _Values(dict[str, Any]):
    """Placeholder values that cannot leave the prefix (no ``/``, no ``..``)."""

    def __getitem__(self, key: str) -> Any:
        value = str(super().__getitem__(key))
        if not value or "/" in value or value in (".", "..") or "\x00" in value:
            raise ValueError(f"{key} cannot name a folder")
        return value


class _Reader:
    """Reads for a mount whose backend has no readers: ranges, else the whole file once."""

    def __init__(self, bound: BoundBackend, path: str, session: Session) -> None:
        self._bound, self._path, self._session = bound, path, session
        self._whole: bytes | None = None

    async def read(self, offset: int, length: int) -> bytes:
        if self._bound.read_range is not None:
            data: bytes = await self._bound.read_range(self._path, offset, length, self._session)
            return data
        if self._whole is None:
            self._whole = await self._bound.read_file(self._path, self._session)
        return self._whole[offset : offset + length]

    async def close(self) -> None:
        self._whole = None


class _BufferedWriter:
    """An upload for a mount whose backend has no streaming writes: kept in a temporary
    file (memory first), stored whole with ``write_file`` at commit.
    """

    def __init__(
        self, bound: BoundBackend, path: str, session: Session, initial: bytes, *, exclusive: bool
    ) -> None:
        self._bound, self._path, self._session = bound, path, session
        self._exclusive = exclusive
        self._file = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # noqa: SIM115
        self._file.write(initial)

    async def write(self, offset: int, data: bytes) -> None:
        self._file.seek(offset)
        self._file.write(data)

    async def read(self, offset: int, length: int) -> bytes:
        self._file.seek(offset)
        return self._file.read(length)

    async def truncate(self, size: int) -> None:
        self._file.truncate(size)

    async def commit(self) -> None:
        if self._exclusive:
            await _refuse_if_there(self._bound, self._path, self._session)
        self._file.seek(0)
        data = await asyncio.to_thread(self._file.read)
        self._file.close()
        await self._bound.write_file(self._path, data, self._session)

    async def abort(self) -> None:
        self._file.close()


def _mounted_writer(
    writer: BoundWriter, namespace: MountBackend, place: _Place, session: Session,
    check_exclusive: bool,
) -> BoundWriter:  # fmt: skip
    """A mount's own writer, with storage-side copies (copy-data) kept inside its mount
    and, where its backend cannot, the exclusive create checked just before the commit.
    """
    commit, copy = writer.commit, writer.copy_from

    async def commit_checked() -> None:
        bound = place.bound
        assert bound is not None
        await _refuse_if_there(bound, place.inner, session)
        await commit()

    async def copy_within(path: str, offset: int, length: int, target_offset: int) -> None:
        source = namespace._place(path, session)
        if source.mount is not place.mount:
            raise Unsupported("copy between mounts")  # copied through reads and writes
        assert copy is not None
        await copy(source.inner, offset, length, target_offset)

    return dataclasses.replace(
        writer,
        commit=commit_checked if check_exclusive else commit,
        copy_from=None if copy is None else copy_within,
    )
