"""Upload and download a file through OpenSSH's sftp to two servers, in one run.

(a) sftpd on the memory backend, (b) asyncssh's stock SFTPServer serving a tmpfs
directory. Prints MB/s per direction and the ratio a/b (>= 1.0 means sftpd is at least as
fast), plus each server's idle and peak RSS. Both servers run in their own processes on
loopback and take turns, so drift on a noisy machine hits both.

    .venv/bin/python -m benchmarks.openssh_memory_vs_asyncssh [--size-mib 512] [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks._common import TMPFS, make_workspace, peak_rss_mib, round_trip, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5, help="best of N per direction")
    args = parser.parse_args()
    size = args.size_mib << 20

    with tempfile.TemporaryDirectory(dir=TMPFS, prefix="sftpd-bench-") as tmp_name:
        keys, askpass, local, root = make_workspace(Path(tmp_name), args.size_mib)

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
            for round_no in range(args.rounds):
                # Alternate who goes first, so neither always runs on a warmer machine.
                for name in names if round_no % 2 == 0 else names[::-1]:
                    up_s, down_s, _cpu_up, _cpu_down = round_trip(ports[name], local, askpass, size)
                    up[name].append(up_s)
                    down[name].append(down_s)
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
