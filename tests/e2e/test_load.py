"""End-to-end: a small run of the load script (benchmarks/load.py), so it keeps working."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from benchmarks import load


@pytest.mark.parametrize("backend", ["memory", "local"])
async def test_a_small_load_run_stores_and_reads_back_every_file(
    backend: str, tmp_path: Path
) -> None:
    """Twelve sessions at once through `sftpd serve` with the script's raised caps each
    store four files and read them back; a final pass finds all 48 intact."""
    args = argparse.Namespace(sessions=12, files=4, max_size=65536, seed=3, seconds=120)
    report = await load.run_backend(backend, args, tmp_path)
    assert report.errors == []
    assert (report.stored, report.verified, report.lost, report.corrupted) == (48, 48, 0, 0)
    assert report.connect_failures == 0
    assert report.ok


async def test_idle_sessions_are_all_logged_in_and_measured(tmp_path: Path) -> None:
    """Forty idle logged-in sessions all get in, and the server's RSS is read for them."""
    async with load.serve("memory", 40, tmp_path) as (port, pid):
        report = await load.idle(port, pid, 40)
    assert report.connected == 40
    assert report.rss_idle_mib > report.rss_before_mib > 0
