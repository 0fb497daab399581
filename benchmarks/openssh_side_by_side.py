"""sftpd beside OpenSSH's own sftp-server, the server users would otherwise pick.

Servers, all on loopback in their own processes, taking turns in every round:

- OpenSSH's sshd with internal-sftp (Debian's openssh-server), serving tmpfs;
- sftpd on the memory backend;
- sftpd on the local backend over tmpfs (``--workers 2`` for the parallel test).

Tests, each with OpenSSH's ``sftp`` client, in two profiles: ``default`` (the client's own
choices: 255 KiB requests) and ``32k`` (``-B 32768 -R 64``, what WinSCP, FileZilla,
paramiko, rclone and other pkg/sftp clients send):

- upload and download of one ``--size-mib`` file (default 512);
- ``put -r`` of 2000 files of 4 KiB;
- ``ls -l`` of a directory of 10 000 entries;
- 8 clients uploading 64 MiB each at once;
- connect time (login, one ``pwd``, logout).

Prints MB/s (files/s, seconds), the ratio to OpenSSH (higher is better: sftpd's rate over
OpenSSH's, or OpenSSH's time over sftpd's), the server's CPU seconds and peak RSS, median
of ``--rounds`` rounds. Every transferred byte is checked outside the timed part.

    .venv/bin/python -m benchmarks.openssh_side_by_side [--size-mib 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import (
    TMPFS,
    cpu_seconds,
    file_sha256,
    free_port,
    make_workspace,
    openssh_server,
    peak_rss_mib,
    reset_peak_rss,
    server,
    sftp_batch,
    wait_for_port,
)

PROFILES = {"default": "", "32k": "-B 32768 -R 64"}
SMALL_FILES, SMALL_SIZE = 2000, 4096
LISTING = 10_000
PARALLEL, PARALLEL_MIB = 8, 64


@dataclass
class Target:
    """One server under test."""

    name: str
    port: int
    pid: int
    base: str  # where its files go, as the client names it
    disk: Path | None  # the same place on this machine's disk, if it has one
    key: Path | None = None  # OpenSSH logs in with a key, sftpd with a password
    user: str = "dev"
    processes: str = "one"  # "one"; "sshd" (reaped session children); "tree" (workers)


@dataclass
class Results:
    """Per test and server: values of each round."""

    rate: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    rss: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, test: str, name: str, rate: float, cpu: float, rss: float) -> None:
        for table, value in ((self.rate, rate), (self.cpu, cpu), (self.rss, rss)):
            table.setdefault((test, name), []).append(value)


def _server_cpu(target: Target) -> float:
    """CPU seconds of the server: with sshd's reaped children, or over its live workers."""
    if target.processes == "sshd":
        return cpu_seconds(target.pid, children=True)
    if target.processes == "tree":
        children = Path(f"/proc/{target.pid}/task/{target.pid}/children").read_text().split()
        return cpu_seconds(target.pid) + sum(cpu_seconds(int(child)) for child in children)
    return cpu_seconds(target.pid)


@contextlib.contextmanager
def _workers(keys: Path, root: Path) -> Iterator[tuple[int, int]]:
    """``sftpd serve --workers 2`` on the local backend; yields its port and pid."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sftpd", "serve", "--workers", "2", "--port", str(port),
         "--backend", f"local:{root}", "--user", "dev:dev", "--host-key-dir", str(keys),
         "--max-sessions", "64", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(proc, port, "sftpd --workers 2", 20)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)


class Bench:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.args = args
        self.keys, self.askpass, self.local, _ = make_workspace(tmp, args.size_mib)
        self.size = args.size_mib << 20
        self.payload_digest = file_sha256(self.local / "payload.bin")
        self.results = Results()

    def run(self, target: Target, commands: str, profile: str = "default") -> float:
        os.environ["SFTPD_BENCH_SFTP_OPTS"] = PROFILES[profile]
        return sftp_batch(target.port, commands, self.local,
                          self.askpass if target.key is None else None,
                          user=target.user, identity=target.key)  # fmt: skip

    def measure(self, target: Target, work: Callable[[], float]) -> tuple[float, float, float]:
        """Wall seconds of ``work``, the server's CPU seconds and peak RSS (MiB) during it."""
        with contextlib.suppress(OSError):
            reset_peak_rss(target.pid)
        before = _server_cpu(target)
        wall = work()
        if target.processes == "sshd":
            time.sleep(0.3)  # sshd reaps its session processes
        cpu = _server_cpu(target) - before
        rss = peak_rss_mib(target.pid) if target.processes == "one" else float("nan")
        return wall, cpu, rss

    def transfer(self, target: Target, profile: str) -> None:
        remote = f"{target.base}/payload.bin"
        wall, cpu, rss = self.measure(
            target, lambda: self.run(target, f"put payload.bin {remote}\n", profile)
        )
        self.results.add(f"upload {profile}", target.name, self.size / wall / 1e6, cpu, rss)
        wall, cpu, rss = self.measure(
            target, lambda: self.run(target, f"get {remote} back.bin\n", profile)
        )
        self.results.add(f"download {profile}", target.name, self.size / wall / 1e6, cpu, rss)
        if file_sha256(self.local / "back.bin") != self.payload_digest:
            raise SystemExit(f"{target.name}: the downloaded file differs")
        (self.local / "back.bin").unlink()
        self.run(target, f"rm {remote}\n")

    def small_files(self, target: Target, round_no: int) -> None:
        source = self.local / "small"
        if not source.exists():
            source.mkdir()
            for index in range(SMALL_FILES):
                (source / f"f{index:04d}").write_bytes(os.urandom(SMALL_SIZE))
        remote = f"{target.base}/small{round_no}"
        wall, cpu, rss = self.measure(
            target, lambda: self.run(target, f"mkdir {remote}\nput -r small {remote}\n")
        )
        self.results.add("put -r 2000 x 4 KiB", target.name, SMALL_FILES / wall, cpu, rss)
        back = self.local / "small-back"
        self.run(target, f"get -r {remote}/small small-back\n")
        for path in source.iterdir():
            if (back / path.name).read_bytes() != path.read_bytes():
                raise SystemExit(f"{target.name}: {path.name} differs after upload")
        shutil.rmtree(back)

    def listing(self, target: Target) -> None:
        def ls() -> float:
            started = time.perf_counter()
            os.environ["SFTPD_BENCH_SFTP_OPTS"] = ""
            out = subprocess.run(
                self._argv(target), input=f"ls -l {target.base}/listing\n", text=True,
                capture_output=True, env=self._env(target), timeout=300, check=True,
            ).stdout  # fmt: skip
            wall = time.perf_counter() - started
            if out.count("\n") < LISTING:
                raise SystemExit(f"{target.name}: ls -l listed {out.count(chr(10))} lines")
            return wall

        wall, cpu, rss = self.measure(target, ls)
        self.results.add(f"ls -l {LISTING} (s)", target.name, wall, cpu, rss)

    def parallel(self, target: Target) -> None:
        part = self.local / "part.bin"
        if not part.exists():
            with (self.local / "payload.bin").open("rb") as f:
                part.write_bytes(f.read(PARALLEL_MIB << 20))

        def upload(index: int) -> float:
            return self.run(target, f"put part.bin {target.base}/p{index}.bin\n")

        def all_at_once() -> float:
            started = time.perf_counter()
            with ThreadPoolExecutor(PARALLEL) as pool:
                list(pool.map(upload, range(PARALLEL)))
            return time.perf_counter() - started

        wall, cpu, rss = self.measure(target, all_at_once)
        rate = PARALLEL * (PARALLEL_MIB << 20) / wall / 1e6
        self.results.add(f"{PARALLEL} x {PARALLEL_MIB} MiB at once", target.name, rate, cpu, rss)
        for index in range(PARALLEL):
            self.run(target, f"get {target.base}/p{index}.bin p-back.bin\n")
            if (self.local / "p-back.bin").read_bytes() != part.read_bytes():
                raise SystemExit(f"{target.name}: parallel upload {index} differs")
            (self.local / "p-back.bin").unlink()
        self.run(target, "".join(f"rm {target.base}/p{i}.bin\n" for i in range(PARALLEL)))

    def connect(self, target: Target) -> None:
        times = [self.run(target, "pwd\n") for _ in range(5)]
        self.results.add("connect (s)", target.name, statistics.median(times), 0.0, float("nan"))

    def _argv(self, target: Target) -> list[str]:
        login = ["-o", "PubkeyAuthentication=no"] if target.key is None else ["-i", str(target.key)]
        return ["sftp", "-o", "BatchMode=no", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", *login, "-o", "LogLevel=ERROR",
                "-P", str(target.port), "-b", "-", f"{target.user}@127.0.0.1"]  # fmt: skip

    def _env(self, target: Target) -> dict[str, str]:
        env = dict(os.environ)
        if target.key is None:
            env.update(SSH_ASKPASS=str(self.askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        return env


def report(results: Results, rounds: int) -> None:
    tests = list(dict.fromkeys(test for test, _ in results.rate))
    print(f"\nmedian of {rounds} rounds; ratio: sftpd vs OpenSSH, higher is better")
    print(f"{'test':24s} {'server':22s} {'rate':>10s} {'ratio':>6s} {'CPU s':>7s} {'RSS MiB':>8s}")
    for test in tests:
        names = [name for t, name in results.rate if t == test]
        reference = statistics.median(results.rate[(test, "OpenSSH")])
        for name in names:
            value = statistics.median(results.rate[(test, name)])
            timed = test.endswith("(s)")
            ratio = reference / value if timed else value / reference
            cpu = statistics.median(results.cpu[(test, name)])
            rss = max(results.rss[(test, name)])
            shown = f"{value:10.3f}" if timed else f"{value:10.1f}"
            print(f"{test:24s} {name:22s} {shown} {ratio:6.2f} {cpu:7.2f} {rss:8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=TMPFS, prefix="sftpd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bench = Bench(tmp, args)
        local_root, workers_root, home = tmp / "local-root", tmp / "workers-root", tmp / "home"
        for folder in (local_root, workers_root, home):
            folder.mkdir()
            (folder / "listing").mkdir()
        for folder in (local_root, home):
            for index in range(LISTING):
                (folder / "listing" / f"f{index:05d}").touch()
        with contextlib.ExitStack() as stack:
            sshd = stack.enter_context(openssh_server(tmp))
            if sshd is None:
                raise SystemExit("OpenSSH's sshd is needed: apt-get install openssh-server")
            port, key, pid = sshd
            user = os.environ.get("USER") or "root"
            targets = [Target("OpenSSH", port, pid, str(home), home, key, user, "sshd")]
            port, proc = stack.enter_context(server("sftpd", str(bench.keys), str(LISTING)))
            targets.append(Target("sftpd memory", port, proc.pid, "", None))
            port, proc = stack.enter_context(
                server("sftpd-local", str(bench.keys), str(local_root))
            )
            targets.append(Target("sftpd local", port, proc.pid, "", local_root))
            port, pid = stack.enter_context(_workers(bench.keys, workers_root))
            workers = Target("sftpd local workers 2", port, pid, "", workers_root, processes="tree")
            for round_no in range(args.rounds):
                order = targets if round_no % 2 == 0 else targets[::-1]
                for target in order:
                    for profile in PROFILES:
                        bench.transfer(target, profile)
                    bench.small_files(target, round_no)
                    bench.listing(target)
                    bench.connect(target)
                for target in [*order, workers]:
                    if target.name != "sftpd local":
                        bench.parallel(target)
                print(f"round {round_no + 1} of {args.rounds} done", flush=True)
        report(bench.results, args.rounds)


if __name__ == "__main__":
    main()
