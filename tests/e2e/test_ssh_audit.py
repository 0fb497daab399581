"""End-to-end: `sftpd serve` defaults as ssh-audit and plain sockets see them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sftpd
from sftpd.testing import running_server
from tests.conftest import cli, connect, refused_at_key_exchange

SSH_AUDIT = Path(sys.executable).parent / "ssh-audit"
#: The warnings the defaults keep: X25519 for every client older than OpenSSH 9.9.
ALLOWED_WARNINGS = {
    ("kex", "curve25519-sha256"): ["does not provide protection against post-quantum attacks"],
    ("kex", "curve25519-sha256@libssh.org"): [
        "does not provide protection against post-quantum attacks"
    ],
}


async def test_ssh_audit_finds_no_failure_and_no_dheat_exposure(tmp_path: Path) -> None:
    """ssh-audit against `sftpd serve` defaults: no failure anywhere, warnings only for the
    two curve25519 key exchanges, no recommendation, and the DHEat connection-rate test
    (38 connections in 1.5 s) passes."""
    async with cli(cwd=tmp_path) as (_proc, port, _text):
        argv = [str(SSH_AUDIT), "-j", "-p", str(port), "127.0.0.1"]
        audit = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    report = json.loads(audit.stdout)
    assert audit.returncode == 2, audit.stderr  # ssh-audit's "warnings only"
    found: dict[tuple[str, str], list[str]] = {}
    for section in ("kex", "key", "enc", "mac"):
        for entry in report[section]:
            notes = entry.get("notes", {})
            assert not notes.get("fail"), (section, entry)
            if notes.get("warn"):
                found[(section, entry["algorithm"])] = notes["warn"]
    assert found == ALLOWED_WARNINGS
    assert report["additional_notes"] == []  # the DHEat rate note is absent
    assert report["recommendations"] == {}
    assert report["compression"] == ["none"]
    host_keys = {key["algorithm"] for key in report["key"]}
    assert {"ssh-ed25519", "rsa-sha2-256", "rsa-sha2-512"} <= host_keys
    assert not any("ecdsa" in name or name == "ssh-rsa" for name in host_keys), host_keys


async def banner_of(port: int) -> bytes:
    """The first bytes a new TCP connection receives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(8), 5)
    finally:
        writer.close()


async def test_connections_beyond_the_rate_get_no_banner() -> None:
    """From one address, the first connection_burst connections get the SSH banner, the
    ones right after are closed with OpenSSH's "Exceeded MaxStartups", and once the bucket
    refills a new connection is served again."""
    async with running_server(
        backend=sftpd.MemoryBackend(), connection_rate=20.0, connection_burst=5
    ) as server:
        first = [await banner_of(server.port) for _ in range(5)]
        refused = [await banner_of(server.port) for _ in range(3)]
        await asyncio.sleep(0.2)  # 4 tokens back
        later = await banner_of(server.port)
    assert all(b.startswith(b"SSH-2.0") for b in first)
    assert refused == [b"Exceeded"] * 3
    assert later.startswith(b"SSH-2.0")


OLD_ONLY: list[dict[str, Any]] = [
    {"kex_algs": ["ecdh-sha2-nistp256"]},
    {"kex_algs": ["diffie-hellman-group-exchange-sha256"]},
    {"kex_algs": ["diffie-hellman-group14-sha256"]},
    {"mac_algs": ["hmac-sha2-256"], "encryption_algs": ["aes128-ctr"]},
    {"mac_algs": ["umac-64-etm@openssh.com"], "encryption_algs": ["aes128-ctr"]},
]


@pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields")
@pytest.mark.parametrize(
    "client_algs", OLD_ONLY, ids=lambda algs: "+".join(v[0] for v in algs.values())
)
async def test_old_algorithms_only_with_the_legacy_switch(client_algs: dict[str, Any]) -> None:
    """A client offering only a NIST curve, finite-field DH, a non-etm MAC or a 64-bit tag
    is refused by default and served with legacy_algorithms."""
    async with running_server(backend=sftpd.MemoryBackend()) as server:
        await refused_at_key_exchange(server.port, **client_algs)
    async with running_server(backend=sftpd.MemoryBackend(), legacy_algorithms=True) as server:
        async with connect(server.port, **client_algs) as conn, conn.start_sftp_client() as sftp:
            assert await sftp.listdir("/") == [".", ".."]


async def test_legacy_macs_adds_only_the_sha2_macs_without_etm() -> None:
    """legacy_macs lets an hmac-sha2-256 (non-etm) client in; a NIST-curve one stays out."""
    async with running_server(backend=sftpd.MemoryBackend(), legacy_macs=True) as server:
        options: dict[str, Any] = {"mac_algs": ["hmac-sha2-256"], "encryption_algs": ["aes128-ctr"]}
        async with connect(server.port, **options) as conn, conn.start_sftp_client() as sftp:
            assert await sftp.listdir("/") == [".", ".."]
        await refused_at_key_exchange(server.port, kex_algs=["ecdh-sha2-nistp256"])


async def test_zlib_is_not_offered_by_default() -> None:
    """A client that insists on zlib compression is refused by default, served with legacy."""
    async with running_server(backend=sftpd.MemoryBackend()) as server:
        await refused_at_key_exchange(server.port, compression_algs=["zlib@openssh.com"])
    async with running_server(backend=sftpd.MemoryBackend(), legacy_algorithms=True) as server:
        options: dict[str, Any] = {"compression_algs": ["zlib@openssh.com"]}
        async with connect(server.port, **options) as conn, conn.start_sftp_client() as sftp:
            assert await sftp.listdir("/") == [".", ".."]
