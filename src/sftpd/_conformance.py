"""The conformance suite of :mod:`sftpd.testing`: pytest tests every backend must pass.

One mixin per part of the contract (:class:`sftpd.backend.Capability`); a mixin whose
capability the backend lacks skips its tests, asking the same question the server asks.
:class:`BackendConformance` is all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from ._binding import BoundBackend, bind_backend
from ._session import Session, make_session
from .backend import AttrChanges, Capability, DirEntry
from .errors import DirectoryNotEmpty, FileAlreadyExists

T = TypeVar("T")


async def _names(bound: BoundBackend, path: str, session: Session) -> dict[str, DirEntry]:
    return {e.name: e async for e in bound.list_dir(path, session)}


class _Fixtures:
    """The fixtures every mixin shares; a subclass gives ``backend``."""

    keeps_mtime = True

    @pytest.fixture
    def backend(self) -> Any:  # pragma: no cover - subclasses override
        """The backend under test; override in your subclass."""
        raise NotImplementedError("override the backend fixture")

    @pytest.fixture
    def bound(self, backend: Any) -> Iterator[BoundBackend]:
        """The backend adapted as the server adapts it (sync methods run in threads)."""
        bound = bind_backend(backend)
        yield bound
        bound.close()

    @pytest.fixture
    def session(self) -> Session:
        """A session for direct calls."""
        return make_session()

    @pytest.fixture
    def open_writer(self, bound: BoundBackend) -> Callable[..., Any]:
        """The backend's ``open_writer``; tests using it skip backends without one."""
        if bound.open_writer is None:
            pytest.skip("backend has no streaming writes")
        return bound.open_writer

    @pytest.fixture(autouse=True)
    def _has_capability(self, request: pytest.FixtureRequest, bound: BoundBackend) -> None:
        wanted: Capability | None = getattr(request.function, "sftpd_needs", None)
        if wanted is not None and wanted not in bound.capabilities:
            pytest.skip(f"backend has no {wanted.value.replace('_', ' ')}")


def _needs(capability: Capability) -> Callable[[type[T]], type[T]]:
    """Mark every test of a mixin as needing ``capability`` (else it skips)."""

    def mark(mixin: type[T]) -> type[T]:
        for name, test in vars(mixin).items():
            if name.startswith("test_"):
                test.sftpd_needs = capability
        return mixin

    return mark


class BasicConformance(_Fixtures):
    """The required methods: listing, metadata, reads and writes, directories, renames."""

    async def test_root_is_a_listable_directory(
        self, bound: BoundBackend, session: Session
    ) -> None:
        """stat('/') is a directory and listing it works (without . and ..)."""
        attrs = await bound.stat("/", session)
        assert attrs.is_dir
        names = await _names(bound, "/", session)
        assert "." not in names
        assert ".." not in names

    async def test_missing_paths_raise_file_not_found(
        self, bound: BoundBackend, session: Session
    ) -> None:
        """stat, read, remove and rename of a missing path raise FileNotFoundError."""
        for call in (
            bound.stat("/missing", session),
            bound.read_file("/missing", session),
            bound.remove_file("/missing", session),
            bound.remove_dir("/missing", session),
            bound.rename("/missing", "/other", session, overwrite=False),
        ):
            with pytest.raises(FileNotFoundError):
                await call

    async def test_write_then_read_round_trip(self, bound: BoundBackend, session: Session) -> None:
        """write_file then read_file returns the same bytes; stat has the size."""
        data = bytes(range(256)) * 1000
        await bound.write_file("/round.bin", data, session)
        assert await bound.read_file("/round.bin", session) == data
        attrs = await bound.stat("/round.bin", session)
        assert attrs.is_file
        assert attrs.size == len(data)
        assert attrs.mtime > 0

    async def test_overwrite_replaces_content(self, bound: BoundBackend, session: Session) -> None:
        """Writing a file again replaces all of its content."""
        await bound.write_file("/o.txt", b"long content", session)
        await bound.write_file("/o.txt", b"short", session)
        assert await bound.read_file("/o.txt", session) == b"short"

    async def test_listing_has_attributes(self, bound: BoundBackend, session: Session) -> None:
        """Listing a directory yields each entry once with its type and size."""
        await bound.make_dir("/l", session)
        await bound.write_file("/l/a.txt", b"aaa", session)
        await bound.make_dir("/l/sub", session)
        names = await _names(bound, "/l", session)
        assert set(names) == {"a.txt", "sub"}
        assert names["a.txt"].attrs.is_file
        assert names["a.txt"].attrs.size == 3
        assert names["sub"].attrs.is_dir

    async def test_directories_create_and_remove(
        self, bound: BoundBackend, session: Session
    ) -> None:
        """make_dir creates, a second make_dir fails, remove_dir removes an empty one."""
        await bound.make_dir("/d", session)
        assert (await bound.stat("/d", session)).is_dir
        with pytest.raises(FileExistsError):
            await bound.make_dir("/d", session)
        await bound.remove_dir("/d", session)
        with pytest.raises(FileNotFoundError):
            await bound.stat("/d", session)

    async def test_remove_dir_refuses_non_empty(
        self, bound: BoundBackend, session: Session
    ) -> None:
        """remove_dir of a directory with entries fails and keeps them."""
        await bound.make_dir("/ne", session)
        await bound.write_file("/ne/f", b"f", session)
        with pytest.raises((DirectoryNotEmpty, OSError)):
            await bound.remove_dir("/ne", session)
        assert await bound.read_file("/ne/f", session) == b"f"

    async def test_remove_file(self, bound: BoundBackend, session: Session) -> None:
        """remove_file deletes a file and only that file."""
        await bound.write_file("/r1", b"1", session)
        await bound.write_file("/r2", b"2", session)
        await bound.remove_file("/r1", session)
        with pytest.raises(FileNotFoundError):
            await bound.stat("/r1", session)
        assert await bound.read_file("/r2", session) == b"2"

    async def test_rename_file_and_overwrite_rules(
        self, bound: BoundBackend, session: Session
    ) -> None:
        """rename moves a file; onto an existing file it needs overwrite=True."""
        await bound.write_file("/a", b"A", session)
        await bound.write_file("/b", b"B", session)
        with pytest.raises(FileAlreadyExists):
            await bound.rename("/a", "/b", session, overwrite=False)
        await bound.rename("/a", "/b", session, overwrite=True)
        assert await bound.read_file("/b", session) == b"A"
        with pytest.raises(FileNotFoundError):
            await bound.stat("/a", session)
        await bound.rename("/b", "/c", session, overwrite=False)
        assert await bound.read_file("/c", session) == b"A"

    async def test_rename_directory_moves_children(
        self, bound: BoundBackend, session: Session
    ) -> None:
        """Renaming a directory moves everything below it."""
        await bound.make_dir("/from", session)
        await bound.make_dir("/from/inner", session)
        await bound.write_file("/from/inner/x", b"x", session)
        await bound.rename("/from", "/to", session, overwrite=False)
        assert await bound.read_file("/to/inner/x", session) == b"x"
        with pytest.raises(FileNotFoundError):
            await bound.stat("/from", session)


@_needs(Capability.RANGE_READS)
class RangeReadConformance(_Fixtures):
    """``read_range`` (:attr:`Capability.RANGE_READS`)."""

    async def test_range_reads(self, bound: BoundBackend, session: Session) -> None:
        """read_range returns the requested slice, short at the end, empty past it."""
        assert bound.read_range is not None
        data = bytes(range(256)) * 8192  # 2 MiB
        await bound.write_file("/range.bin", data, session)
        assert await bound.read_range("/range.bin", 1000, 5000, session) == data[1000:6000]
        assert await bound.read_range("/range.bin", len(data) - 10, 100, session) == data[-10:]
        assert await bound.read_range("/range.bin", len(data), 100, session) == b""
        chunks = [
            await bound.read_range("/range.bin", off, 65536, session)
            for off in range(0, len(data), 65536)
        ]
        assert b"".join(chunks) == data


@_needs(Capability.STREAMING_WRITES)
class StreamingWriteConformance(_Fixtures):
    """``open_writer`` and its writers (:attr:`Capability.STREAMING_WRITES`)."""

    async def test_streaming_write_commit(
        self, bound: BoundBackend, session: Session, open_writer: Callable[..., Any]
    ) -> None:
        """A streamed upload is invisible until commit, then holds every chunk in order."""
        writer = await open_writer("/stream.bin", session, keep_existing=False)
        chunks = [bytes([i]) * 100_000 for i in range(20)]
        offset = 0
        for chunk in chunks:
            await writer.write(offset, chunk)
            offset += len(chunk)
        with pytest.raises(FileNotFoundError):
            await bound.stat("/stream.bin", session)
        await writer.commit()
        assert await bound.read_file("/stream.bin", session) == b"".join(chunks)

    async def test_streaming_write_out_of_order(
        self, bound: BoundBackend, session: Session, open_writer: Callable[..., Any]
    ) -> None:
        """Writes at any offset land in place; holes read as zeros."""
        writer = await open_writer("/ooo.bin", session, keep_existing=False)
        await writer.write(10, b"world")
        await writer.write(0, b"hello")
        await writer.commit()
        assert await bound.read_file("/ooo.bin", session) == b"hello" + bytes(5) + b"world"

    async def test_streaming_write_abort_leaves_nothing(
        self, bound: BoundBackend, session: Session, open_writer: Callable[..., Any]
    ) -> None:
        """An aborted upload leaves no file and keeps the one it would have replaced."""
        writer = await open_writer("/gone.bin", session, keep_existing=False)
        await writer.write(0, b"partial")
        await writer.abort()
        with pytest.raises(FileNotFoundError):
            await bound.stat("/gone.bin", session)
        await bound.write_file("/kept.bin", b"old", session)
        writer = await open_writer("/kept.bin", session, keep_existing=False)
        await writer.write(0, b"new content")
        await writer.abort()
        assert await bound.read_file("/kept.bin", session) == b"old"

    async def test_streaming_write_keep_existing_appends(
        self, bound: BoundBackend, session: Session, open_writer: Callable[..., Any]
    ) -> None:
        """keep_existing=True starts from the stored content (resume/append)."""
        await bound.write_file("/resume.bin", b"first half|", session)
        writer = await open_writer("/resume.bin", session, keep_existing=True)
        await writer.write(11, b"second half")
        await writer.commit()
        assert await bound.read_file("/resume.bin", session) == b"first half|second half"


@_needs(Capability.EXCLUSIVE_WRITES)
class ExclusiveWriteConformance(_Fixtures):
    """Exclusive creates checked at commit (:attr:`Capability.EXCLUSIVE_WRITES`)."""

    async def test_exclusive_commit_refuses_a_file_created_meanwhile(
        self, bound: BoundBackend, session: Session, open_writer: Callable[..., Any]
    ) -> None:
        """An exclusive upload fails at commit if the file appeared since the open.

        Small and part-sized uploads alike; the file that appeared stays as it was, and an
        exclusive upload of a file that is still new is stored.
        """
        for size in (5, 6 << 20):
            path = f"/excl-{size}.bin"
            writer = await open_writer(path, session, keep_existing=False, exclusive=True)
            await writer.write(0, b"x" * size)
            await bound.write_file(path, b"first", session)
            with pytest.raises(FileExistsError):
                await writer.commit()
            await writer.abort()
            assert await bound.read_file(path, session) == b"first"
        writer = await open_writer("/excl-new.bin", session, keep_existing=False, exclusive=True)
        await writer.write(0, b"mine")
        await writer.commit()
        assert await bound.read_file("/excl-new.bin", session) == b"mine"


@_needs(Capability.SET_ATTRS)
class SetAttrsConformance(_Fixtures):
    """``set_attrs`` (:attr:`Capability.SET_ATTRS`)."""

    async def test_set_attrs_mtime(self, bound: BoundBackend, session: Session) -> None:
        """set_attrs with an mtime shows in stat."""
        assert bound.set_attrs is not None
        await bound.write_file("/t.txt", b"t", session)
        await bound.set_attrs("/t.txt", AttrChanges(mtime=1_500_000_000.0), session)
        stored = int((await bound.stat("/t.txt", session)).mtime)
        if self.keeps_mtime:
            assert stored == 1_500_000_000
        else:
            assert stored != 1_500_000_000  # accepted, and honestly not pretended
        with pytest.raises(FileNotFoundError):
            await bound.set_attrs("/missing", AttrChanges(mtime=1.0), session)


class BackendConformance(
    BasicConformance,
    RangeReadConformance,
    StreamingWriteConformance,
    ExclusiveWriteConformance,
    SetAttrsConformance,
):
    """Behaviour every backend must have, as pytest tests. Subclass and give ``backend``.

    Paths are absolute and normalized, as the server passes them. Optional capabilities
    are tested only when the backend has them. Set ``keeps_mtime = False`` for stores that
    accept but do not keep modification times (object stores).
    """
