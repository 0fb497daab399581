"""The SFTP engine's cost per request, and what concurrency buys under storage latency.

1. **2000 small files**: OpenSSH ``sftp put -r`` of 2000 files of 4 KiB to sftpd on the
   memory backend, sftpd on the local backend over tmpfs, and OpenSSH's own sshd with
   internal-sftp on tmpfs (if installed), taking turns; prints files/s, the ratio to
   OpenSSH (higher is better) and each server's CPU seconds for the 2000 files, and per
   file (each is an OPEN, a WRITE, an FSETSTAT of its times and a CLOSE, with a stat
   before). Every file is checked after each round, outside the timed part.
2. **Latency**: with every backend read and write taking ``--latency-ms`` (10), one
   upload and one download of ``--latency-mib`` (32) MiB in 32 KiB requests, 64
   outstanding (``sftp -B 32768 -R 64``, as WinSCP, FileZilla, paramiko and rclone send),
   against the time one request at a time would need (requests x latency).

    .venv/bin/python -m benchmarks.engine_requests [--rounds 3] [--sftpd-src DIR]

``--sftpd-src`` runs sftpd from another source tree (``git worktree add /tmp/old REV``)
so that two commits can be compared in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks._common import (
    TMPFS,
    cpu_seconds,
    make_workspace,
    openssh_server,
    server,
    small_tree,
)
from benchmarks._common import sftp_batch as batch

FILES = 2000
FILE_SIZE = 4096


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def _servers(
    keys: Path, roots: dict[str, Path], tmp: Path, env: dict[str, str] | None
) -> Iterator[dict[str, tuple[int, int, Path | None, Path | None]]]:
    """name -> (port, pid, where its files land or None, client key or None)."""
    with contextlib.ExitStack() as stack:
        found: dict[str, tuple[int, int, Path | None, Path | None]] = {}
        port, proc = stack.enter_context(server("sftpd", str(keys), env=env))
        found["sftpd memory"] = (port, proc.pid, None, None)
        port, proc = stack.enter_context(
            server("sftpd-local", str(keys), str(roots["local"]), env=env)
        )
        found["sftpd local"] = (port, proc.pid, roots["local"], None)
        sshd = stack.enter_context(openssh_server(tmp))
        if sshd is not None:
            port, key, pid = sshd
            found["OpenSSH"] = (port, pid, None, key)
        yield found


def small_files(args: argparse.Namespace, env: dict[str, str] | None) -> None:
    with tempfile.TemporaryDirectory(dir=TMPFS, prefix="sftpd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        keys, askpass, local, _root = make_workspace(tmp, 0)
        source = small_tree(local / "small", FILES, FILE_SIZE)
        expected = _tree(source)
        roots = {"local": tmp / "local-root"}
        roots["local"].mkdir()
        openssh_home = tmp / "openssh-home"
        walls: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        with _servers(keys, roots, tmp, env) as servers:
            names = list(servers)
            for round_no in range(args.rounds):
                for name in names if round_no % 2 == 0 else names[::-1]:
                    port, pid, landing, key = servers[name]
                    target = f"r{round_no}"
                    if name == "OpenSSH":
                        openssh_home.mkdir(exist_ok=True)
                        target = str(openssh_home / target)
                        landing = openssh_home
                    commands = f"mkdir {target}\nput -r small {target}\n"
                    count_children = name == "OpenSSH"
                    before = cpu_seconds(pid, children=count_children)
                    wall = batch(port, commands, local, askpass if key is None else None,
                                 user="dev" if key is None else os.environ.get("USER", "root"),
                                 identity=key)  # fmt: skip
                    time.sleep(0.3)  # let sshd reap the session process
                    cpu = cpu_seconds(pid, children=count_children) - before
                    walls.setdefault(name, []).append(wall)
                    cpus.setdefault(name, []).append(cpu)
                    _check(name, port, local, askpass, key, target, landing, expected)
        print(f"\n{FILES} files of {FILE_SIZE} B, put -r, median of {args.rounds} rounds")
        print(f"{'server':16s} {'files/s':>9s} {'vs OpenSSH':>11s} {'server CPU s':>13s} "
              f"{'CPU us/file':>12s}")  # fmt: skip
        reference = statistics.median(walls["OpenSSH"]) if "OpenSSH" in walls else None
        for name in walls:
            wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
            ratio = f"{reference / wall:11.2f}" if reference else f"{'-':>11s}"
            print(f"{name:16s} {FILES / wall:9.0f} {ratio} {cpu:13.2f} {cpu / FILES * 1e6:12.0f}")


def _check(name: str, port: int, local: Path, askpass: Path, key: Path | None, target: str,
           landing: Path | None, expected: dict[str, str]) -> None:  # fmt: skip
    """Every file arrived whole (outside the timed part)."""
    if landing is not None:
        got = _tree(landing / Path(target).name / "small")
    else:
        back = local / "back"
        batch(port, f"get -r {target}/small back\n", local, askpass)
        got = _tree(back)
        for path in back.rglob("*"):
            path.unlink()
        back.rmdir()
    if got != expected:
        raise SystemExit(f"{name}: files differ after upload")


def latency(args: argparse.Namespace, env: dict[str, str] | None) -> None:
    size = args.latency_mib << 20
    with tempfile.TemporaryDirectory(dir=TMPFS, prefix="sftpd-bench-") as tmp_name:
        keys, askpass, local, _root = make_workspace(Path(tmp_name), args.latency_mib)
        requests = size // (32 << 10)
        serial = requests * args.latency_ms / 1000
        os.environ["SFTPD_BENCH_SFTP_OPTS"] = "-B 32768 -R 64"
        ups, downs = [], []
        with server("sftpd-latency", str(keys), str(args.latency_ms), env=env) as (port, _):
            for _ in range(args.rounds):
                ups.append(batch(port, "put payload.bin p.bin\n", local, askpass))
                downs.append(batch(port, "get p.bin back.bin\n", local, askpass))
                if (local / "back.bin").stat().st_size != size:
                    raise SystemExit("downloaded size differs")
                (local / "back.bin").unlink()
        print(f"\n{args.latency_mib} MiB in 32 KiB requests, {args.latency_ms} ms per backend "
              f"read or write; one at a time would take {serial:.1f} s")  # fmt: skip
        for what, times in (("upload", ups), ("download", downs)):
            best = statistics.median(times)
            print(f"{what:9s} {best:6.2f} s (whole sftp run, login included): "
                  f"{serial / best:5.1f}x faster than one at a time")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=10)
    parser.add_argument("--latency-mib", type=int, default=32)
    parser.add_argument("--sftpd-src", type=Path, default=None,
                        help="run sftpd from this source tree's src/ instead")  # fmt: skip
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    env = None
    if args.sftpd_src is not None:
        env = {**os.environ, "PYTHONPATH": str(args.sftpd_src.resolve() / "src")}
    small_files(args, env)
    if not args.skip_latency:
        latency(args, env)


if __name__ == "__main__":
    main()
