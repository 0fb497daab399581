"""End-to-end: the SSH layer as clients see it: algorithms offered, packets coalesced."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import sftpd
from sftpd._coalesce import CoalescingTransport
from sftpd._connection import Connection
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect, refused_at_key_exchange


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
            assert isinstance(served, Connection)
            transport = getattr(served._conn, "_transport", None)
            assert isinstance(transport, CoalescingTransport)
            assert transport.get_extra_info("peername")[0] == "127.0.0.1"
        # and the cipher list is honoured
        await refused_at_key_exchange(
            server.port, encryption_algs=["chacha20-poly1305@openssh.com"]
        )


SHA1_ONLY: list[dict[str, Any]] = [
    {"kex_algs": ["diffie-hellman-group14-sha1"]},
    {"mac_algs": ["hmac-sha1"], "encryption_algs": ["aes128-ctr"]},
    {"mac_algs": ["hmac-sha1-etm@openssh.com"], "encryption_algs": ["aes128-ctr"]},
    {"server_host_key_algs": ["ssh-rsa"]},
]


# cryptography deprecates finite-field Diffie-Hellman, which the SHA-1 kex uses.
@pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields")
@pytest.mark.parametrize("client_algs", SHA1_ONLY, ids=lambda algs: "+".join(algs))
async def test_sha1_is_refused_unless_legacy_sha1(
    client_algs: dict[str, Any], generated_host_keys: Path
) -> None:
    """A client offering only a SHA-1 kex, MAC or host signature is refused, unless legacy."""
    options = {"backend": sftpd.MemoryBackend(), "system_dir": generated_host_keys}
    async with running_server(**options) as server:
        await refused_at_key_exchange(server.port, **client_algs)
    async with running_server(**options, legacy_sha1=True) as server:
        async with connect(server.port, **client_algs) as conn, conn.start_sftp_client() as sftp:
            assert await sftp.listdir("/") == [".", ".."]


async def test_openssh_is_not_offered_ssh_rsa_host_signatures(
    openssh: OpenSSH, generated_host_keys: Path
) -> None:
    """OpenSSH gets the RSA host key signed with SHA-2 (rsa-sha2-256), never with ssh-rsa."""
    debug = ["-o", "LogLevel=DEBUG1"]
    async with running_server(
        backend=sftpd.MemoryBackend(), system_dir=generated_host_keys
    ) as server:
        sha1 = await openssh.run(
            server.port, "ls /\n", extra=["-o", "HostKeyAlgorithms=ssh-rsa", *debug]
        )
        sha2 = await openssh.run(
            server.port, "ls /\n", extra=["-o", "HostKeyAlgorithms=rsa-sha2-256", *debug]
        )
    assert sha1.returncode != 0
    assert "no matching host key type" in sha1.stderr
    assert sha2.returncode == 0, sha2.stderr
    assert "kex: host key algorithm: rsa-sha2-256" in sha2.stderr
