"""End-to-end: the policy (veto) hook and the upload inspector (validate, then publish)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from examples.invoice_gate import inspector, policy

import sftpd
from sftpd import telemetry
from sftpd.testing import make_session, running_server
from tests.conftest import OpenSSH, connect, make_file

MiB = 1 << 20


async def test_policy_refusals_reach_openssh_with_their_reason(
    tmp_path: Path, openssh: OpenSSH
) -> None:
    """A policy refusing deletes under /keep and downloads of *.secret: OpenSSH's sftp is
    refused ("Permission denied": it prints the status, never the server's text), asyncssh
    shows the reason, the files stay, other operations work, telemetry records it."""
    backend = sftpd.MemoryBackend({"/keep/a.txt": b"a", "/pub/x.secret": b"s", "/pub/ok.txt": b"o"})
    events: list[telemetry.Event] = []
    bus = telemetry.TelemetryBus()
    bus.attach("t", [("sftpd", "sftp")], events.append)
    async with running_server(backend=backend, policy=policy, telemetry=bus) as server:
        result = await openssh.run(server.port, "rm /keep/a.txt\n", cwd=tmp_path)
        assert result.returncode != 0
        assert "Permission denied" in result.stderr
        result = await openssh.run(server.port, "get /pub/x.secret\n", cwd=tmp_path)
        assert "Permission denied" in result.stderr
        assert not (tmp_path / "x.secret").exists()
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="files under /keep cannot"):
                await sftp.remove("/keep/a.txt")
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="secret files cannot be"):
                await sftp.open("/pub/x.secret", "rb")
        result = await openssh.run(server.port, "get /pub/ok.txt\nrm /pub/ok.txt\n", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "ok.txt").read_bytes() == b"o"
    names = [e.name async for e in backend.list_dir("/keep", make_session())]
    assert "a.txt" in names
    refusals = [e.metadata.get("reason") for e in events if e.metadata.get("result") == "error"]
    assert "files under /keep cannot be removed or renamed" in refusals


async def test_an_async_policy_sees_the_operation_and_may_raise() -> None:
    """An async policy gets the session, operation and both paths of a rename; raising
    PermissionDenied refuses with its message."""
    seen: list[sftpd.Operation] = []

    async def audit_and_refuse(operation: sftpd.Operation) -> None:
        seen.append(operation)
        if operation.name == "rename":
            raise sftpd.PermissionDenied("renames are reviewed by a person")

    backend = sftpd.MemoryBackend({"/a": b"1"})
    async with running_server(backend=backend, policy=audit_and_refuse) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="reviewed by a person"):
                await sftp.rename("/a", "/b")
            await sftp.mkdir("/d")
    rename = next(op for op in seen if op.name == "rename")
    assert (rename.path, rename.target, rename.session.username) == ("/a", "/b", "dev")
    assert any(op.name == "mkdir" and op.path == "/d" for op in seen)


async def test_refused_uploads_leave_nothing_and_accepted_ones_are_whole(
    backend_and_files: tuple[object, Any], tmp_path: Path, openssh: OpenSSH
) -> None:
    """The example inspector refuses a 12 MiB non-PDF (multipart on S3) and a PDF with the
    wrong name: each close fails with the reason and nothing remains, no temporary file,
    object or multipart upload; a 12 MiB PDF is stored whole; uploads elsewhere are not
    inspected."""
    backend, contents = backend_and_files
    pdf = b"%PDF-1.7\n" + os.urandom(12 * MiB)
    not_pdf = os.urandom(12 * MiB)
    async with running_server(backend=backend, inspector=inspector) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.mkdir("/invoices")
            for name, data, reason in (("/invoices/fake.pdf", not_pdf, "this file is not a PDF"),
                                       ("/invoices/a.txt", pdf, "only .pdf files")):  # fmt: skip
                f = await sftp.open(name, "wb")
                await f.write(data)
                with pytest.raises(asyncssh.SFTPPermissionDenied, match=reason):
                    await f.close()
            assert await contents() == []
            async with sftp.open("/invoices/real.pdf", "wb") as f:
                await f.write(pdf)
            async with sftp.open("/invoices/real.pdf", "rb") as f:
                assert await f.read() == pdf
        make_file(tmp_path / "notes.txt", 1000)
        result = await openssh.run(server.port, "put notes.txt /notes.txt\n", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert await contents() == ["invoices/real.pdf", "notes.txt"]


async def test_inspected_paths_refuse_appends_and_an_inspector_failure_refuses() -> None:
    """Resuming a stored file where uploads are inspected is refused (the inspector would
    not see all of it), and an inspector that raises refuses that upload."""

    class Broken:
        def feed(self, data: bytes) -> None:
            raise RuntimeError("scanner unreachable")

        def verdict(self) -> None:
            return None

    backend = sftpd.MemoryBackend({"/invoices/old.pdf": b"%PDF-old"})
    async with running_server(backend=backend, inspector=inspector) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="inspected whole"):
                await sftp.open("/invoices/old.pdf", "ab")
    async with running_server(backend=sftpd.MemoryBackend(),
                              inspector=lambda op: Broken()) as server:  # fmt: skip
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            f = await sftp.open("/x.bin", "wb")
            await f.write(b"data")
            with pytest.raises(asyncssh.SFTPPermissionDenied, match="Inspection failed"):
                await f.close()
            assert await sftp.listdir("/") == [".", ".."]
