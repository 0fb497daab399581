"""The conformance suite run on the memory backend and on small custom backends."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from examples.dict_backend import DictBackend

import sftpd
import sftpd.testing
from sftpd.testing import BackendConformance


class TestMemoryBackend(BackendConformance):
    """The built-in memory backend."""

    @pytest.fixture
    def backend(self) -> Any:
        return sftpd.MemoryBackend()


class TestExclusiveWritesAlone(sftpd.testing.ExclusiveWriteConformance):
    """One capability's mixin used on its own has every fixture its tests need."""

    @pytest.fixture
    def backend(self) -> Any:
        return sftpd.MemoryBackend()


class TestMountBackendAtTheTop(BackendConformance):
    """A namespace with a single mount at /: the mount is the whole tree."""

    @pytest.fixture
    def backend(self) -> Any:
        from sftpd.backends.mounts import Mount, MountBackend

        return MountBackend([Mount("/", sftpd.MemoryBackend())])


class TestMountBackendWithAPrefix(BackendConformance):
    """A mount at / whose files live under a per-user prefix of a sync backend (which
    keeps no times: the mount accepts and ignores them)."""

    keeps_mtime = False

    @pytest.fixture
    def backend(self) -> Any:
        from sftpd.backends.mounts import Mount, MountBackend

        return MountBackend([Mount("/", SyncDictBackend(), prefix="/users/{username}")])


class TestTheGuidesBackend(BackendConformance):
    """The complete backend docs/custom-backends.md shows (examples/dict_backend.py)."""

    @pytest.fixture
    def backend(self) -> Any:
        return DictBackend()


def test_the_guide_shows_the_tested_backend_unchanged() -> None:
    """docs/custom-backends.md holds examples/dict_backend.py verbatim, so the guide's
    backend is the one the conformance suite passes."""
    root = Path(__file__).resolve().parents[2]
    guide = (root / "docs" / "custom-backends.md").read_text()
    assert "```python\n" + (root / "examples" / "dict_backend.py").read_text() + "```" in guide


class SyncDictBackend(DictBackend):
    """The guide's plain-``def`` backend, noting which threads its calls run in."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def stat(self, path: str, session: sftpd.Session) -> sftpd.FileAttrs:
        self.threads.add(threading.current_thread().name)
        return super().stat(path, session)

    def write_file(self, path: str, data: bytes, session: sftpd.Session) -> None:
        self.threads.add(threading.current_thread().name)
        super().write_file(path, data, session)


class TestSyncCustomBackend(BackendConformance):
    """A sync backend of plain ``def`` methods passes the suite through the thread pool."""

    @pytest.fixture
    def backend(self) -> Any:
        return SyncDictBackend()

    async def test_sync_methods_run_in_worker_threads(
        self, backend: SyncDictBackend, bound: Any
    ) -> None:
        """Plain def methods run off the event loop, in the backend thread pool."""
        await bound.write_file("/x", b"x", sftpd.testing.make_session())
        assert backend.threads
        assert all(t.startswith("sftpd-backend") for t in backend.threads)


class AsyncDictBackend:
    """The same minimal backend with ``async def`` methods."""

    def __init__(self) -> None:
        self._sync = SyncDictBackend()

    async def stat(self, path: str, session: sftpd.Session) -> sftpd.FileAttrs:
        return self._sync.stat(path, session)

    async def list_dir(self, path: str, session: sftpd.Session) -> Any:
        for entry in list(self._sync.list_dir(path, session)):
            yield entry

    async def make_dir(self, path: str, session: sftpd.Session) -> None:
        self._sync.make_dir(path, session)

    async def remove_dir(self, path: str, session: sftpd.Session) -> None:
        self._sync.remove_dir(path, session)

    async def remove_file(self, path: str, session: sftpd.Session) -> None:
        self._sync.remove_file(path, session)

    async def rename(self, src: str, dst: str, session: sftpd.Session, *, overwrite: bool) -> None:
        self._sync.rename(src, dst, session, overwrite=overwrite)

    async def read_file(self, path: str, session: sftpd.Session) -> bytes:
        return self._sync.read_file(path, session)

    async def write_file(self, path: str, data: bytes, session: sftpd.Session) -> None:
        self._sync.write_file(path, data, session)


class TestAsyncCustomBackend(BackendConformance):
    """An async backend without optional capabilities passes the suite."""

    @pytest.fixture
    def backend(self) -> Any:
        return AsyncDictBackend()


class TestLocalBackend(BackendConformance):
    """The local-folder backend, in a temporary directory, calls inline and in threads."""

    @pytest.fixture(params=["inline", "threads"])
    def backend(self, tmp_path: Any, request: pytest.FixtureRequest) -> Any:
        from sftpd.backends.local import LocalBackend

        return LocalBackend(tmp_path / "root", create=True, fsync=False, io=request.param)


class TestS3Backend(BackendConformance):
    """The S3 backend against SeaweedFS and moto (AWS semantics)."""

    keeps_mtime = False

    @pytest.fixture
    def backend(self, s3_backend: Any) -> Any:
        return s3_backend


class TestS3BackendOwnClient(BackendConformance):
    """The S3 backend with a client it creates itself, on its own IO thread."""

    keeps_mtime = False

    @pytest.fixture
    async def backend(
        self, s3_server: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[Any]:
        from sftpd.backends.s3 import S3Backend
        from tests.s3_servers import ACCESS_KEY, SECRET_KEY

        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        backend = S3Backend(
            bucket, endpoint_url=s3_server.endpoint, region_name="us-east-1",
            part_size=5 << 20, read_chunk=1 << 20,
        )  # fmt: skip
        yield backend
        await backend.aclose()
