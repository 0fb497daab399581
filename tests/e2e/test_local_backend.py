"""End-to-end: the local-folder backend through OpenSSH, with escape attempts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncssh
import pytest

import sftpd
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect, make_file, sha256_file


def snapshot(directory: Path) -> dict[str, tuple[int, float, int]]:
    """Every path below ``directory`` (links not followed) with size, mtime and mode."""
    result = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        result[str(path.relative_to(directory))] = (st.st_size, st.st_mtime, st.st_mode)
    return result


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A served root with a symlink to a directory outside it that holds a secret."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    (root / "escape").symlink_to(outside)
    (root / "escape-file").symlink_to(outside / "secret.txt")
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_text("hello")
    return root, outside


@pytest.mark.parametrize("io", ["inline", "threads"])
async def test_openssh_round_trip_on_local_disk(
    layout: tuple[Path, Path], openssh: OpenSSH, tmp_path: Path, io: str
) -> None:
    """put, get, rename, rm, mkdir and rmdir land on the host file system as expected,
    whether the backend's small calls run on the event loop or in threads."""
    root, _outside = layout
    work = tmp_path / "work"
    work.mkdir()
    src = make_file(work / "up.bin", 4_000_000, seed=5)
    backend = sftpd.LocalBackend(root, io=io)
    async with running_server(backend=backend) as server:
        result = await openssh.run(
            server.port,
            "mkdir inbox\nput up.bin inbox/up.bin\nrename inbox/up.bin inbox/moved.bin\n"
            "get inbox/moved.bin back.bin\nls -l inbox\nmkdir tmp\nrmdir tmp\n",
            cwd=work,
        )
        assert result.returncode == 0, result.stderr
        assert sha256_file(root / "inbox" / "moved.bin") == sha256_file(src)
        assert sha256_file(work / "back.bin") == sha256_file(src)
        assert not (root / "tmp").exists()
        result = await openssh.run(server.port, "rm inbox/moved.bin\nrmdir inbox\n", cwd=work)
        assert result.returncode == 0, result.stderr
    assert not (root / "inbox").exists()
    assert not any(p.name.startswith(".sftpd-upload") for p in root.rglob("*"))


@pytest.mark.parametrize(
    "command",
    [
        "get escape/secret.txt stolen.txt",
        "get escape-file stolen.txt",
        "get ../outside/secret.txt stolen.txt",
        "get /../../outside/secret.txt stolen.txt",
        "ls escape/secret.txt",
        "put payload.txt escape/planted.txt",
        "put payload.txt escape-file",
        "rename docs/readme.txt escape/readme.txt",
        "rm escape/secret.txt",
        "mkdir escape/newdir",
        "chmod 777 escape/secret.txt",
        "rmdir escape/..",
    ],
)
@pytest.mark.parametrize("io", ["inline", "threads"])
async def test_escapes_fail_and_touch_nothing_outside(
    layout: tuple[Path, Path], openssh: OpenSSH, tmp_path: Path, command: str, io: str
) -> None:
    """Traversal and symlink escapes fail and the outside directory is unchanged, with
    calls inline or in threads."""
    root, outside = layout
    work = tmp_path / "work"
    work.mkdir()
    (work / "payload.txt").write_text("evil")
    before = snapshot(outside)
    async with running_server(backend=sftpd.LocalBackend(root, io=io)) as server:
        result = await openssh.run(server.port, command + "\n", cwd=work)
    assert result.returncode != 0, result.stdout
    assert snapshot(outside) == before
    assert (outside / "secret.txt").read_text() == "top secret"
    assert not (work / "stolen.txt").exists()
    assert (root / "escape").is_symlink()
    assert (root / "escape-file").is_symlink()


async def test_symlinks_resolve_only_inside_the_root(layout: tuple[Path, Path]) -> None:
    """Links are listed as links and followed in the client's tree: a link whose target
    names a host path outside the root, or climbs with ``..``, leads to that path inside
    the root (here: nothing), never to the secret; links inside the root work."""
    root, outside = layout
    (root / "climb").symlink_to("../../outside/secret.txt")
    (root / "docs-link").symlink_to("docs")
    async with running_server(backend=sftpd.LocalBackend(root)) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            names = {n.filename: n.attrs for n in await sftp.readdir("/")}
            assert names["escape"].type == asyncssh.FILEXFER_TYPE_SYMLINK
            assert names["escape-file"].type == asyncssh.FILEXFER_TYPE_SYMLINK
            assert await sftp.readlink("/escape-file") == str(outside / "secret.txt")
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.listdir("/escape")
            for link in ("/escape-file", "/climb"):
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.open(link, "rb")
            assert sorted(await sftp.listdir("/docs-link")) == [".", "..", "readme.txt"]
            async with sftp.open("/docs-link/readme.txt", "rb") as f:
                assert await f.read() == b"hello"
            assert (await sftp.stat("/docs-link")).type == asyncssh.FILEXFER_TYPE_DIRECTORY
            assert (await sftp.lstat("/docs-link")).type == asyncssh.FILEXFER_TYPE_SYMLINK
    assert (outside / "secret.txt").read_text() == "top secret"


async def test_new_files_get_the_clients_mode_less_the_umask(tmp_path: Path) -> None:
    """A new file takes the mode sent with OPEN (less 022, as sftp-server's umask); an
    overwritten file keeps its own; a file created through a linked directory lands in
    the directory the link names."""
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "via").symlink_to("real")
    (root / "kept.txt").write_text("old")
    (root / "kept.txt").chmod(0o600)
    async with running_server(backend=sftpd.LocalBackend(root)) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            for name, mode in (("/script.sh", 0o755), ("/open.txt", 0o777), ("/kept.txt", 0o644)):
                attrs = asyncssh.SFTPAttrs(permissions=mode)
                async with sftp.open(name, "wb", attrs) as f:
                    await f.write(b"x")
            async with sftp.open("/via/new.txt", "wb") as f:
                await f.write(b"through the link")
    assert (root / "script.sh").stat().st_mode & 0o7777 == 0o755
    assert (root / "open.txt").stat().st_mode & 0o7777 == 0o755
    assert (root / "kept.txt").stat().st_mode & 0o7777 == 0o600
    assert (root / "real" / "new.txt").read_bytes() == b"through the link"


async def test_killed_server_leaves_no_partial_file(tmp_path: Path) -> None:
    """kill -9 of the server mid-upload leaves nothing in the root, not even a temp file."""
    root = tmp_path / "root"
    root.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sftpd", "serve", "--port", "0", "--backend", f"local:{root}",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.stdout is not None
    text = ""
    import re

    while not (match := re.search(r"sftp -P (\d+)", text)):
        text += (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    port = int(match.group(1))
    conn = await connect(port)
    sftp = await conn.start_sftp_client()
    f = await sftp.open("/big.bin", "wb")
    await f.write(b"x" * (2 << 20))
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    conn.abort()
    assert list(root.iterdir()) == []


async def test_local_backend_misconfiguration() -> None:
    """A root that does not exist fails at construction with a clear message."""
    with pytest.raises(sftpd.ConfigError, match="is not a directory"):
        sftpd.LocalBackend("/nonexistent/sftp-root")
