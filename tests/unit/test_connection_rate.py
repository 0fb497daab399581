"""Unit: new connections per address are a token bucket, and floods are logged sparingly."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import sftpd
from sftpd._context import ServerContext
from sftpd._session import Peer
from sftpd._shared import SharedState
from sftpd._throttle import ConnectionRate
from sftpd.state import MemoryState
from sftpd.telemetry import TelemetryBus


def test_a_burst_then_the_rate_per_address() -> None:
    """An address gets ``burst`` connections at once, then one per 1/rate seconds; another
    address has its own bucket; an idle address refills only up to the burst."""
    rate = ConnectionRate(rate=10.0, burst=3)
    assert [rate.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert rate.allow("b", now=0.0)
    assert not rate.allow("a", now=0.05)
    assert rate.allow("a", now=0.11)
    assert [rate.allow("a", now=100.0) for _ in range(4)] == [True, True, True, False]


def test_many_addresses_do_not_grow_the_table_forever() -> None:
    """Past 10 000 addresses, those whose bucket refilled are forgotten."""
    rate = ConnectionRate(rate=1.0, burst=1)
    for index in range(10_001):
        rate.allow(f"10.0.{index // 256}.{index % 256}", now=0.0)
    rate.allow("late", now=5.0)
    assert len(rate._buckets) == 1


def test_a_flood_of_refusals_is_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, host_key_dir: Path
) -> None:
    """2000 refusals from one address in a second make one log line; the next minute's
    first refusal says how many were left unlogged."""
    config = sftpd.ServerConfig(
        backend=sftpd.MemoryBackend(), auth={"dev": "dev"}, port=0, system_dir=host_key_dir
    )
    context = ServerContext(
        config=config,
        backend=None,  # type: ignore[arg-type]
        auth=None,  # type: ignore[arg-type]
        shared=SharedState(MemoryState()),
        bus=TelemetryBus(),
    )
    clock = [1000.0]
    monkeypatch.setattr("sftpd._server.time.monotonic", lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="sftpd"):
        for _ in range(2000):
            context.refused(Peer("203.0.113.9", 1), "connection_rate")
        clock[0] += 61
        context.refused(Peer("203.0.113.9", 2), "connection_rate")
    lines = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert len(lines) == 2
    assert "(1999 more refused in the last minute)" in lines[1]
