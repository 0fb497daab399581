"""Load: many sessions at once, each storing and reading back files, checked by sha256.

    python -m benchmarks.load [--backends memory,local,s3] [--sessions 200] [--files 20]
                              [--max-size 1048576] [--idle 1000] [--seconds 1800]

For each backend it starts ``sftpd serve`` in its own process (S3: on a SeaweedFS it
starts too), then opens ``--sessions`` SSH sessions at once. Each stores ``--files`` files
of assorted sizes (0 B to ``--max-size``) under a directory of its own, reads every one
back and compares its sha256, then logs out. A final pass, on fresh sessions, reads
every file again, so nothing stored was lost once its session had gone. It reports files
lost and corrupted, sessions that could not connect, the time, and the server's CPU
seconds and peak RSS. Then (``--idle``) it logs in that many sessions, leaves them idle,
and reports the server's RSS per idle session.

The server's caps are raised for this, as an operator would for such a fleet of clients
behind one address (the defaults protect a server from one address's flood):

    --max-sessions N+10 --max-unauthenticated N --max-unauthenticated-per-address N
    --connection-rate 10000 --connection-burst N

Exit status 1 if a file was lost or corrupted or a session could not connect.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import re
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from benchmarks._common import cpu_seconds, peak_rss_mib

SIZES = (0, 1, 777, 4096, 32768, 65536, 262144, 1 << 20)
WEIGHTS = (1, 2, 4, 6, 6, 4, 2, 1)
CONNECT_AT_ONCE = 50  # handshakes in flight from the load generator (it has two cores too)
T = TypeVar("T")


@dataclass
class LoadReport:
    """What one backend's run measured."""

    backend: str
    sessions: int
    files: int
    stored: int = 0
    verified: int = 0
    lost: int = 0
    corrupted: int = 0
    connect_failures: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    megabytes: float = 0.0
    server_cpu_seconds: float = 0.0
    server_peak_rss_mib: float = 0.0

    @property
    def ok(self) -> bool:
        """Every session connected and every file came back intact, twice."""
        expected = self.sessions * self.files
        return (self.lost == 0 and self.corrupted == 0 and self.connect_failures == 0
                and self.stored == expected and self.verified == expected)  # fmt: skip


@dataclass
class IdleReport:
    """The server's memory with many sessions logged in and idle."""

    sessions: int
    connected: int = 0
    rss_before_mib: float = 0.0
    rss_idle_mib: float = 0.0

    @property
    def per_session_kib(self) -> float:
        """Server memory each idle session costs."""
        grown = self.rss_idle_mib - self.rss_before_mib
        return grown * 1024 / self.connected if self.connected else 0.0


def caps(sessions: int) -> list[str]:
    """The ``sftpd serve`` flags that let ``sessions`` clients from one address in at once."""
    return [
        "--max-sessions", str(sessions + 10), "--max-unauthenticated", str(sessions),
        "--max-unauthenticated-per-address", str(sessions), "--connection-rate", "10000",
        "--connection-burst", str(sessions),
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def serve(
    backend: str, sessions: int, work: Path, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[int, int]]:
    """``sftpd serve`` with raised caps and user load/load; yields its port and pid."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sftpd", "serve", "--port", "0", "--backend", backend,
        "--user", "load:load", "--host-key-dir", str(work / "keys"), "--generate-host-key",
        "--log-level", "warning", *caps(sessions),
        cwd=work, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None
    text = ""
    try:
        while not (match := re.search(r"sftp -P (\d+) ", text)):
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line:
                raise RuntimeError(f"sftpd serve exited: {text}")
            text += line.decode()
        drain = asyncio.ensure_future(_drain(proc.stdout))
        yield int(match.group(1)), proc.pid
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    """Read the server's output so it never blocks on a full pipe; echo its complaints."""
    while line := await stream.readline():
        text = line.decode(errors="replace")
        if re.search(r"WARNING|ERROR|Traceback|Exception", text):
            sys.stderr.write("  server: " + text)


def connect(port: int) -> Any:
    """An asyncssh connection as the load user."""
    return asyncssh.connect(
        "127.0.0.1", port, username="load", password="load", known_hosts=None,
        client_keys=None, preferred_auth="password", connect_timeout=120,
    )  # fmt: skip


async def _limited(gate: asyncio.Semaphore, call: Callable[[], Awaitable[T]]) -> T:
    async with gate:
        return await call()


async def load(port: int, pid: int, report: LoadReport, max_size: int, seed: int) -> None:
    """All sessions at once: store, read back, compare; then a final pass on new sessions."""
    started = time.monotonic()
    cpu_before = cpu_seconds(pid)
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    sizes = [s for s in SIZES if s <= max_size]
    weights = WEIGHTS[: len(sizes)]
    expected: dict[str, str] = {}

    async def one_session(number: int) -> None:
        rng = random.Random(seed * 100_000 + number)
        try:
            conn = await _limited(gate, lambda: connect(port))
        except (OSError, asyncssh.Error) as exc:
            report.connect_failures += 1
            report.errors.append(f"session {number}: {exc!r}")
            return
        async with conn, conn.start_sftp_client() as sftp:
            directory = f"/s{number}"
            await sftp.mkdir(directory)
            mine = {}
            for index in range(report.files):
                data = rng.randbytes(rng.choices(sizes, weights)[0])
                name = f"{directory}/f{index}.bin"
                async with sftp.open(name, "wb") as f:
                    await f.write(data)
                mine[name] = hashlib.sha256(data).hexdigest()
                report.stored += 1
                report.megabytes += len(data) / 1e6
            for name, digest in mine.items():
                await _check(sftp, name, digest, report, final=False)
            expected.update(mine)

    await asyncio.gather(*(one_session(n) for n in range(report.sessions)))

    async def verify(names: list[str]) -> None:
        async with connect(port) as conn, conn.start_sftp_client() as sftp:
            for name in names:
                await _check(sftp, name, expected[name], report, final=True)

    names = sorted(expected)
    await asyncio.gather(*(verify(names[i::8]) for i in range(8)))
    report.seconds = round(time.monotonic() - started, 1)
    report.server_cpu_seconds = round(cpu_seconds(pid) - cpu_before, 1)
    report.server_peak_rss_mib = round(peak_rss_mib(pid), 1)


async def _check(
    sftp: asyncssh.SFTPClient, name: str, digest: str, report: LoadReport, *, final: bool
) -> None:
    try:
        async with sftp.open(name, "rb") as f:
            back = await f.read()
    except asyncssh.SFTPNoSuchFile:
        report.lost += 1
        report.errors.append(f"lost: {name}")
        return
    assert isinstance(back, bytes)
    if hashlib.sha256(back).hexdigest() != digest:
        report.corrupted += 1
        report.errors.append(f"corrupted: {name}")
    elif final:
        report.verified += 1


async def idle(port: int, pid: int, sessions: int) -> IdleReport:
    """Log in ``sessions`` sessions with an SFTP channel each, and leave them idle."""
    report = IdleReport(sessions=sessions)
    report.rss_before_mib = round(peak_rss_mib(pid, "VmRSS"), 1)
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    held: list[Any] = []

    async def one() -> None:
        conn = await _limited(gate, lambda: connect(port))
        sftp = await conn.start_sftp_client()
        await sftp.realpath(".")
        held.append((conn, sftp))
        report.connected += 1

    results = await asyncio.gather(*(one() for _ in range(sessions)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        print(f"  idle: {len(failures)} sessions failed, first: {failures[0]!r}")
    await asyncio.sleep(5)  # idle: let anything pending settle
    report.rss_idle_mib = round(peak_rss_mib(pid, "VmRSS"), 1)
    for conn, sftp in held:
        sftp.exit()
        conn.close()
    await asyncio.gather(*(conn.wait_closed() for conn, _ in held), return_exceptions=True)
    return report


async def run_backend(name: str, args: argparse.Namespace, work: Path) -> LoadReport:
    """One backend's load run, with its server (and SeaweedFS) started and stopped here."""
    report = LoadReport(backend=name, sessions=args.sessions, files=args.files)
    async with contextlib.AsyncExitStack() as stack:
        env: dict[str, str] = {}
        if name == "memory":
            spec = "memory"
        elif name == "local":
            (work / "local").mkdir()
            spec = f"local:{work / 'local'}"
        elif name == "s3":
            from tests.s3_servers import aws_env, client_for, start_seaweedfs

            weed = start_seaweedfs(work / "weed")
            stack.callback(weed.stop)
            bucket = f"load-{secrets.token_hex(4)}"
            async with client_for(weed.endpoint) as client:
                await client.create_bucket(Bucket=bucket)
            env = {k: v for k, v in aws_env(weed.endpoint).items() if k.startswith("AWS_")}
            spec = f"s3://{bucket}/load"
        else:
            raise SystemExit(f"unknown backend {name!r}: memory, local or s3")
        port, pid = await stack.enter_async_context(serve(spec, args.sessions, work, env))
        await asyncio.wait_for(load(port, pid, report, args.max_size, args.seed), args.seconds)
    return report


async def main_async(args: argparse.Namespace) -> int:
    status = 0
    for name in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix=f"sftpd-load-{name}-") as tmp:
            report = await run_backend(name, args, Path(tmp))
        print(f"{name}: {report.sessions} sessions x {report.files} files "
              f"({report.megabytes:.0f} MB): stored {report.stored}, verified "
              f"{report.verified}, lost {report.lost}, corrupted {report.corrupted}, "
              f"connect failures {report.connect_failures}; {report.seconds} s, server "
              f"{report.server_cpu_seconds} CPU s, peak RSS {report.server_peak_rss_mib} MiB"
              f" {'OK' if report.ok else 'FAILED'}", flush=True)  # fmt: skip
        for line in report.errors[:10]:
            print("   ", line)
        status |= 0 if report.ok else 1
    if args.idle:
        with tempfile.TemporaryDirectory(prefix="sftpd-load-idle-") as tmp:
            async with serve("memory", args.idle, Path(tmp)) as (port, pid):
                idle_report = await asyncio.wait_for(idle(port, pid, args.idle), args.seconds)
        print(f"idle: {idle_report.connected}/{idle_report.sessions} sessions logged in; "
              f"server RSS {idle_report.rss_before_mib} MiB before, "
              f"{idle_report.rss_idle_mib} MiB with them idle: "
              f"{idle_report.per_session_kib:.0f} KiB per session", flush=True)  # fmt: skip
        status |= 0 if idle_report.connected == idle_report.sessions else 1
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="memory,local,s3")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--max-size", type=int, default=1 << 20)
    parser.add_argument("--idle", type=int, default=1000, help="idle sessions (0: skip)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1800.0, help="per backend, at most")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
