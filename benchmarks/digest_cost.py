"""What hashing uploads as they stream in costs: sftpd with and without upload digests.

    python -m benchmarks.digest_cost [--size-mib 512] [--rounds 3]

OpenSSH's sftp puts one file to sftpd on the memory backend and on the local backend
(tmpfs under /dev/shm), with ``upload_digests`` off and with each ``--digests`` set,
servers taking turns; prints the median MB/s and server CPU seconds of each, and the
ratios. The payload is random, so nothing is compressible.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks._common import cpu_seconds, make_workspace, server, sftp_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--digests", nargs="+", default=["md5,sha256"],
                        help="sets to compare with none, e.g. md5,sha256 sha256")  # fmt: skip
    args = parser.parse_args()
    settings = ["none", *args.digests]
    size = args.size_mib << 20
    shm_dir = tempfile.TemporaryDirectory(prefix="sftpd-digest-root-", dir="/dev/shm")
    with tempfile.TemporaryDirectory(prefix="sftpd-digest-bench-") as tmp, shm_dir as shm:
        keys, askpass, local, _root = make_workspace(Path(tmp), args.size_mib)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for backend in ("memory", "local"):
                for names in settings:
                    extra = [shm] if backend == "local" else []
                    with server("sftpd-digests", str(keys), names, *extra) as (port, proc):
                        before = cpu_seconds(proc.pid)
                        seconds = sftp_batch(port, "put payload.bin /payload.bin\n", local,
                                             askpass)  # fmt: skip
                        cpu = cpu_seconds(proc.pid) - before
                    results.setdefault((backend, names), []).append((size / seconds / 1e6, cpu))
        for backend in ("memory", "local"):
            rows = {n: (statistics.median(r for r, _ in results[(backend, n)]),
                        statistics.median(c for _, c in results[(backend, n)]))
                    for n in settings}  # fmt: skip
            base_rate, base_cpu = rows["none"]
            print(f"{backend}: upload {args.size_mib} MiB, digests off: {base_rate:.0f} MB/s, "
                  f"{base_cpu:.2f} server CPU s")  # fmt: skip
            for names in args.digests:
                rate, cpu = rows[names]
                print(f"  {names}: {rate:.0f} MB/s ({rate / base_rate:.2f}x), {cpu:.2f} CPU s "
                      f"(+{cpu - base_cpu:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
