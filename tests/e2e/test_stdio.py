"""End-to-end: OpenSSH's sshd runs ``sftpd stdio`` as its sftp subsystem."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import make_file, sha256_file

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keys(etc: Path) -> None:
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc / name)],
                       check=True)  # fmt: skip


@pytest.fixture
async def sshd(tmp_path: Path) -> AsyncIterator[tuple[int, Path, Path, Path]]:
    """Debian's sshd on a free loopback port whose sftp subsystem is ``sftpd stdio`` on a
    local folder; yields the port, the client key, the folder and the audit log."""
    if not Path(SSHD).exists():  # noqa: ASYNC240 - one stat before anything starts
        pytest.fail("OpenSSH's sshd is not installed (apt-get install openssh-server)")
    etc, root = tmp_path / "etc", tmp_path / "root"
    etc.mkdir()
    root.mkdir()
    await asyncio.to_thread(_keys, etc)
    (etc / "authorized_keys").write_text((etc / "client_key.pub").read_text())
    sftpd_bin = Path(sys.executable).parent / "sftpd"
    audit = tmp_path / "audit.jsonl"
    port = free_port()
    (etc / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {etc}/host_key\n"
        f"PidFile {etc}/sshd.pid\nAuthorizedKeysFile {etc}/authorized_keys\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"Subsystem sftp {sftpd_bin} stdio --backend local:{root} --audit-log {audit}\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    proc = await asyncio.create_subprocess_exec(
        SSHD, "-D", "-e", "-f", str(etc / "sshd_config"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield port, etc / "client_key", root, audit
    finally:
        proc.terminate()
        await proc.wait()


async def test_sshd_serves_sftpd_stdio_to_openssh_sftp(
    sshd: tuple[int, Path, Path, Path], tmp_path: Path
) -> None:
    """put, ls, rename and get through sshd + ``sftpd stdio``: the bytes land in the folder,
    come back intact, and the audit log names the user sshd authenticated."""
    port, key, root, audit = sshd
    src = make_file(tmp_path / "up.bin", 2_000_000, seed=8)
    user = getpass.getuser()
    proc = await asyncio.create_subprocess_exec(
        "sftp", "-i", str(key), "-P", str(port), "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-b", "-",
        f"{user}@127.0.0.1",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    batch = (f"put {src} up.bin\nmkdir d\nrename up.bin d/up.bin\nls -l d\n"
             f"get d/up.bin {tmp_path}/down.bin\n")  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(batch.encode()), 60)
    assert proc.returncode == 0, err.decode()
    assert "up.bin" in out.decode()
    assert sha256_file(root / "d" / "up.bin") == sha256_file(src)
    assert sha256_file(tmp_path / "down.bin") == sha256_file(src)
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {e["user"] for e in events} == {user}
    assert [e["event"] for e in events] == ["upload", "mkdir", "rename", "download", "logout"]
    assert all(e["peer"].startswith("127.0.0.1:") for e in events)


async def test_stdio_without_sshd_answers_version() -> None:
    """``sftpd stdio`` on plain pipes answers INIT with VERSION 3 and ends at EOF."""
    sftpd_bin = shutil.which("sftpd") or str(Path(sys.executable).parent / "sftpd")
    proc = await asyncio.create_subprocess_exec(
        sftpd_bin, "stdio", "--backend", "memory",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(b"\0\0\0\x05\x01\0\0\0\x03"), 30)
    assert proc.returncode == 0, err.decode()
    assert out[4] == 2  # VERSION
    assert out[5:9] == b"\0\0\0\x03"


async def test_stdio_enforces_the_users_quota(tmp_path: Path) -> None:
    """``sftpd stdio`` (here under OpenSSH's ``sftp -D``) counts the user's files at start
    and refuses an upload past the config file's quota, storing nothing."""
    root = tmp_path / "root"
    (root / "ann").mkdir(parents=True)
    (root / "ann" / "old.bin").write_bytes(b"o" * 6 * 1024)
    config = tmp_path / "sftpd.toml"
    config.write_text(
        f'[server]\nbackend = "local:{root}"\n'
        '[users.ann]\npassword = "unused"\nroot = "/ann"\nquota_bytes = 10240\n'
    )
    (tmp_path / "small.bin").write_bytes(b"s" * 3 * 1024)
    (tmp_path / "big.bin").write_bytes(b"b" * 2 * 1024)
    sftpd_bin = shutil.which("sftpd") or str(Path(sys.executable).parent / "sftpd")
    server = f"{sftpd_bin} stdio --config {config} --user ann"

    async def batch(commands: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "sftp", "-D", server, "-b", "-", cwd=tmp_path,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(commands.encode()), 60)
        return int(proc.returncode or 0), out.decode()

    code, out = await batch("put small.bin\ndf\n")
    assert code == 0, out
    assert out.strip().splitlines()[-1].split()[:3] == ["10", "9", "1"]  # KiB
    code, out = await batch("put big.bin\n")
    assert code != 0
    assert not (root / "ann" / "big.bin").exists()
    assert (root / "ann" / "small.bin").stat().st_size == 3 * 1024
