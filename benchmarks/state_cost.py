"""What the Redis state store costs, against the in-process one, in one run.

Two `sftpd serve` processes on the local backend (tmpfs), configured alike but for
``state``: ``memory``, and a redis-server this script starts on a free loopback port. The
user has a quota (every upload reserves and settles) and a session cap (every login takes
and gives back a lease), so each store does the work a fleet needs; a third server on the
same Redis has the user without a quota (no store call per file). The servers take turns,
``--rounds`` times:

1. **2000 small files**: OpenSSH ``sftp put -r`` of 2000 files of 4 KiB in one session;
   files/s, the ratio, sftpd's and redis-server's CPU seconds.
2. **Logins**: ``--logins`` (300) password logins by asyncssh clients, 8 at a time, each
   opening the SFTP subsystem and closing; logins/s, the ratio, CPU per login.

    .venv/bin/python -m benchmarks.state_cost [--rounds 3] [--logins 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh

from benchmarks._common import (
    TMPFS,
    cpu_seconds,
    free_port,
    make_workspace,
    peak_rss_mib,
    sftp_batch,
    small_tree,
    wait_for_port,
)

FILES = 2000
FILE_SIZE = 4096
CONCURRENT_LOGINS = 8


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[tuple[int, int]]:
    """A redis-server without persistence; yields its port and pid."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(proc, port, "redis-server", 20)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def sftpd(
    tmp: Path, name: str, keys: Path, state: str, *, quota: bool = True
) -> Iterator[tuple[int, int, Path]]:
    """`sftpd serve` on a local folder with a capped user, with a quota or without one;
    port, pid, root."""
    root = tmp / f"root-{name}"
    root.mkdir()
    config = tmp / f"{name}.toml"
    config.write_text(
        f'[server]\nbackend = "local:{root}"\nhost_key_dir = "{keys}"\n'
        "max_sessions = 100\nmax_unauthenticated_per_address = 100\n"
        "connection_rate = 10000.0\nconnection_burst = 10000\n"
        f'[state]\nurl = "{state}"\n'
        '[users.dev]\npassword = "dev"\nmax_sessions = 50\n'
        + ('quota_bytes = "10G"\nquota_files = 1000000\n' if quota else "")
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sftpd", "serve", "--config", str(config), "--port", str(port),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(proc, port, f"sftpd ({name})", 30)
        yield port, proc.pid, root
    finally:
        proc.terminate()
        proc.wait(20)


async def _logins(port: int, count: int) -> float:
    """``count`` logins, ``CONCURRENT_LOGINS`` at a time; wall seconds."""
    queue = list(range(count))

    async def client() -> None:
        while queue:
            queue.pop()
            async with asyncssh.connect(
                "127.0.0.1", port, username="dev", password="dev", known_hosts=None,
                client_keys=None, preferred_auth="password",
            ) as conn, conn.start_sftp_client() as sftp:  # fmt: skip
                await sftp.getcwd()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENT_LOGINS)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--logins", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=TMPFS, prefix="sftpd-state-") as tmp_name:
        tmp = Path(tmp_name)
        keys, askpass, local, _root = make_workspace(tmp, 0)
        small_tree(local / "small", FILES, FILE_SIZE)
        with contextlib.ExitStack() as stack:
            redis_port, redis_pid = stack.enter_context(redis_server(tmp))
            url = f"redis://127.0.0.1:{redis_port}/0"
            servers = {
                "memory": stack.enter_context(sftpd(tmp, "memory", keys, "memory")),
                "redis": stack.enter_context(sftpd(tmp, "redis", keys, url)),
                "redis, no quota": stack.enter_context(
                    sftpd(tmp, "noquota", keys, url, quota=False)
                ),
            }
            files: dict[str, list[float]] = {n: [] for n in servers}
            logins: dict[str, list[float]] = {n: [] for n in servers}
            cpu_files: dict[str, list[float]] = {n: [] for n in servers}
            cpu_logins: dict[str, list[float]] = {n: [] for n in servers}
            redis_cpu: dict[str, float] = {"files": 0.0, "logins": 0.0}
            for round_ in range(args.rounds):
                for name, (port, pid, root) in servers.items():
                    target = root / f"round{round_}"
                    before, redis_before = cpu_seconds(pid), cpu_seconds(redis_pid)
                    wall = sftp_batch(port, f"mkdir round{round_}\nput -r small round{round_}\n",
                                      local, askpass)  # fmt: skip
                    cpu_files[name].append(cpu_seconds(pid) - before)
                    if name == "redis":
                        redis_cpu["files"] += cpu_seconds(redis_pid) - redis_before
                    stored = sum(1 for p in target.rglob("*") if p.is_file())
                    if stored != FILES:
                        raise SystemExit(f"{name}: {stored} of {FILES} files stored")
                    files[name].append(FILES / wall)
                    before, redis_before = cpu_seconds(pid), cpu_seconds(redis_pid)
                    wall = asyncio.run(_logins(port, args.logins))
                    cpu_logins[name].append(cpu_seconds(pid) - before)
                    if name == "redis":
                        redis_cpu["logins"] += cpu_seconds(redis_pid) - redis_before
                    logins[name].append(args.logins / wall)
                    print(f"round {round_ + 1} {name:15}: {files[name][-1]:7.0f} files/s, "
                          f"{logins[name][-1]:6.1f} logins/s", flush=True)  # fmt: skip
            rss = {name: peak_rss_mib(pid) for name, (_, pid, _) in servers.items()}
        print()
        print(f"{FILES} files of {FILE_SIZE} B (put -r, one session), median of {args.rounds}:")
        for name in servers:
            cpu = statistics.median(cpu_files[name])
            print(f"  {name:15}  {statistics.median(files[name]):7.0f} files/s  "
                  f"sftpd CPU {cpu:5.2f} s ({cpu / FILES * 1e6:4.0f} us/file)  "
                  f"peak RSS {rss[name]:5.1f} MiB")  # fmt: skip
        _ratios(files, redis_cpu["files"] / args.rounds)
        print(f"{args.logins} logins ({CONCURRENT_LOGINS} at a time), median of {args.rounds}:")
        for name in servers:
            cpu = statistics.median(cpu_logins[name])
            print(f"  {name:15}  {statistics.median(logins[name]):6.1f} logins/s  "
                  f"sftpd CPU {cpu / args.logins * 1e3:5.1f} ms/login")  # fmt: skip
        _ratios(logins, redis_cpu["logins"] / args.rounds)


def _ratios(rates: dict[str, list[float]], redis_cpu: float) -> None:
    """Print the Redis stores' rates as ratios to the in-process one's."""
    base = statistics.median(rates["memory"])
    ratio = statistics.median(rates["redis"]) / base
    plain = statistics.median(rates["redis, no quota"]) / base
    print(f"  redis / memory: {ratio:.2f}x (without a quota: {plain:.2f}x); redis-server "
          f"CPU {redis_cpu:.2f} s per round with the quota")  # fmt: skip


if __name__ == "__main__":
    main()
