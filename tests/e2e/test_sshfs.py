"""End-to-end: sshfs (libfuse's SFTP file system) mounts sftpd and works like a disk."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import sftpd
from sftpd._session import Peer
from sftpd.testing import running_server

S = sftpd.Session(username="dev", peer=Peer("127.0.0.1", 0))


def _why_not() -> str | None:
    if shutil.which("sshfs") is None:
        return "sshfs is not installed (apt-get install sshfs)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: FUSE file systems cannot be mounted here"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount is not installed (apt-get install fuse3)"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def sh(script: str, cwd: Path) -> str:
    """Run a shell script in the mount; fail the test with its output if it fails.

    Call it in a thread: the server shares the test's event loop, so nothing on that
    loop's thread may wait for the mount.
    """
    done = subprocess.run(["bash", "-ec", script], cwd=cwd, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(params=["memory", "local"])
async def mounted(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Path, sftpd.MemoryBackend | sftpd.LocalBackend]]:
    """sshfs mounted on a server of either backend; yields the mount point and backend."""
    if request.param == "memory":
        backend: sftpd.MemoryBackend | sftpd.LocalBackend = sftpd.MemoryBackend()
    else:
        (tmp_path / "root").mkdir()
        backend = sftpd.LocalBackend(tmp_path / "root")
    mount = tmp_path / "mnt"
    mount.mkdir()
    async with running_server(backend=backend) as server:
        proc = await asyncio.create_subprocess_exec(
            "sshfs", "-p", str(server.port), "-o", "password_stdin",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "dev@127.0.0.1:/", str(mount),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(b"dev\n"), 30)
        assert proc.returncode == 0, err.decode()
        try:
            yield mount, backend
        finally:
            unmount = shutil.which("fusermount3") or "fusermount"
            done = await asyncio.create_subprocess_exec(unmount, "-u", "-z", str(mount))
            await done.wait()


async def stored(backend: sftpd.MemoryBackend | sftpd.LocalBackend, path: str) -> bytes:
    """A file's content as the backend holds it."""
    if isinstance(backend, sftpd.MemoryBackend):
        return await backend.read_file(path, S)
    return (backend.root / path.lstrip("/")).read_bytes()


async def settled(backend: sftpd.MemoryBackend | sftpd.LocalBackend, path: str,
                  expected: bytes) -> bytes:  # fmt: skip
    """The content once it is ``expected``, or what it is after 10 s.

    sshfs answers a program's close() before its CLOSE (and rsync's rename after it)
    reaches the server: FUSE releases files asynchronously. So the backend may take a
    moment to hold what a program that just exited wrote.
    """
    content = b""
    for _ in range(200):
        try:
            content = await stored(backend, path)
        except FileNotFoundError:
            content = b""
        if content == expected:
            break
        await asyncio.sleep(0.05)
    return content


async def test_everyday_file_operations_through_a_mount(
    mounted: tuple[Path, sftpd.MemoryBackend | sftpd.LocalBackend], tmp_path: Path
) -> None:
    """cp, mkdir, mv, mv -f onto a file, append, truncate -s, touch -d, ln -s, ln, rm and
    rmdir on an sshfs mount do what they do on a disk, and the backend holds the result."""
    mount, backend = mounted
    (tmp_path / "src.txt").write_text("hello\n")
    await asyncio.to_thread(sh, f"""
        cp {tmp_path}/src.txt new.txt
        mkdir dir
        mv new.txt dir/moved.txt
        echo one > a.txt
        echo two > b.txt
        mv -f a.txt b.txt
        echo more >> dir/moved.txt
        echo 0123456789 > cut.txt
        truncate -s 4 cut.txt
        truncate -s 6 grow.txt
        touch -d '2020-01-02 03:04:05 UTC' b.txt
        ln -s b.txt link
        ln dir/moved.txt hard.txt
        echo gone > gone.txt
        rm gone.txt
        mkdir empty
        rmdir empty
    """, mount)  # fmt: skip
    assert await settled(backend, "/dir/moved.txt", b"hello\nmore\n") == b"hello\nmore\n"
    assert await settled(backend, "/b.txt", b"one\n") == b"one\n"
    assert await settled(backend, "/cut.txt", b"0123") == b"0123"
    assert await settled(backend, "/grow.txt", bytes(6)) == bytes(6)
    assert await settled(backend, "/hard.txt", b"hello\nmore\n") == b"hello\nmore\n"
    attrs = await backend.stat("/b.txt", S) if isinstance(backend, sftpd.MemoryBackend) else None
    mtime = attrs.mtime if attrs else (backend.root / "b.txt").stat().st_mtime  # type: ignore[union-attr]
    assert int(mtime) == 1577934245
    # The server runs on this thread's event loop: touch the mount from another thread.
    listing = await asyncio.to_thread(sh, "ls -A; readlink link; cat link", mount)
    names, rest = set(listing.split()[:-2]), listing.split()[-2:]
    assert {"a.txt", "gone.txt", "empty", "new.txt"}.isdisjoint(names), listing
    assert rest == ["b.txt", "one"]


async def test_rsync_of_a_small_tree(
    mounted: tuple[Path, sftpd.MemoryBackend | sftpd.LocalBackend], tmp_path: Path
) -> None:
    """rsync -a copies a tree into the mount (temporary files, renames, times, modes)."""
    if shutil.which("rsync") is None:
        pytest.fail("rsync is not installed (apt-get install rsync)")
    mount, backend = mounted
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    for index in range(12):
        (tree / ("sub" if index % 2 else "") / f"f{index}.txt").write_text(f"file {index}\n" * 50)
    (tree / "sub" / "deeper" / "last.bin").write_bytes(os.urandom(70_000))
    await asyncio.to_thread(sh, f"rsync -a {tree}/ tree/", mount)
    for path in tree.rglob("*"):
        if path.is_file():
            relative = "/tree/" + str(path.relative_to(tree))
            content = path.read_bytes()
            assert await settled(backend, relative, content) == content, relative
    again = await asyncio.to_thread(sh, f"rsync -ai {tree}/ tree/", mount)
    assert ">f" not in again  # nothing to send the second time: times and sizes kept
