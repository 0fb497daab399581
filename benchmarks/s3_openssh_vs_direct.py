"""SFTP through sftpd's S3 backend versus talking to S3 directly, in one run.

Against one SeaweedFS (started here): (a) OpenSSH's sftp uploads and downloads a file
through sftpd on the S3 backend; (b) aiobotocore uploads the same file as a multipart
upload and downloads it with ranged GETs, with the same part size and concurrency. Prints
MB/s, the ratios a/b (target >= 0.8) and sftpd's peak RSS growth during each transfer
(target <= 64 MiB).

    .venv/bin/python -m benchmarks.s3_openssh_vs_direct [--size-mib 1024] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from tests.s3_servers import aws_env, client_for, start_seaweedfs

from benchmarks._common import (
    TMPFS,
    cpu_seconds,
    make_workspace,
    peak_rss_mib,
    reset_peak_rss,
    server,
    sftp_batch,
)

PART = 8 << 20  # the backend's defaults
CONCURRENCY = 2
SFTP_COMMANDS = (("up", "put payload.bin payload.bin\n"), ("down", "get payload.bin back.bin\n"))


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


async def run(size_mib: int, rounds: int) -> None:
    size = size_mib << 20
    with tempfile.TemporaryDirectory(dir=TMPFS, prefix="sftpd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        keys, askpass, local, _root = make_workspace(tmp, size_mib)
        with tempfile.TemporaryDirectory(prefix="sftpd-bench-weed-") as weed_dir:
            weed = start_seaweedfs(Path(weed_dir))
            try:
                async with client_for(weed.endpoint) as client:
                    await client.create_bucket(Bucket="bench")
                    results = {"sftp up": [], "sftp down": [], "direct up": [],
                               "direct down": []}  # type: dict[str, list[float]]  # fmt: skip
                    growth = {"up": 0.0, "down": 0.0}
                    cpus: dict[str, list[float]] = {"up": [], "down": []}
                    with server("sftpd-s3", str(keys), weed.endpoint, "bench",
                                env=aws_env(weed.endpoint)) as (port, proc):  # fmt: skip
                        for _ in range(rounds):
                            for way, command in SFTP_COMMANDS:
                                base = peak_rss_mib(proc.pid, "VmRSS")
                                reset_peak_rss(proc.pid)
                                cpu = cpu_seconds(proc.pid)
                                results[f"sftp {way}"].append(
                                    sftp_batch(port, command, local, askpass)
                                )
                                cpus[way].append(cpu_seconds(proc.pid) - cpu)
                                growth[way] = max(growth[way], peak_rss_mib(proc.pid) - base)
                            if (local / "back.bin").stat().st_size != size:
                                raise SystemExit("sftp download size differs")
                            (local / "back.bin").unlink()
                            results["direct up"].append(
                                await direct_upload(client, "bench", local / "payload.bin")
                            )
                            results["direct down"].append(
                                await direct_download(client, "bench", size, local / "back.bin")
                            )
                            (local / "back.bin").unlink()
            finally:
                weed.stop()
    rate = {k: size / min(v) / 1e6 for k, v in results.items()}
    print(f"file size: {size_mib} MiB, best of {rounds}, SeaweedFS on loopback")
    for key, value in rate.items():
        rounds_text = ", ".join(f"{size / t / 1e6:.0f}" for t in results[key])
        print(f"{key:12s} {value:8.1f} MB/s   (rounds: {rounds_text})")
    print(f"ratio sftp/direct: upload {rate['sftp up'] / rate['direct up']:.2f}, download "
          f"{rate['sftp down'] / rate['direct down']:.2f} (target >= 0.8)")  # fmt: skip
    print(f"sftpd CPU seconds per GiB: upload {min(cpus['up']) * 1024 / size_mib:.1f}, "
          f"download {min(cpus['down']) * 1024 / size_mib:.1f}")  # fmt: skip
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
