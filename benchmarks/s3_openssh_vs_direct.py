"""SFTP through sftpd's S3 backend versus talking to S3 directly, in one run.

Against one SeaweedFS (started here): (a) OpenSSH's sftp uploads and downloads a file
through sftpd on the S3 backend; (b) aiobotocore uploads the same file as a multipart
upload and downloads it with ranged GETs, with the same part size, concurrency and
checksum settings as the backend. Prints MB/s, the ratios a/b (target >= 0.8) and sftpd's
peak RSS growth during each transfer (target <= 64 MiB).

Two things explain the ratios on a given machine, so they are printed too:
- the CPU seconds per GiB that the server, the client side (sftp with its ssh, or the
  benchmark's own aiobotocore) and SeaweedFS spent in the best round;
- (c) if OpenSSH's sshd is installed, the same sftp client against OpenSSH's own server with
  the file on tmpfs and no storage behind it: the most this client reaches on this machine.

    .venv/bin/python -m benchmarks.s3_openssh_vs_direct [--size-mib 1024] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import resource
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiobotocore.config import AioConfig
from tests.s3_servers import aws_env, client_for, start_seaweedfs

from benchmarks._common import (
    TMPFS,
    children_cpu_seconds,
    cpu_seconds,
    make_workspace,
    openssh_server,
    peak_rss_mib,
    reset_peak_rss,
    server,
    sftp_batch,
)
from sftpd.backends.s3 import CHECKSUM_SETTINGS

PART = 8 << 20  # the backend's defaults
CONCURRENCY = 2
SFTP_COMMANDS = (("up", "put payload.bin payload.bin\n"), ("down", "get payload.bin back.bin\n"))
LABELS = {
    "sftp up": "sftp via sftpd, up",
    "sftp down": "sftp via sftpd, down",
    "direct up": "direct aiobotocore, up",
    "direct down": "direct aiobotocore, down",
    "sshd up": "sftp via sshd, up",
    "sshd down": "sftp via sshd, down",
}
NAMES = tuple(LABELS)


async def direct_upload(client: object, bucket: str, path: Path) -> float:
    """Multipart upload with CONCURRENCY parts in flight; returns seconds."""
    start = time.perf_counter()
    upload = await client.create_multipart_upload(Bucket=bucket, Key="direct.bin")  # type: ignore[attr-defined]
    limit = asyncio.Semaphore(CONCURRENCY)
    parts: dict[int, str] = {}

    async def send(number: int, data: bytes) -> None:
        try:
            result = await client.upload_part(  # type: ignore[attr-defined]
                Bucket=bucket, Key="direct.bin", UploadId=upload["UploadId"],
                PartNumber=number, Body=data,
            )  # fmt: skip
            parts[number] = result["ETag"]
        finally:
            limit.release()

    tasks = []
    with path.open("rb") as f:
        number = 0
        while chunk := f.read(PART):
            number += 1
            await limit.acquire()
            tasks.append(asyncio.create_task(send(number, chunk)))
    await asyncio.gather(*tasks)
    await client.complete_multipart_upload(  # type: ignore[attr-defined]
        Bucket=bucket, Key="direct.bin", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": parts[n]} for n in sorted(parts)]},
    )  # fmt: skip
    return time.perf_counter() - start


async def direct_download(client: object, bucket: str, size: int, target: Path) -> float:
    """Ranged GETs with CONCURRENCY in flight, written in order; returns seconds."""
    start = time.perf_counter()

    async def get(offset: int) -> bytes:
        response = await client.get_object(  # type: ignore[attr-defined]
            Bucket=bucket, Key="direct.bin", Range=f"bytes={offset}-{offset + PART - 1}"
        )
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data

    offsets = list(range(0, size, PART))
    with target.open("wb") as out:
        for i in range(0, len(offsets), CONCURRENCY):
            for data in await asyncio.gather(*(get(o) for o in offsets[i : i + CONCURRENCY])):
                out.write(data)
    return time.perf_counter() - start


@dataclass
class Transfer:
    """One timed transfer and the CPU seconds each process spent on it."""

    seconds: float
    cpu: dict[str, float]


class Meter:
    """Times a transfer and reads the CPU time of the processes taking part."""

    def __init__(self, weed_pid: int) -> None:
        self.weed_pid = weed_pid

    def _read(self, server_pid: int | None, server_children: bool) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "server": cpu_seconds(server_pid, children=server_children) if server_pid else 0.0,
            "client": children_cpu_seconds() + usage.ru_utime + usage.ru_stime,
            "SeaweedFS": cpu_seconds(self.weed_pid),
        }

    @contextlib.asynccontextmanager
    async def measure(
        self, into: list[Transfer], server_pid: int | None = None, server_children: bool = False
    ) -> AsyncIterator[None]:
        """Append a :class:`Transfer` for the block to ``into``."""
        before = self._read(server_pid, server_children)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        if server_children:
            await asyncio.sleep(0.3)  # sshd reaps its session process, adding its CPU time
        after = self._read(server_pid, server_children)
        into.append(Transfer(seconds, {k: after[k] - before[k] for k in after}))


async def run(size_mib: int, rounds: int) -> None:
    size = size_mib << 20
    results: dict[str, list[Transfer]] = {name: [] for name in NAMES}
    growth = {"up": 0.0, "down": 0.0}
    with tempfile.TemporaryDirectory(dir=TMPFS, prefix="sftpd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        keys, askpass, local, _root = make_workspace(tmp, size_mib)
        with (
            tempfile.TemporaryDirectory(prefix="sftpd-bench-weed-") as weed_dir,
            openssh_server(tmp) as sshd,
        ):
            weed = start_seaweedfs(Path(weed_dir))
            assert weed.proc is not None
            meter = Meter(weed.proc.pid)
            try:
                async with client_for(
                    weed.endpoint, config=AioConfig(**CHECKSUM_SETTINGS)
                ) as client:
                    await client.create_bucket(Bucket="bench")
                    with server("sftpd-s3", str(keys), weed.endpoint, "bench",
                                env=aws_env(weed.endpoint)) as (port, proc):  # fmt: skip
                        for _ in range(rounds):
                            for way, command in SFTP_COMMANDS:
                                base = peak_rss_mib(proc.pid, "VmRSS")
                                reset_peak_rss(proc.pid)
                                async with meter.measure(results[f"sftp {way}"], proc.pid):
                                    sftp_batch(port, command, local, askpass)
                                growth[way] = max(growth[way], peak_rss_mib(proc.pid) - base)
                            if (local / "back.bin").stat().st_size != size:
                                raise SystemExit("sftp download size differs")
                            (local / "back.bin").unlink()
                            async with meter.measure(results["direct up"]):
                                await direct_upload(client, "bench", local / "payload.bin")
                            async with meter.measure(results["direct down"]):
                                await direct_download(client, "bench", size, local / "back.bin")
                            (local / "back.bin").unlink()
                            if sshd is not None:
                                await openssh_round(sshd, meter, results, local, tmp, size)
            finally:
                weed.stop()
    report(size_mib, rounds, results, growth)


async def openssh_round(
    sshd: tuple[int, Path, int],
    meter: Meter,
    results: dict[str, list[Transfer]],
    local: Path,
    tmp: Path,
    size: int,
) -> None:
    """Upload and download through OpenSSH's own server, the file kept on tmpfs."""
    port, key, pid = sshd
    stored = tmp / "sshd-stored.bin"
    for way, command in (("up", f"put payload.bin {stored}\n"),
                         ("down", f"get {stored} back.bin\n")):  # fmt: skip
        async with meter.measure(results[f"sshd {way}"], pid, server_children=True):
            sftp_batch(port, command, local, user=getpass.getuser(), identity=key)
    if (local / "back.bin").stat().st_size != size:
        raise SystemExit("sshd download size differs")
    (local / "back.bin").unlink()
    stored.unlink()


def report(
    size_mib: int, rounds: int, results: dict[str, list[Transfer]], growth: dict[str, float]
) -> None:
    """Print rates, CPU split, ratios and RSS growth."""
    size = size_mib << 20
    gib = size / (1 << 30)
    print(f"file size: {size_mib} MiB, best of {rounds}, SeaweedFS on loopback")
    print(f"{'':52s} CPU seconds per GiB, best round")
    print(f"{'':24s} {'MB/s':>7s}  {'rounds':18s} {'server':>7s} {'client':>7s} "
          f"{'SeaweedFS':>10s} {'total':>7s}")  # fmt: skip
    rate: dict[str, float] = {}
    for name, runs in results.items():
        if not runs:
            continue
        best = min(runs, key=lambda r: r.seconds)
        rate[name] = size / best.seconds / 1e6
        cpu = {k: v / gib for k, v in best.cpu.items()}
        rounds_text = ", ".join(f"{size / r.seconds / 1e6:.0f}" for r in runs)
        print(f"{LABELS[name]:24s} {rate[name]:7.1f}  {'(' + rounds_text + ')':18s} "
              f"{cpu['server']:7.1f} {cpu['client']:7.1f} {cpu['SeaweedFS']:10.1f} "
              f"{sum(cpu.values()):7.1f}")  # fmt: skip
    print(f"ratio sftp/direct: upload {rate['sftp up'] / rate['direct up']:.2f}, download "
          f"{rate['sftp down'] / rate['direct down']:.2f} (target >= 0.8)")  # fmt: skip
    if "sshd up" in rate:
        print("reference, OpenSSH's own server with no storage behind it, over direct: upload "
              f"{rate['sshd up'] / rate['direct up']:.2f}, download "
              f"{rate['sshd down'] / rate['direct down']:.2f}")  # fmt: skip
    else:
        print("reference rows skipped: no sshd (apt-get install openssh-server)")
    print(f"sftpd peak RSS growth: upload {growth['up']:.0f} MiB, download "
          f"{growth['down']:.0f} MiB (target <= 64)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.size_mib, args.rounds))


if __name__ == "__main__":
    main()
