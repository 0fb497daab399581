"""Helpers shared by the benchmarks: server processes, OpenSSH runs, RSS readings."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh

HERE = Path(__file__).resolve().parent
TMPFS = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float:
    """VmHWM (peak resident set) or another /proc status field of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def reset_peak_rss(pid: int) -> None:
    """Reset a process's VmHWM to its current RSS (Linux clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@contextlib.contextmanager
def server(
    *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """Start a benchmark server process; yield its port and process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._servers", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


def sftp_batch(port: int, commands: str, cwd: Path, askpass: Path) -> float:
    """Run OpenSSH sftp in batch mode; return wall seconds."""
    env = {
        **os.environ,
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
        "DISPLAY": ":0",
    }
    argv = [
        "sftp", "-o", "BatchMode=no", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "PubkeyAuthentication=no",
        "-o", "LogLevel=ERROR", *os.environ.get("SFTPD_BENCH_SFTP_OPTS", "").split(),
        "-P", str(port), "-b", "-", "dev@127.0.0.1",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(
        argv, input=commands, text=True, cwd=cwd, env=env, check=True,
        capture_output=True, start_new_session=True, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - start


def make_workspace(tmp: Path, size_mib: int) -> tuple[Path, Path, Path, Path]:
    """Host keys, an askpass script, a local folder with the payload, and a server root."""
    keys = tmp / "keys"
    keys.mkdir()
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(
        str(keys / "ssh_host_ed25519_key")
    )
    askpass = tmp / "askpass.sh"
    askpass.write_text("#!/bin/sh\necho dev\n")
    askpass.chmod(0o755)
    local = tmp / "local"
    local.mkdir()
    with (local / "payload.bin").open("wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(size_mib):
            f.write(block)
    root = tmp / "root"
    root.mkdir()
    return keys, askpass, local, root


def round_trip(
    port: int, local: Path, askpass: Path, size: int, pid: int | None = None
) -> tuple[float, float, float, float]:
    """Upload then download the payload and clean up.

    Returns:
        Upload and download wall seconds, and the server's CPU seconds for each (0 when
        ``pid`` is not given).
    """
    cpu0 = cpu_seconds(pid) if pid else 0.0
    up = sftp_batch(port, "put payload.bin payload.bin\n", local, askpass)
    cpu1 = cpu_seconds(pid) if pid else 0.0
    down = sftp_batch(port, "get payload.bin back.bin\n", local, askpass)
    cpu2 = cpu_seconds(pid) if pid else 0.0
    if (local / "back.bin").stat().st_size != size:
        raise SystemExit("downloaded size differs")
    (local / "back.bin").unlink()
    # Start each round empty, so peak RSS measures one stored copy.
    sftp_batch(port, "rm payload.bin\n", local, askpass)
    return up, down, cpu1 - cpu0, cpu2 - cpu1
