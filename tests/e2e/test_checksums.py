"""End-to-end: file hashes without a shell: rclone's hash commands and check-file."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import paramiko
import pytest

import sftpd
from sftpd.testing import running_server
from tests.conftest import connect, make_file, named_backend
from tests.e2e.test_other_clients import Rclone
from tests.raw_sftp import open_raw, packet, string

MiB = 1 << 20
NAMES = ["plain.bin", "with space $dollar & 'quote'.txt", "sub/deeper/ünïcode.dat", "empty"]


@pytest.fixture(params=["memory", "local", "seaweedfs", "moto"])
async def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    """A memory, local or S3 (on SeaweedFS or moto) backend."""
    async with named_backend(request, tmp_path, part_size=5 * MiB) as backend:
        yield backend


def tree(folder: Path) -> dict[str, bytes]:
    """A few files of assorted sizes and awkward names."""
    files = {}
    for number, name in enumerate(NAMES):
        size = 0 if name == "empty" else (3 * MiB + 7 if number == 0 else 1000 * number)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        files[name] = make_file(folder / name, size, seed=number).read_bytes()
    return files


async def test_rclone_hashes_and_check_compare_by_hash(
    any_backend: object, rclone: Rclone, tmp_path: Path
) -> None:
    """With hash_commands on, rclone md5sum and sha1sum print the files' real hashes and
    rclone check compares by hash; without, rclone can only compare sizes."""
    files = tree(tmp_path / "src")
    async with running_server(backend=any_backend, hash_commands=True) as server:
        remote = rclone.remote(server.port, "/up")
        assert (await rclone("copy", str(tmp_path / "src"), remote)).returncode == 0
        # rclone probes its hash commands once (the shell probe, then md5sum and sha1sum
        # of nothing) and saves them in its config; a single file shows that part.
        single = await rclone("md5sum", rclone.remote(server.port, "/up/plain.bin"))
        assert single.stdout.split()[0] == hashlib.md5(files["plain.bin"]).hexdigest()
        # With them saved (rclone 1.60 races past a probe that concurrent checkers share),
        # the whole tree:
        remote = rclone.remote(server.port, "/up", md5sum_command="md5sum",
                               sha1sum_command="sha1sum")  # fmt: skip
        for tool, new in (("md5sum", hashlib.md5), ("sha1sum", hashlib.sha1)):
            result = await rclone(tool, remote)
            assert result.returncode == 0, result.stderr
            printed = {line[34 if tool == "md5sum" else 42 :]: line.split()[0]
                       for line in result.stdout.splitlines()}  # fmt: skip
            assert printed == {name: new(data).hexdigest() for name, data in files.items()}
        checked = await rclone("check", str(tmp_path / "src"), remote)
        assert checked.returncode == 0, checked.stderr
        assert "0 differences found" in checked.stderr
        assert "hashes could not be checked" not in checked.stderr
    async with running_server(backend=any_backend) as server:
        remote = rclone.remote(server.port, "/up")
        checked = await rclone("check", "--checkers", "1", str(tmp_path / "src"), remote)
        assert "hashes could not be checked" in checked.stderr  # size only, as before


async def test_other_commands_are_still_refused_with_hash_commands_on() -> None:
    """Only rclone's exact commands are answered: a shell, ls, or md5sum with two paths
    or with shell syntax is refused, and no process ever runs."""
    async with running_server(backend=sftpd.MemoryBackend(), hash_commands=True) as server:
        async with connect(server.port) as conn:
            for command in ("ls /", "md5sum a b", "md5sum $(id)", "md5sum a;id", "sha256sum a"):
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.run(command, check=False)
            result = await conn.run("md5sum /missing", check=False)
            assert result.exit_status == 1
            assert result.stderr == "md5sum: /missing: No such file\n"


def paramiko_check(port: int, path: str, algorithm: str, block: int = 0) -> bytes:
    """paramiko's SFTPFile.check (the check-file extension) of a whole file."""
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.connect(username="dev", password="dev")
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with sftp.open(path, "rb") as f:
            return bytes(f.check(algorithm, 0, 0, block))
    finally:
        transport.close()


async def test_check_file_through_paramiko_and_raw_requests(tmp_path: Path) -> None:
    """check-file (paramiko), check-file-handle and check-file-name hash a file whole or
    in blocks with the first known algorithm asked for; an unknown algorithm or a block
    below 256 bytes is refused with a status."""
    import asyncio

    data = make_file(tmp_path / "f", 5 * MiB + 11).read_bytes()
    backend = sftpd.MemoryBackend({"/f.bin": data})
    async with running_server(backend=backend) as server:
        for algorithm in ("md5", "sha1", "sha256", "sha512"):
            whole = await asyncio.to_thread(paramiko_check, server.port, "/f.bin", algorithm)
            assert whole == hashlib.new(algorithm, data).digest()
        blocks = await asyncio.to_thread(paramiko_check, server.port, "/f.bin", "sha1", MiB)
        expected = b"".join(hashlib.sha1(data[i : i + MiB]).digest()
                            for i in range(0, len(data), MiB))  # fmt: skip
        assert blocks == expected
        async with connect(server.port) as conn:
            chan, raw = await open_raw(conn)

            async def ask(body: bytes) -> tuple[int, bytes]:
                chan.write(packet(200, struct.pack(">I", 9), body))
                kind, rest = await raw.packet()
                return kind, rest[4:]

            name = string(b"check-file-name") + string(b"/f.bin")
            kind, reply = await ask(
                name + string(b"crc32,sha384,md5") + struct.pack(">QQI", 10, 1000, 0)
            )
            assert kind == 201  # EXTENDED_REPLY
            assert (
                reply
                == string(b"check-file")
                + string(b"sha384")
                + hashlib.sha384(data[10:1010]).digest()
            )
            kind, reply = await ask(name + string(b"whirlpool") + struct.pack(">QQI", 0, 0, 0))
            assert (kind, reply[:4]) == (101, struct.pack(">I", 8))  # OP_UNSUPPORTED
            kind, reply = await ask(name + string(b"md5") + struct.pack(">QQI", 0, 0, 100))
            assert kind == 101
            assert b"at least 256" in reply
            chan.close()
