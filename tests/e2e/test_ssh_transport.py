"""End-to-end: the SSH layer as clients see it: ciphers offered, packets coalesced."""

from __future__ import annotations

import re

import asyncssh
import pytest

import sftpd
from sftpd._coalesce import CoalescingTransport
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect


def negotiated_cipher(stderr: str) -> str:
    """The server-to-client cipher an OpenSSH debug log reports."""
    match = re.search(r"kex: server->client cipher: (\S+)", stderr)
    assert match, stderr
    return match.group(1)


async def test_openssh_gets_aes_by_default_and_chacha20_only_when_offered(
    openssh: OpenSSH,
) -> None:
    """By default OpenSSH negotiates AES and cannot force chacha20; ciphers=CIPHERS allows it."""
    debug = ["-o", "LogLevel=DEBUG1"]
    chacha = ["-c", "chacha20-poly1305@openssh.com"]
    async with running_server(backend=sftpd.MemoryBackend()) as server:
        result = await openssh.run(server.port, "ls /\n", extra=debug)
        assert result.returncode == 0, result.stderr
        assert negotiated_cipher(result.stderr).startswith("aes")
        refused = await openssh.run(server.port, "ls /\n", extra=chacha + debug)
        assert refused.returncode != 0
        assert "no matching cipher" in refused.stderr
    async with running_server(backend=sftpd.MemoryBackend(), ciphers=sftpd.CIPHERS) as server:
        result = await openssh.run(server.port, "ls /\n", extra=chacha + debug)
        assert result.returncode == 0, result.stderr
        assert negotiated_cipher(result.stderr) == "chacha20-poly1305@openssh.com"


@pytest.mark.parametrize("cipher", sftpd.DEFAULT_CIPHERS)
async def test_each_default_cipher_carries_a_transfer(cipher: str) -> None:
    """Every cipher offered by default moves 3 MiB intact (asyncssh client forced to it)."""
    data = bytes(range(256)) * (3 * 4096)
    async with running_server(backend=sftpd.MemoryBackend()) as server:
        async with (
            connect(server.port, encryption_algs=[cipher]) as conn,
            conn.start_sftp_client() as sftp,
        ):
            async with sftp.open("/f.bin", "wb") as f:
                await f.write(data)
            async with sftp.open("/f.bin", "rb") as f:
                assert await f.read() == data


async def test_server_connections_coalesce_their_writes() -> None:
    """Each accepted connection writes through a CoalescingTransport.

    This fails if asyncssh stops keeping its transport where sftpd puts the wrapper.
    """
    async with running_server(backend=sftpd.MemoryBackend()) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.listdir("/")
            assert server._ctx is not None
            [served] = server._ctx.connections
            transport = getattr(served._conn, "_transport", None)
            assert isinstance(transport, CoalescingTransport)
            assert transport.get_extra_info("peername")[0] == "127.0.0.1"
        with pytest.raises(asyncssh.KeyExchangeFailed):  # and the cipher list is honoured
            await connect(server.port, encryption_algs=["chacha20-poly1305@openssh.com"])
