"""End-to-end: audit log, Prometheus scraping and OpenTelemetry export on real transfers."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import sftpd
from sftpd import telemetry
from sftpd.audit import AuditLog
from sftpd.integrations.opentelemetry import instrument
from sftpd.testing import running_server
from tests.conftest import children_of, cli, connect, eventually, stop_cli


async def test_audit_log_lines() -> None:
    """Each login, upload, download, rename, mkdir, delete, rmdir and logout is one JSON line."""
    bus = telemetry.TelemetryBus()
    out = io.StringIO()
    audit = AuditLog(out).attach(bus)
    limits = sftpd.LoginLimits(base_delay=0, max_delay=0)
    async with running_server(
        backend=sftpd.MemoryBackend(), telemetry=bus, login_limits=limits
    ) as server:
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(server.port, "dev", "bad", preferred_auth="password"):
                pass
        password_only = {"preferred_auth": "password"}  # this test is about events, not methods
        async with connect(server.port, **password_only) as conn, conn.start_sftp_client() as sftp:
            await sftp.mkdir("/in")
            async with sftp.open("/in/r.csv", "wb") as f:
                await f.write(b"x" * 5000)
            async with sftp.open("/in/r.csv", "rb") as f:
                await f.read()
            await sftp.rename("/in/r.csv", "/in/s.csv")
            await sftp.remove("/in/s.csv")
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.remove("/in/nope")
            await sftp.rmdir("/in")
        await asyncio.sleep(0.1)
    audit.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    events = [line["event"] for line in lines]
    assert events == [
        "login_failed", "login", "mkdir", "upload", "download", "rename", "delete", "delete",
        "rmdir", "logout",
    ]  # fmt: skip
    assert {line["pid"] for line in lines} == {os.getpid()}
    by_event = {line["event"]: line for line in lines}
    upload = by_event["upload"]
    assert upload["path"] == "/in/r.csv"
    assert upload["bytes"] == 5000
    assert upload["user"] == "dev"
    assert upload["peer"].startswith("127.0.0.1:")
    assert upload["result"] == "ok"
    assert upload["duration_ms"] >= 0
    assert by_event["download"]["bytes"] == 5000
    assert by_event["rename"]["to"] == "/in/s.csv"
    failed_delete = [line for line in lines if line["event"] == "delete"][1]
    assert failed_delete["result"] == "error"
    assert failed_delete["reason"] == "No such file"
    assert lines[0]["method"] == "password"
    assert "bad" not in out.getvalue()
    assert by_event["logout"]["bytes_in"] == 5000
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", upload["time"])


def metric(body: str, name: str) -> float:
    """The value of one sample (``name`` with its labels) in a /metrics page."""
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", body, re.M)
    assert match, f"{name} missing from:\n{body}"
    return float(match.group(1))


def scrape(url: str) -> str:
    """GET a /metrics page."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_prometheus_metrics_scraped_during_a_transfer(tmp_path: Path) -> None:
    """`sftpd serve --metrics-port` serves /metrics that count a transfer while it runs."""
    audit = tmp_path / "audit.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sftpd", "serve", "--port", "0", "--metrics-port", "0",
        "--audit-log", str(audit),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.stdout is not None
    text = ""
    while not re.search(r"sftp -P (\d+)", text):
        text += (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    port = int(re.search(r"sftp -P (\d+)", text).group(1))  # type: ignore[union-attr]
    metrics_url = re.search(r"Metrics: (http://\S+)", text).group(1)  # type: ignore[union-attr]

    async with connect(port, preferred_auth="password") as conn, conn.start_sftp_client() as sftp:
        f = await sftp.open("/big.bin", "wb")
        await f.write(os.urandom(1 << 20))
        during = await asyncio.to_thread(scrape, metrics_url)
        await f.write(os.urandom(1 << 20), 1 << 20)
        await f.close()
        after = await asyncio.to_thread(scrape, metrics_url)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 20) == 0

    assert metric(during, "sftpd_sessions_active") == 1.0
    assert metric(during, "sftpd_bytes_received_total") == float(1 << 20)
    assert metric(after, "sftpd_bytes_received_total") == float(2 << 20)
    assert metric(after, 'sftpd_uploads_total{result="ok"}') == 1.0
    assert metric(after, 'sftpd_logins_total{method="password",result="success"}') == 1.0
    assert 'sftpd_operation_duration_seconds_bucket{le="0.001",operation="write"}' in after
    assert '"event":"upload"' in audit.read_text()


async def test_opentelemetry_spans_and_metrics() -> None:
    """Sessions and operations become spans; bytes, operations, errors and sessions metrics."""
    bus = telemetry.TelemetryBus()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    bridge = instrument(tracer_provider, meter_provider, bus=bus)
    async with running_server(backend=sftpd.MemoryBackend(), telemetry=bus) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/o.bin", "wb") as f:
                await f.write(b"o" * 3000)
            async with sftp.open("/o.bin", "rb") as f:
                await f.read()
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.stat("/missing")
            active_during = _metric(reader, "sftpd.sessions.active")
        await asyncio.sleep(0.1)
    bridge.detach()
    spans = exporter.get_finished_spans()
    session = next(s for s in spans if s.name == "sftp.session")
    assert session.attributes is not None
    assert session.attributes["enduser.id"] == "dev"
    assert session.attributes["sftp.bytes_in"] == 3000
    writes = [s for s in spans if s.name == "sftp.write"]
    assert writes
    assert all(w.parent is not None and w.parent.span_id == session.context.span_id
               for w in writes)  # fmt: skip
    failed = next(s for s in spans if s.name == "sftp.read_file_info"
                  and s.status.status_code is StatusCode.ERROR)  # fmt: skip
    assert failed.attributes is not None
    assert failed.attributes["sftp.path"] == "/missing"
    assert _metric(reader, "sftpd.bytes.received") == 3000
    assert _metric(reader, "sftpd.bytes.sent") == 3000
    assert _metric(reader, "sftpd.errors") >= 1
    assert active_during == 1
    assert _metric(reader, "sftpd.sessions.active") == 0
    assert _metric(reader, "sftpd.operation.duration", "count") > 0


def _metric(reader: Any, name: str, field: str = "value") -> float:
    data = reader.get_metrics_data()
    total = 0.0
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        total += getattr(point, field)
    return total


async def test_prometheus_metrics_sum_over_workers(tmp_path: Path) -> None:
    """With --workers 2, /metrics sums both workers, and a killed worker's counts remain."""
    (tmp_path / "data").mkdir()
    audit = tmp_path / "audit.jsonl"
    args = ("--workers", "2", "--backend", f"local:{tmp_path / 'data'}", "--metrics-port", "0",
            "--audit-log", str(audit), "--max-sessions", "20")  # fmt: skip
    async with cli(*args, cwd=tmp_path) as (proc, port, text):
        url = re.search(r"Metrics: (http://\S+)", text).group(1)  # type: ignore[union-attr]

        async def upload(i: int) -> None:
            async with connect(port) as conn, conn.start_sftp_client() as sftp:
                async with sftp.open(f"/f{i}.bin", "wb") as f:
                    await f.write(b"x" * 1000)

        await asyncio.gather(*(upload(i) for i in range(16)))
        pids = {json.loads(line)["pid"] for line in audit.read_text().splitlines()}
        assert len(pids) == 2  # both workers served (all 16 on one: p = 2**-15)
        page = await asyncio.to_thread(scrape, url)
        assert metric(page, "sftpd_sessions_total") == 16.0
        assert metric(page, 'sftpd_uploads_total{result="ok"}') == 16.0
        assert metric(page, "sftpd_bytes_received_total") == 16000.0
        async with connect(port):  # an open session counts, on whichever worker has it
            for _ in range(50):
                page = await asyncio.to_thread(scrape, url)
                if metric(page, "sftpd_sessions_active") == 1.0:
                    break
                await asyncio.sleep(0.1)
            assert metric(page, "sftpd_sessions_active") == 1.0
            logins = [json.loads(line) for line in audit.read_text().splitlines()]
            victim = [e["pid"] for e in logins if e["event"] == "login"][-1]
            os.kill(victim, signal.SIGKILL)  # with the session open: its gauge must go

            def replaced() -> bool:
                workers = children_of(proc.pid)
                return len(workers) == 2 and victim not in workers

            await eventually(replaced, f"worker {victim} was not replaced")
        await upload(16)
        page = await asyncio.to_thread(scrape, url)
        assert metric(page, "sftpd_sessions_total") == 18.0  # 16 + the open one + 1
        assert metric(page, 'sftpd_uploads_total{result="ok"}') == 17.0
        assert metric(page, "sftpd_sessions_active") == 0.0
        assert await stop_cli(proc) == 0
