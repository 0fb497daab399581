"""End-to-end: OpenSSH's sftp client in batch mode against a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

import sftpd
from tests.conftest import OpenSSH, make_file, sha256_file


async def test_basic_commands_round_trip(
    server: sftpd.Server, openssh: OpenSSH, tmp_path: Path, memory_backend: sftpd.MemoryBackend
) -> None:
    """put, get, ls -l, mkdir, rename, chmod, rm and rmdir work and keep content intact."""
    src = make_file(tmp_path / "src.bin", 3_000_003)
    result = await openssh.run(
        server.port,
        "mkdir inbox\n"
        "put src.bin inbox/a.bin\n"
        "ls -l inbox\n"
        "rename inbox/a.bin inbox/b.bin\n"
        "chmod 600 inbox/b.bin\n"
        "ls -l inbox\n"
        "get inbox/b.bin back.bin\n",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sha256_file(tmp_path / "back.bin") == sha256_file(src)
    listing = result.stdout.split("chmod 600 inbox/b.bin")
    assert "a.bin" in listing[0]
    assert "3000003" in listing[0]
    assert "-rw-------" in listing[1]
    assert "b.bin" in listing[1]
    stored = await memory_backend.read_file("/inbox/b.bin", _session())
    assert len(stored) == 3_000_003

    result = await openssh.run(server.port, "rm inbox/b.bin\nrmdir inbox\nls -1\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "inbox" not in result.stdout.split("ls -1", 1)[1]
    with pytest.raises(sftpd.NoSuchFile):
        await memory_backend.stat("/inbox", _session())


async def test_reput_resumes_a_partial_upload(
    server: sftpd.Server, openssh: OpenSSH, tmp_path: Path, memory_backend: sftpd.MemoryBackend
) -> None:
    """reput appends the missing tail to a partial upload; the result equals the source."""
    src = make_file(tmp_path / "big.bin", 5_000_000, seed=7)
    data = src.read_bytes()
    await memory_backend.write_file("/big.bin", data[:2_000_000], _session())
    result = await openssh.run(server.port, "reput big.bin big.bin\nget big.bin back.bin\n",
                               cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sha256_file(tmp_path / "back.bin") == sha256_file(src)


async def test_errors_are_reported_and_batch_stops(
    server: sftpd.Server, openssh: OpenSSH, tmp_path: Path
) -> None:
    """Removing a missing file fails with "No such file" and sftp -b exits non-zero."""
    result = await openssh.run(server.port, "rm nothing-here.txt\n", cwd=tmp_path)
    assert result.returncode != 0
    assert "No such file" in result.stderr


async def test_wrong_password_is_refused(
    server: sftpd.Server, openssh: OpenSSH, tmp_path: Path
) -> None:
    """A wrong password gets no session and sftp exits with an error."""
    result = await openssh.run(server.port, "ls\n", password="wrong", cwd=tmp_path)
    assert result.returncode != 0
    assert "Permission denied" in result.stderr
    assert server.active_sessions == 0


@pytest.mark.slow
async def test_256_mib_upload_and_download(
    server: sftpd.Server, openssh: OpenSSH, tmp_path: Path
) -> None:
    """A 256 MiB file goes up and comes back byte for byte."""
    src = make_file(tmp_path / "large.bin", 256 << 20, seed=3)
    result = await openssh.run(
        server.port, "put large.bin large.bin\nget large.bin back.bin\n", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sha256_file(tmp_path / "back.bin") == sha256_file(src)


def _session() -> sftpd.Session:
    return sftpd.Session(username="test", peer=sftpd.Peer("127.0.0.1", 0))
