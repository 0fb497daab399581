"""Upload and download a file through OpenSSH's sftp to two servers, in one run.

(a) sftpd on the memory backend, (b) asyncssh's stock SFTPServer serving a tmpfs
directory. Prints MB/s per direction and the ratio a/b (>= 1.0 means sftpd is at least as
fast), plus each server's peak RSS. Both servers run in their own processes on loopback.

    .venv/bin/python benchmarks/openssh_memory_vs_asyncssh.py [--size-mib 512] [--rounds 5]
"""

from __future__ import annotations

import argparse
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


@contextlib.contextmanager
def server(*args: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """Start a benchmark server process; yield its port and process."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_servers.py"), *args], stdout=subprocess.PIPE, text=True
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
        "-o", "LogLevel=ERROR", "-P", str(port), "-b", "-", "dev@127.0.0.1",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(
        argv, input=commands, text=True, cwd=cwd, env=env, check=True,
        capture_output=True, start_new_session=True, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5, help="best of N per direction")
    args = parser.parse_args()
    size = args.size_mib << 20

    with tempfile.TemporaryDirectory(dir=TMPFS, prefix="sftpd-bench-") as tmp_name:
        tmp = Path(tmp_name)
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
            for _ in range(args.size_mib):
                f.write(block)
        root = tmp / "root"
        root.mkdir()

        names = ("sftpd (memory)", "asyncssh SFTPServer (tmpfs)")
        up: dict[str, list[float]] = {n: [] for n in names}
        down: dict[str, list[float]] = {n: [] for n in names}
        results: dict[str, dict[str, float]] = {}
        # Both servers run at once and take turns, so drift on a noisy machine hits both.
        with (
            server("sftpd", str(keys)) as (port_a, proc_a),
            server("asyncssh", str(keys), str(root)) as (port_b, proc_b),
        ):
            ports = {names[0]: port_a, names[1]: port_b}
            idle = {names[0]: peak_rss_mib(proc_a.pid), names[1]: peak_rss_mib(proc_b.pid)}
            for _ in range(args.rounds):
                for name in names:
                    port = ports[name]
                    up[name].append(
                        sftp_batch(port, "put payload.bin payload.bin\n", local, askpass)
                    )
                    down[name].append(
                        sftp_batch(port, "get payload.bin back.bin\n", local, askpass)
                    )
                    if (local / "back.bin").stat().st_size != size:
                        raise SystemExit(f"{name}: downloaded size differs")
                    (local / "back.bin").unlink()
                    # Start each round empty, so peak RSS measures one stored copy.
                    sftp_batch(port, "rm payload.bin\n", local, askpass)
            rss = {names[0]: peak_rss_mib(proc_a.pid), names[1]: peak_rss_mib(proc_b.pid)}
        for name in names:
            results[name] = {
                "up": size / min(up[name]) / 1e6,
                "down": size / min(down[name]) / 1e6,
                "rss": rss[name],
                "idle": idle[name],
            }

    a, b = results["sftpd (memory)"], results["asyncssh SFTPServer (tmpfs)"]
    print(f"file size: {args.size_mib} MiB, best of {args.rounds} per direction")
    print(
        f"{'server':32s} {'upload MB/s':>12s} {'download MB/s':>14s} "
        f"{'idle RSS MiB':>13s} {'peak RSS MiB':>13s}"
    )
    for name, r in results.items():
        print(f"{name:32s} {r['up']:12.1f} {r['down']:14.1f} {r['idle']:13.0f} {r['rss']:13.0f}")
    print(f"ratio sftpd/asyncssh: upload {a['up'] / b['up']:.2f}, download "
          f"{a['down'] / b['down']:.2f}")  # fmt: skip
    print(
        f"sftpd peak RSS - file size: {a['rss'] - args.size_mib:.0f} MiB (target <= 64); "
        f"growth over idle - file size: {a['rss'] - a['idle'] - args.size_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
