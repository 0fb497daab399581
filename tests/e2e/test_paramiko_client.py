"""End-to-end: paramiko's SFTP client (run in a thread) against a real server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import paramiko
import pytest

import sftpd
from tests.conftest import make_file, sha256, sha256_file


def _session(port: int, password: str = "dev") -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    transport = paramiko.Transport(("127.0.0.1", port))
    transport.connect(username="dev", password=password)
    client = paramiko.SFTPClient.from_transport(transport)
    assert client is not None
    return transport, client


def _round_trip(port: int, tmp: Path) -> None:
    transport, sftp = _session(port)
    try:
        src = make_file(tmp / "p.bin", 7_654_321, seed=11)
        sftp.mkdir("/pk")
        sftp.put(str(src), "/pk/p.bin")
        assert sftp.stat("/pk/p.bin").st_size == 7_654_321
        sftp.get("/pk/p.bin", str(tmp / "back.bin"))
        assert sha256_file(tmp / "back.bin") == sha256_file(src)
        sftp.rename("/pk/p.bin", "/pk/q.bin")
        assert sftp.listdir("/pk") == ["q.bin"]
        attrs = sftp.listdir_attr("/pk")
        assert attrs[0].st_size == 7_654_321
        assert attrs[0].longname.startswith("-rw")
        with sftp.open("/pk/small.txt", "w") as f:
            f.write(b"hello paramiko")
        with sftp.open("/pk/small.txt", "r") as f:
            assert f.read() == b"hello paramiko"
        sftp.chmod("/pk/q.bin", 0o640)
        assert (sftp.stat("/pk/q.bin").st_mode or 0) & 0o777 == 0o640
        sftp.remove("/pk/q.bin")
        sftp.remove("/pk/small.txt")
        sftp.rmdir("/pk")
        with pytest.raises(FileNotFoundError):
            sftp.stat("/pk")
        with pytest.raises(FileNotFoundError):
            sftp.remove("/missing")
    finally:
        sftp.close()
        transport.close()


async def test_paramiko_round_trip(server: sftpd.Server, tmp_path: Path) -> None:
    """paramiko can mkdir, put, get (sha256 equal), rename, list, chmod, remove and rmdir."""
    await asyncio.to_thread(_round_trip, server.port, tmp_path)


def _wrong_password(port: int) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        _session(port, password="nope")


async def test_paramiko_wrong_password(server: sftpd.Server) -> None:
    """paramiko with a wrong password fails authentication."""
    await asyncio.to_thread(_wrong_password, server.port)


def _pipelined_upload(port: int) -> str:
    transport, sftp = _session(port)
    try:
        data = os.urandom(5 << 20)
        with sftp.open("/pipelined.bin", "wb") as f:
            f.set_pipelined(True)
            for i in range(0, len(data), 32768):
                f.write(data[i : i + 32768])
        with sftp.open("/pipelined.bin", "rb") as f:
            f.prefetch()
            assert sha256(f.read()) == sha256(data)
        return sha256(data)
    finally:
        sftp.close()
        transport.close()


async def test_paramiko_pipelined_upload_and_prefetch_download(
    server: sftpd.Server, memory_backend: sftpd.MemoryBackend
) -> None:
    """Pipelined writes and prefetched reads keep every byte in place."""
    digest = await asyncio.to_thread(_pipelined_upload, server.port)
    session = sftpd.Session(username="t", peer=sftpd.Peer("x", 0))
    assert sha256(await memory_backend.read_file("/pipelined.bin", session)) == digest
