"""The backend contract is one description: capabilities, binding, docs and the suite."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import sftpd
from sftpd._binding import bind_backend, stop_backend
from sftpd.backend import REQUIRED_METHODS, Capability, capabilities_of, supports
from sftpd.testing import make_session

DOCS = Path(__file__).parents[2] / "docs" / "custom-backends.md"


class _SyncStore:
    """A sync backend with exclusive streaming writes and nothing else optional."""

    def stat(self, path: str, session: object) -> sftpd.FileAttrs:
        return sftpd.directory_info()

    def list_dir(self, path: str, session: object) -> list[sftpd.DirEntry]:
        return []

    def make_dir(self, path: str, session: object) -> None: ...
    def remove_dir(self, path: str, session: object) -> None: ...
    def remove_file(self, path: str, session: object) -> None: ...
    def rename(self, src: str, dst: str, session: object, *, overwrite: bool) -> None: ...

    def read_file(self, path: str, session: object) -> bytes:
        return b""

    def write_file(self, path: str, data: bytes, session: object) -> None: ...

    def open_writer(
        self, path: str, session: object, *, keep_existing: bool, exclusive: bool = False
    ) -> object:
        raise NotImplementedError


def test_every_capability_reads_its_methods_from_its_protocol() -> None:
    """A capability's methods are those its Protocol declares, none invented."""
    assert Capability.DIGESTS.methods == ("store_digests", "read_digests")
    assert Capability.SYMLINKS.methods == ("read_link", "make_symlink")
    assert REQUIRED_METHODS[0] == "stat"
    assert "write_file" in REQUIRED_METHODS
    for capability in Capability:
        assert capability.methods, capability
        for name in capability.methods:
            assert name in vars(capability.protocol)


def test_exclusive_writes_is_asked_like_any_other_capability() -> None:
    """supports() answers exclusive_writes (it raised before) as the binding decides it."""
    store = _SyncStore()
    assert supports(store, "exclusive_writes")
    assert supports(store, Capability.STREAMING_WRITES)
    assert not supports(store, "range_reads")
    assert capabilities_of(store) == {Capability.STREAMING_WRITES, Capability.EXCLUSIVE_WRITES}
    assert bind_backend(store).capabilities == capabilities_of(store)
    with pytest.raises(ValueError, match="unknown capability 'teleport'"):
        supports(store, "teleport")


def test_the_docs_table_lists_exactly_the_capabilities() -> None:
    """docs/custom-backends.md's capability table equals the enum, methods included."""
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", DOCS.read_text(), re.MULTILINE)
    documented = {name: tuple(re.findall(r"`(\w+)`", methods)) for name, methods in rows}
    assert documented == {c.value: c.methods for c in Capability}


async def test_a_bound_backend_closes_the_threads_it_started() -> None:
    """Stopping a bound sync backend ends its pool's threads; a new call starts a pool."""
    bound = bind_backend(_SyncStore())
    await bound.stat("/", make_session())
    assert any(t.name.startswith("sftpd-backend") for t in threading.enumerate())
    await stop_backend(bound)
    for thread in threading.enumerate():
        if thread.name.startswith("sftpd-backend"):
            thread.join(timeout=5)
    assert not any(t.name.startswith("sftpd-backend") for t in threading.enumerate())
    assert (await bound.stat("/", make_session())).is_dir


def test_sftpd_testing_imports_without_pytest() -> None:
    """running_server and make_session import in a process where pytest cannot."""
    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "from sftpd.testing import make_session, running_server\n"
        "print(make_session('ann').username)\n"
        "try:\n"
        "    from sftpd.testing import BackendConformance\n"
        "except ImportError:\n"
        "    print('suite needs pytest')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ann", "suite", "needs", "pytest"]
