"""Unit and process-level tests of the `sftpd serve` command."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import asyncssh
import pytest
from click.testing import CliRunner

from sftpd.cli import ensure_host_key, main
from tests.conftest import connect


def test_help_lists_every_option() -> None:
    """`sftpd serve --help` documents each option."""
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--user", "--host-key-dir", "--backend",
                   "--max-sessions", "--open-timeout", "--close-timeout"):  # fmt: skip
        assert option in result.output


def test_bad_user_and_backend_are_rejected() -> None:
    """A --user without a password and an unknown --backend fail with usage errors."""
    runner = CliRunner()
    bad_user = runner.invoke(main, ["serve", "--user", "nopass"])
    assert bad_user.exit_code == 2
    assert "NAME:PASSWORD" in bad_user.output
    bad_backend = runner.invoke(main, ["serve", "--backend", "ftp://x"])
    assert bad_backend.exit_code == 2
    assert "unknown backend" in bad_backend.output


def test_host_key_is_generated_once_and_reused(tmp_path: Path) -> None:
    """The first run creates an ed25519 key with 0600 permissions; later runs reuse it."""
    created = ensure_host_key(tmp_path / "keys")
    assert created is not None
    assert created.stat().st_mode & 0o777 == 0o600
    first = created.read_bytes()
    assert ensure_host_key(tmp_path / "keys") is None
    assert created.read_bytes() == first


async def start_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, int, str]:
    """Start `sftpd serve ARGS`; return the process, its port and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sftpd", "serve", "--port", "0", *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None
    text = ""
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not line:
            pytest.fail(f"server exited early: {text}")
        text += line.decode()
        match = re.search(r"sftp -P (\d+) (\S+)@localhost", text)
        if match:
            break
    for _ in range(3):
        text += (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
    return proc, int(match.group(1)), text


async def stop_cli(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM the server and return its exit code."""
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 20)


async def test_serve_prints_how_to_connect_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`sftpd serve` with defaults serves dev/dev, prints the sftp command, exits 0 on TERM."""
    proc, port, text = await start_cli(cwd=tmp_path)
    assert "dev@localhost" in text
    assert re.search(r"ssh-ed25519\s+SHA256:[A-Za-z0-9+/]{43}", text), text
    assert (tmp_path / ".sftpd" / "host_keys" / "ssh_host_ed25519_key").exists()
    async with connect(port) as conn, conn.start_sftp_client() as sftp:
        assert await sftp.listdir("/") == [".", ".."]
    assert await stop_cli(proc) == 0


async def test_config_file_users_keys_roots_and_permissions(tmp_path: Path) -> None:
    """A TOML file gives users passwords (from the environment), keys, roots and permissions.

    Its [server] section sets server options too (here the ciphers offered).
    """
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "bob.keys").write_text("# bob\n" + key.export_public_key().decode())
    (tmp_path / "sftpd.toml").write_text(
        '[server]\nmax_sessions = 5\nidle_timeout = 60\nciphers = ["aes256-ctr"]\n\n'
        '[users.alice]\npassword_env = "ALICE_PW"\nroot = "/drop/alice"\n'
        'permissions = "upload-only"\n\n'
        '[users.bob]\nauthorized_keys = "bob.keys"\nroot = "/drop"\n'
        'permissions = ["read", "list"]\n'
    )
    proc, port, _text = await start_cli(
        "--config", "sftpd.toml", cwd=tmp_path, env={"ALICE_PW": "s3cret"}
    )
    async with connect(port, "alice", "s3cret") as conn, conn.start_sftp_client() as alice:
        async with alice.open("/report.csv", "wb") as f:
            await f.write(b"a,b\n")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await alice.listdir("/")
    with pytest.raises(asyncssh.KeyExchangeFailed):  # only the configured cipher is offered
        async with connect(port, "alice", "s3cret", encryption_algs=["aes128-ctr"]):
            pass
    async with (
        asyncssh.connect(
            "127.0.0.1", port, username="bob", client_keys=[key], known_hosts=None
        ) as conn,
        conn.start_sftp_client() as bob,
    ):
        assert "report.csv" in await bob.listdir("/alice")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await bob.remove("/alice/report.csv")
    assert await stop_cli(proc) == 0


async def test_authorized_keys_option(tmp_path: Path) -> None:
    """--authorized-keys NAME:FILE lets that key log in."""
    key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    (tmp_path / "k.pub").write_bytes(key.export_public_key())
    proc, port, text = await start_cli("--authorized-keys", "carol:k.pub", cwd=tmp_path)
    assert "carol@localhost" in text
    async with (
        asyncssh.connect(
            "127.0.0.1", port, username="carol", client_keys=[key], known_hosts=None
        ) as conn,
        conn.start_sftp_client() as sftp,
    ):
        assert await sftp.listdir("/") == [".", ".."]
    assert await stop_cli(proc) == 0


def test_bad_config_file_fails_with_the_key_named(tmp_path: Path) -> None:
    """An unknown key in the config file stops start-up with exit 2 and names the key."""
    (tmp_path / "bad.toml").write_text("[server]\nprot = 22\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2
    assert "unknown [server] key 'prot'" in result.output
