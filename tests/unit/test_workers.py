"""Unit: the --workers supervisor with real forked processes and stand-in workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import sftpd
from sftpd import _workers
from sftpd._config import ServerConfig
from sftpd._workers import Worker, supervise


def config() -> ServerConfig:
    return ServerConfig(
        backend=sftpd.MemoryBackend(), auth={"dev": "dev"}, system_dir="/nonexistent", port=0
    )


def test_a_worker_that_cannot_start_stops_the_start() -> None:
    """A worker exiting before it listens (status 2: bad configuration) fails the start."""
    ready: list[ServerConfig] = []
    status = supervise(config(), 3, lambda cfg, worker: 2, ready.append)
    assert status == 2
    assert ready == []


def test_a_worker_that_keeps_dying_stops_everything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A worker that dies right after starting is restarted, then given up on: status 1."""
    monkeypatch.setattr(_workers, "MAX_QUICK_DEATHS", 2)
    starts = tmp_path / "starts"
    ready: list[ServerConfig] = []

    def die_at_once(cfg: ServerConfig, worker: Worker) -> int:
        with starts.open("a") as f:
            f.write(f"{worker.index}:{cfg.port}:{cfg.reuse_port}\n")
        os.write(worker.ready_fd, b"1")
        return 1

    handler = signal.getsignal(signal.SIGTERM)
    assert supervise(config(), 1, die_at_once, ready.append) == 1
    assert signal.getsignal(signal.SIGTERM) is handler  # the caller's handlers are back
    [announced] = ready
    assert announced.port > 0
    assert announced.reuse_port
    lines = starts.read_text().splitlines()
    assert lines == [f"0:{announced.port}:True"] * 2  # first start and one restart
