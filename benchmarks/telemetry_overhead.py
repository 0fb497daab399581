"""Throughput with one telemetry handler attached versus none, in one run.

Two sftpd servers on the memory backend, one with a handler counting every event, take
turns receiving and sending the same file through OpenSSH's sftp. Prints MB/s and the
ratio with/without per direction (target >= 0.97), and the same ratio computed from the
servers' CPU time per byte, which a noisy two-core machine disturbs far less than wall
time.

    .venv/bin/python -m benchmarks.telemetry_overhead [--size-mib 512] [--rounds 6] [--control]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks._common import TMPFS, make_workspace, round_trip, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=6, help="best of N per direction")
    parser.add_argument(
        "--control",
        action="store_true",
        help="run two servers without a handler (an A/A run showing the machine's noise)",
    )
    args = parser.parse_args()
    size = args.size_mib << 20
    names = ("no handler", "one handler")
    up: dict[str, list[float]] = {n: [] for n in names}
    down: dict[str, list[float]] = {n: [] for n in names}
    cpu_up: dict[str, list[float]] = {n: [] for n in names}
    cpu_down: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(dir=TMPFS, prefix="sftpd-bench-") as tmp_name:
        keys, askpass, local, _root = make_workspace(Path(tmp_name), args.size_mib)
        with (
            server("sftpd", str(keys)) as (port_a, proc_a),
            server("sftpd" if args.control else "sftpd-handler", str(keys)) as (port_b, proc_b),
        ):
            ports = {names[0]: port_a, names[1]: port_b}
            pids = {names[0]: proc_a.pid, names[1]: proc_b.pid}
            for round_no in range(args.rounds):
                # Alternate who goes first, so neither always runs on a warmer machine.
                for name in names if round_no % 2 == 0 else names[::-1]:
                    up_s, down_s, cu, cd = round_trip(ports[name], local, askpass, size, pids[name])
                    up[name].append(up_s)
                    down[name].append(down_s)
                    cpu_up[name].append(cu)
                    cpu_down[name].append(cd)
    print(f"file size: {args.size_mib} MiB, best of {args.rounds} per direction")
    print(f"{'server':16s} {'upload MB/s':>12s} {'download MB/s':>14s}")
    rates = {n: (size / min(up[n]) / 1e6, size / min(down[n]) / 1e6) for n in names}
    for name, (u, d) in rates.items():
        print(f"{name:16s} {u:12.1f} {d:14.1f}")
    (u0, d0), (u1, d1) = rates[names[0]], rates[names[1]]
    print(f"ratio with/without handler: upload {u1 / u0:.3f}, download {d1 / d0:.3f} "
          "(target >= 0.97)")  # fmt: skip
    cu0, cu1 = (min(cpu_up[n]) for n in names)
    cd0, cd1 = (min(cpu_down[n]) for n in names)
    print(f"server CPU s per transfer: upload {cu0:.2f} / {cu1:.2f}, download {cd0:.2f} / "
          f"{cd1:.2f}; throughput per CPU second with/without: upload {cu0 / cu1:.3f}, "
          f"download {cd0 / cd1:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
