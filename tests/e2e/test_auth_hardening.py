"""End-to-end: key logins with OpenSSH, permissions, throttling and timeouts."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from sftpd.audit import AuditLog
from sftpd.integrations.prometheus import PrometheusMetrics
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect

FAST_LIMITS = sftpd.LoginLimits(per_user_and_address=3, base_delay=0.1, max_delay=0.4)


def ssh_keygen(path: Path, kind: str) -> Path:
    args = {
        "ed25519": ["-t", "ed25519"],
        "ecdsa": ["-t", "ecdsa", "-b", "256"],
        "rsa": ["-t", "rsa", "-b", "2048"],
    }[kind]
    subprocess.run(
        ["ssh-keygen", "-q", *args, "-N", "", "-C", f"{kind} test key", "-f", str(path)], check=True
    )
    return path


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_matches_ssh_keygen(tmp_path: Path, kind: str) -> None:
    """fingerprint(decode_authorized_key(line)) prints what ssh-keygen -l prints, sha256 and md5."""
    key = ssh_keygen(tmp_path / kind, kind)
    line = 'from="127.0.0.1",no-pty ' + (tmp_path / f"{kind}.pub").read_text()
    decoded = sftpd.decode_authorized_key(line)
    for digest in ("sha256", "md5"):
        out = subprocess.run(
            ["ssh-keygen", "-E", digest, "-lf", f"{key}.pub"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert sftpd.fingerprint(decoded, digest) == out.split()[1]


def test_decode_authorized_key_rejects_garbage() -> None:
    """A line without a key, or with a broken one, is a ValueError."""
    with pytest.raises(ValueError, match="no ssh-ed25519"):
        sftpd.decode_authorized_key("hello world")
    with pytest.raises(ValueError, match="invalid public key"):
        sftpd.decode_authorized_key("ssh-ed25519 AAAAnotakey comment")


@pytest.mark.parametrize(
    ("kind", "algorithm"),
    [
        ("ed25519", "ssh-ed25519"),
        ("ecdsa", "ecdsa-sha2-nistp256"),
        ("rsa", "rsa-sha2-256"),
        ("rsa", "rsa-sha2-512"),
    ],
)
async def test_openssh_key_login(
    tmp_path: Path, openssh: OpenSSH, kind: str, algorithm: str
) -> None:
    """OpenSSH logs in with each key type from an authorized_keys file; another key fails."""
    key = ssh_keygen(tmp_path / kind, kind)
    wrong = ssh_keygen(tmp_path / f"wrong-{kind}", kind)
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text("# team keys\n\n" + "no-pty " + (tmp_path / f"{kind}.pub").read_text())
    auth = sftpd.AuthorizedKeys({"alice": keys_file})
    key_opts = [
        "-o",
        "PubkeyAuthentication=yes",
        "-o",
        "PreferredAuthentications=publickey",
        "-o",
        f"PubkeyAcceptedAlgorithms={algorithm}",
        "-o",
        "IdentitiesOnly=yes",
    ]
    async with running_server(backend=sftpd.MemoryBackend(), auth=auth) as server:
        ok = await openssh.run(
            server.port, "ls\n", user="alice", cwd=tmp_path, extra=[*key_opts, "-i", str(key)]
        )
        assert ok.returncode == 0, ok.stderr
        bad = await openssh.run(
            server.port, "ls\n", user="alice", cwd=tmp_path, extra=[*key_opts, "-i", str(wrong)]
        )
        assert bad.returncode != 0
        assert "Permission denied" in bad.stderr


async def test_password_and_keys_on_one_server(tmp_path: Path, openssh: OpenSSH) -> None:
    """CombinedAuthenticator accepts both the password user and the key user."""
    key = ssh_keygen(tmp_path / "k", "ed25519")
    auth = sftpd.CombinedAuthenticator(
        sftpd.StaticPasswords({"pw": "secret"}),
        sftpd.AuthorizedKeys({"keyuser": [(tmp_path / "k.pub").read_text()]}),
    )
    async with running_server(backend=sftpd.MemoryBackend(), auth=auth) as server:
        by_password = await openssh.run(
            server.port, "ls\n", user="pw", password="secret", cwd=tmp_path
        )
        assert by_password.returncode == 0, by_password.stderr
        by_key = await openssh.run(
            server.port,
            "ls\n",
            user="keyuser",
            cwd=tmp_path,
            extra=[
                "-o",
                "PubkeyAuthentication=yes",
                "-o",
                "PreferredAuthentications=publickey",
                "-o",
                "IdentitiesOnly=yes",
                "-i",
                str(key),
            ],
        )
        assert by_key.returncode == 0, by_key.stderr


async def test_keyboard_interactive_is_a_password_path(tmp_path: Path, openssh: OpenSSH) -> None:
    """A client that only speaks keyboard-interactive logs in with the password."""
    async with running_server(backend=sftpd.MemoryBackend()) as server:
        result = await openssh.run(
            server.port,
            "ls\n",
            cwd=tmp_path,
            extra=[
                "-o",
                "PreferredAuthentications=keyboard-interactive",
                "-o",
                "KbdInteractiveAuthentication=yes",
            ],
        )
    assert result.returncode == 0, result.stderr


class PermAuth:
    def authenticate_password(self, username: str, password: str, peer: sftpd.Peer) -> Any:
        return {"permissions": username}  # the username names the preset


async def test_permission_presets() -> None:
    """read-only, upload-only and no-delete sessions are refused exactly what they lack."""
    backend = sftpd.MemoryBackend({"/pub/readme.txt": b"hello"})
    denied = asyncssh.SFTPPermissionDenied
    async with running_server(backend=backend, auth=PermAuth()) as server:
        async with connect(server.port, "read-only", "x") as conn, conn.start_sftp_client() as ro:
            assert "readme.txt" in await ro.listdir("/pub")
            async with ro.open("/pub/readme.txt", "rb") as f:
                assert await f.read() == b"hello"
            for call in (
                ro.open("/pub/new", "wb"),
                ro.remove("/pub/readme.txt"),
                ro.mkdir("/d"),
                ro.rename("/pub", "/x"),
                ro.chmod("/pub", 0o700),
            ):
                with pytest.raises(denied):
                    await call
        async with connect(server.port, "upload-only", "x") as conn, conn.start_sftp_client() as up:
            async with up.open("/pub/drop.bin", "wb") as f:
                await f.write(b"dropped")
            for call in (
                up.listdir("/pub"),
                up.open("/pub/readme.txt", "rb"),
                up.remove("/pub/readme.txt"),
                up.rename("/pub/drop.bin", "/x"),
            ):
                with pytest.raises(denied):
                    await call
        async with connect(server.port, "no-delete", "x") as conn, conn.start_sftp_client() as nd:
            async with nd.open("/pub/more.txt", "wb") as f:
                await f.write(b"more")
            for call in (
                nd.remove("/pub/more.txt"),
                nd.rmdir("/pub"),
                nd.rename("/pub/more.txt", "/pub/m2"),
            ):
                with pytest.raises(denied):
                    await call
    session = sftpd.Session(username="t", peer=sftpd.Peer("x", 0))
    assert await backend.read_file("/pub/drop.bin", session) == b"dropped"
    assert await backend.read_file("/pub/more.txt", session) == b"more"
    assert await backend.read_file("/pub/readme.txt", session) == b"hello"


async def test_failed_logins_slow_down_then_lock_out_but_others_log_in() -> None:
    """Wrong passwords get growing delays, then even the right one is refused; others still work."""
    auth = {"victim": "right", "bystander": "fine"}
    async with running_server(
        backend=sftpd.MemoryBackend(), auth=auth, login_limits=FAST_LIMITS
    ) as server:
        delays = []
        for _ in range(3):
            start = time.monotonic()
            with pytest.raises(asyncssh.PermissionDenied):
                async with connect(server.port, "victim", "wrong"):
                    pass
            delays.append(time.monotonic() - start)
        assert delays[1] > 0.15  # 0.1 s, 0.2 s, 0.4 s of delay
        assert delays[2] > 0.35
        assert delays[2] > delays[0]
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(server.port, "victim", "right"):
                pass
        async with connect(server.port, "bystander", "fine") as conn, conn.start_sftp_client() as s:
            assert await s.listdir("/") == [".", ".."]


async def test_too_many_attempts_on_one_connection_disconnects(
    tmp_path: Path, openssh: OpenSSH
) -> None:
    """A client trying password after password is dropped after max_attempts_per_connection."""
    limits = sftpd.LoginLimits(
        base_delay=0, max_delay=0, max_attempts_per_connection=2, per_user_and_address=100
    )
    async with running_server(backend=sftpd.MemoryBackend(), login_limits=limits) as server:
        result = await openssh.run(
            server.port,
            "ls\n",
            password="wrong",
            cwd=tmp_path,
            extra=["-o", "NumberOfPasswordPrompts=5"],
        )
    assert result.returncode != 0
    assert "Too many authentication failures" in result.stderr


class SlowAuth:
    async def authenticate_password(self, username: str, password: str, peer: sftpd.Peer) -> Any:
        await asyncio.sleep(10)
        return {}


async def test_slow_authenticator_times_out_and_rejects() -> None:
    """An authenticator slower than auth_timeout rejects the attempt."""
    async with running_server(
        backend=sftpd.MemoryBackend(), auth=SlowAuth(), auth_timeout=0.2, login_limits=FAST_LIMITS
    ) as server:
        start = time.monotonic()
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(server.port):
                pass
        assert time.monotonic() - start < 5


async def test_idle_sessions_are_disconnected() -> None:
    """A session with no requests for idle_timeout seconds is closed by the server."""
    async with running_server(backend=sftpd.MemoryBackend(), idle_timeout=0.4) as server:
        async with connect(server.port) as conn:
            sftp = await conn.start_sftp_client()
            await sftp.listdir("/")
            await asyncio.sleep(2.5)
            with pytest.raises((asyncssh.Error, OSError)):
                await sftp.listdir("/")


async def test_unauthenticated_connections_are_dropped_after_login_timeout() -> None:
    """A client that never authenticates is disconnected after login_timeout."""
    async with running_server(backend=sftpd.MemoryBackend(), login_timeout=0.5) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        banner = await reader.readline()
        assert banner.startswith(b"SSH-2.0-sftpd")
        writer.write(b"SSH-2.0-test\r\n")
        rest = await asyncio.wait_for(reader.read(), 10)  # returns at EOF
        assert reader.at_eof()
        assert isinstance(rest, bytes)
        writer.close()


async def hold_unauthenticated(port: int, host: str = "127.0.0.1") -> asyncio.StreamWriter:
    """A connection that reads the server's greeting and then says nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
    assert (await reader.readline()).startswith(b"SSH-2.0-")
    return writer


async def can_log_in(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a client from ``host`` gets through to a listing."""
    try:
        async with connect(port, local_addr=(host, 0)) as conn, conn.start_sftp_client() as sftp:
            await sftp.listdir("/")
    except (asyncssh.Error, OSError):
        return False
    return True


async def test_too_many_unauthenticated_connections_are_dropped() -> None:
    """Past max_unauthenticated, new connections are dropped; logged-in ones do not count.

    When a pending connection goes away, a new client gets in again.
    """
    async with running_server(backend=sftpd.MemoryBackend(), max_unauthenticated=3,
                              max_unauthenticated_per_address=None) as server:  # fmt: skip
        async with connect(server.port) as first, connect(server.port) as second:
            idle = [await hold_unauthenticated(server.port) for _ in range(3)]
            assert not await can_log_in(server.port)
            idle.pop().close()
            for _ in range(50):  # until the server has seen it go
                if await can_log_in(server.port):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("no login after a pending connection closed")
            assert not first.is_closed()
            assert not second.is_closed()
            for writer in idle:
                writer.close()


async def test_one_address_cannot_take_every_login_slot() -> None:
    """max_unauthenticated_per_address drops more from one address; others still log in.

    Each refusal is a telemetry event, a Prometheus count and an audit line.
    """
    bus = telemetry.TelemetryBus()
    events: list[telemetry.Event] = []
    bus.attach("t", [("sftpd", "connection", "refused")], events.append)
    metrics = PrometheusMetrics().attach(bus)
    audit = io.StringIO()
    AuditLog(audit).attach(bus)
    async with running_server(backend=sftpd.MemoryBackend(), telemetry=bus,
                              max_unauthenticated_per_address=2) as server:  # fmt: skip
        idle = [await hold_unauthenticated(server.port, "127.0.0.2") for _ in range(2)]
        assert not await can_log_in(server.port, "127.0.0.2")
        assert await can_log_in(server.port, "127.0.0.1")
        for writer in idle:
            writer.close()
    assert [e.metadata["reason"] for e in events] == ["max_unauthenticated_per_address"]
    assert events[0].metadata["peer"].startswith("127.0.0.2:")
    refused = metrics.registry.get_sample_value(
        "sftpd_connections_refused_total", {"reason": "max_unauthenticated_per_address"}
    )
    assert refused == 1.0
    lines = [json.loads(line) for line in audit.getvalue().splitlines()]
    assert [(r["event"], r["reason"]) for r in lines if r["event"] == "refused"] == [
        ("refused", "max_unauthenticated_per_address")
    ]
