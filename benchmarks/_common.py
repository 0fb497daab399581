"""Helpers shared by the benchmarks: server processes, OpenSSH runs, RSS readings."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh

HERE = Path(__file__).resolve().parent
TMPFS = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float:
    """VmHWM (peak resident set) or another /proc status field of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User plus system CPU time a process has used, in seconds.

    With ``children``, also that of its finished children (sshd's per-session processes).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / ticks


def children_cpu_seconds() -> float:
    """User plus system CPU time of this process's finished children (sftp and its ssh)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


def sftp_batch(
    port: int,
    commands: str,
    cwd: Path,
    askpass: Path | None = None,
    *,
    user: str = "dev",
    identity: Path | None = None,
) -> float:
    """Run OpenSSH sftp in batch mode (password from ``askpass``, or key ``identity``).

    Returns:
        Wall seconds.
    """
    env = dict(os.environ)
    if askpass is not None:
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    login = ["-o", "PubkeyAuthentication=no"] if identity is None else ["-i", str(identity)]
    argv = [
        "sftp", "-o", "BatchMode=no", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", *login,
        "-o", "LogLevel=ERROR", *os.environ.get("SFTPD_BENCH_SFTP_OPTS", "").split(),
        "-P", str(port), "-b", "-", f"{user}@127.0.0.1",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(
        argv, input=commands, text=True, cwd=cwd, env=env, check=True,
        capture_output=True, start_new_session=True, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - start


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(proc: subprocess.Popen[Any], port: int, what: str, seconds: float) -> None:
    """Wait until ``port`` accepts connections; exit if ``proc`` ends or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start (exit {proc.poll()})")
        time.sleep(0.05)


@contextlib.contextmanager
def openssh_server(tmp: Path) -> Iterator[tuple[int, Path, int] | None]:
    """OpenSSH's own sshd (internal-sftp) on loopback, for a reference point.

    Yields its port, a client key that logs in as the current user, and its pid; or
    None when sshd is not installed (Debian: ``apt-get install openssh-server``).
    """
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if sshd is None:
        yield None
        return
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
    home = tmp / "sshd"
    home.mkdir()
    host_key, client_key = home / "host_key", home / "client_key"
    for key in (host_key, client_key):
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
        key.chmod(0o600)
    (home / "authorized_keys").write_bytes(
        asyncssh.read_private_key(str(client_key)).export_public_key()
    )
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )
    proc = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(home / "sshd_config")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(proc, port, "sshd", 10)
        yield port, client_key, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def small_tree(folder: Path, files: int, size: int) -> Path:
    """``files`` random files of ``size`` bytes in a new ``folder`` (f0000.bin...)."""
    folder.mkdir()
    for index in range(files):
        (folder / f"f{index:04d}.bin").write_bytes(os.urandom(size))
    return folder


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
