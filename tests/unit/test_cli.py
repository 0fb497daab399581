"""Unit and process-level tests of the `sftpd serve` command."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

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


async def test_serve_prints_how_to_connect_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`sftpd serve` with defaults serves dev/dev, prints the sftp command, and exits 0 on TERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sftpd", "serve", "--port", "0",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.stdout is not None
    text = ""
    port = 0
    while not port:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not line:
            pytest.fail(f"server exited early: {text}")
        text += line.decode()
        match = re.search(r"sftp -P (\d+) dev@localhost", text)
        port = int(match.group(1)) if match else 0
    for _ in range(3):
        text += (await asyncio.wait_for(proc.stdout.readline(), 5)).decode()
    assert re.search(r"ssh-ed25519\s+SHA256:[A-Za-z0-9+/]{43}", text), text
    assert (tmp_path / ".sftpd" / "host_keys" / "ssh_host_ed25519_key").exists()
    async with connect(port) as conn, conn.start_sftp_client() as sftp:
        assert await sftp.listdir("/") == [".", ".."]
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0
