"""End-to-end: real transfers emit the exact telemetry events, measurements and metadata."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from sftpd.testing import running_server
from tests.conftest import OpenSSH, connect


class Recorder:
    """Collects events."""

    def __init__(self) -> None:
        self.events: list[telemetry.Event] = []

    def __call__(self, event: telemetry.Event) -> None:
        self.events.append(event)

    def named(self, *name: str) -> list[telemetry.Event]:
        return [e for e in self.events if e.name == name]


@pytest.fixture
def bus() -> telemetry.TelemetryBus:
    return telemetry.TelemetryBus()


async def test_upload_and_download_events(bus: telemetry.TelemetryBus) -> None:
    """open, write, close, read and stat events carry bytes, modes, paths and results."""
    rec = Recorder()
    bus.attach("rec", ("sftpd",), rec)
    async with running_server(backend=sftpd.MemoryBackend(), telemetry=bus) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/a.txt", "wb") as f:
                await f.write(b"x" * 1000)
                await f.write(b"y" * 24, 1000)
            async with sftp.open("/a.txt", "rb") as f:
                assert len(await f.read(4096, 0)) == 1024
                assert await f.read(4096, 1024) == b""
            await sftp.stat("/a.txt")
    start = rec.named("sftpd", "server", "start")[0]
    assert start.metadata["port"] == server.port
    assert start.metadata["max_sessions"] == 10
    assert start.metadata["backend"] == "MemoryBackend"
    assert start.metadata["backend_kind"] == "async"
    assert start.metadata["result"] == "ok"
    assert start.metadata["server_ref"] is server

    opens = rec.named("sftpd", "sftp", "open")
    assert [o.metadata["mode"] for o in opens] == ["write", "read"]
    assert opens[0].metadata["requested_modes"] == ["write", "create", "truncate"]
    assert opens[0].metadata["path"] == "/a.txt"
    assert opens[0].metadata["open_timeout"] == 30.0
    assert opens[0].session is not None
    assert opens[0].session.username == "dev"
    writes = rec.named("sftpd", "sftp", "write")
    assert [w.measurements["bytes"] for w in writes] == [1000, 24]
    assert [w.metadata["offset"] for w in writes] == [0, 1000]
    assert all(w.metadata["handle"] == opens[0].metadata["handle"] for w in writes)
    reads = rec.named("sftpd", "sftp", "read")
    # asyncssh's client asks again after a short read, so EOF may be reported twice.
    assert reads[0].measurements["bytes"] == 1024
    assert sum(r.measurements["bytes"] for r in reads) == 1024
    assert reads[0].metadata["result"] == "ok"
    assert {r.metadata["result"] for r in reads[1:]} == {"eof"}
    assert reads[0].metadata["bytes_requested"] == 4096
    closes = rec.named("sftpd", "sftp", "close")
    assert [c.metadata["bytes_written"] for c in closes] == [1024, 0]
    assert [c.metadata["bytes_read"] for c in closes] == [0, 1024]
    assert closes[0].metadata["close_timeout"] == 30.0
    stat = rec.named("sftpd", "sftp", "read_file_info")[-1]
    assert stat.metadata == {
        "path": "/a.txt",
        "result": "ok",
        "backend": "MemoryBackend",
        "backend_kind": "async",
    }
    for event in rec.events:
        assert event.measurements["duration"] >= 0
        assert isinstance(event.measurements["duration"], int)
    session_close = rec.named("sftpd", "session", "close")[0]
    assert session_close.measurements["bytes_in"] == 1024
    assert session_close.measurements["bytes_out"] == 1024
    assert rec.named("sftpd", "server", "stop")[0].metadata["result"] == "ok"


async def test_path_operations_and_errors(bus: telemetry.TelemetryBus) -> None:
    """mkdir, rename, delete, rmdir, list_dir and failures report paths and reasons."""
    rec = Recorder()
    bus.attach("rec", [("sftpd", "sftp")], rec)
    async with running_server(backend=sftpd.MemoryBackend(), telemetry=bus) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.mkdir("/d")
            async with sftp.open("/d/f", "wb"):
                pass
            await sftp.listdir("/d")
            await sftp.rename("/d/f", "/d/g")
            await sftp.remove("/d/g")
            await sftp.rmdir("/d")
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.remove("/missing")
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.symlink("/a", "/missing/b")
    assert rec.named("sftpd", "sftp", "make_dir")[0].metadata["path"] == "/d"
    rename = rec.named("sftpd", "sftp", "rename")[0].metadata
    assert (rename["src_path"], rename["dst_path"], rename["overwrite"]) == ("/d/f", "/d/g", False)
    listing = rec.named("sftpd", "sftp", "list_dir")[0]
    assert listing.metadata["entries"] == 1
    assert listing.metadata["result"] == "ok"
    deletes = rec.named("sftpd", "sftp", "delete")
    assert [d.metadata["result"] for d in deletes] == ["ok", "error"]
    assert deletes[1].metadata["reason"] == "No such file"
    assert deletes[1].metadata["code"] == asyncssh.FX_NO_SUCH_FILE
    assert deletes[1].metadata["path"] == "/missing"
    assert rec.named("sftpd", "sftp", "del_dir")[0].metadata["result"] == "ok"
    assert rec.named("sftpd", "sftp", "make_symlink")[0].metadata["result"] == "error"


class Exploding(sftpd.MemoryBackend):
    async def stat(self, path: str, session: sftpd.Session) -> sftpd.FileAttrs:
        if path == "/boom":
            raise KeyError("internal")
        return await super().stat(path, session)


async def test_exception_path(bus: telemetry.TelemetryBus) -> None:
    """An unexpected backend exception emits result=exception with its kind."""
    rec = Recorder()
    bus.attach("rec", ("sftpd", "sftp", "read_file_info"), rec)
    async with running_server(backend=Exploding(), telemetry=bus) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPFailure):
                await sftp.stat("/boom")
    (event,) = rec.events
    assert event.metadata["result"] == "exception"
    assert event.metadata["kind"] == "KeyError"


def test_span_emits_exception_and_reraises(bus: telemetry.TelemetryBus) -> None:
    """span() times a block, emits result=exception with kind and reason, and re-raises."""
    rec = Recorder()
    bus.attach("rec", ("app",), rec)
    with bus.span(("app", "work"), {"job": 1}) as meta:
        meta["items"] = 3
    with pytest.raises(ValueError, match="bad"), bus.span(("app", "work")):
        raise ValueError("bad")
    ok, failed = rec.events
    assert ok.metadata == {"job": 1, "items": 3, "result": "ok"}
    assert failed.metadata == {"result": "exception", "kind": "ValueError", "reason": "bad"}
    assert failed.measurements["duration"] >= 0


async def test_auth_and_session_events_never_carry_the_password(
    bus: telemetry.TelemetryBus,
) -> None:
    """Login success and failure are reported with method, user and peer, not the password."""
    rec = Recorder()
    bus.attach("rec", [("sftpd", "auth"), ("sftpd", "session")], rec)
    limits = sftpd.LoginLimits(base_delay=0, max_delay=0)
    async with running_server(
        backend=sftpd.MemoryBackend(), telemetry=bus, login_limits=limits
    ) as server:
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(server.port, "dev", "hunter2-wrong", preferred_auth="password"):
                pass
        async with (
            connect(server.port, preferred_auth="password") as conn,
            conn.start_sftp_client(),
        ):
            pass
    failure = rec.named("sftpd", "auth", "failure")[0]
    assert failure.metadata["method"] == "password"
    assert failure.metadata["username"] == "dev"
    assert failure.metadata["peer"].startswith("127.0.0.1:")
    assert failure.metadata["reason"] == "rejected"
    success = rec.named("sftpd", "auth", "success")[0]
    assert success.session is not None
    assert success.session.username == "dev"
    assert rec.named("sftpd", "session", "open")[0].metadata["auth_method"] == "password"
    assert rec.named("sftpd", "session", "close")[0].measurements["duration"] > 0
    assert all("hunter2" not in repr(e) for e in rec.events)


async def test_raising_handler_is_detached_and_session_goes_on(
    bus: telemetry.TelemetryBus, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises is logged and detached; the client's requests still succeed."""
    calls: list[telemetry.Event] = []

    def broken(event: telemetry.Event) -> None:
        calls.append(event)
        raise RuntimeError("handler bug")

    bus.attach("broken", ("sftpd", "sftp"), broken)
    with caplog.at_level(logging.ERROR, logger="sftpd.telemetry"):
        async with running_server(backend=sftpd.MemoryBackend(), telemetry=bus) as server:
            async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
                await sftp.mkdir("/a")
                await sftp.mkdir("/b")
                assert sorted(await sftp.listdir("/")) == [".", "..", "a", "b"]
    assert len(calls) == 1
    assert "broken" not in bus.handlers()
    assert any("detaching" in r.message for r in caplog.records)


def test_attach_rejects_duplicate_ids(bus: telemetry.TelemetryBus) -> None:
    """Handler ids are unique; detach reports whether the id was attached."""
    bus.attach("x", ("a",), lambda e: None)
    with pytest.raises(ValueError, match="already attached"):
        bus.attach("x", ("a",), lambda e: None)
    assert bus.detach("x") is True
    assert bus.detach("x") is False
    assert not bus.listening(("a", "b"))


async def test_openssh_transfer_events(
    bus: telemetry.TelemetryBus, openssh: OpenSSH, tmp_path: Path
) -> None:
    """An OpenSSH put/get emits writes and reads that add up to the file size."""
    rec = Recorder()
    bus.attach("rec", ("sftpd", "sftp"), rec)
    (tmp_path / "f.bin").write_bytes(b"z" * 300_000)
    async with running_server(backend=sftpd.MemoryBackend(), telemetry=bus) as server:
        result = await openssh.run(server.port, "put f.bin\nget f.bin g.bin\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = sum(e.measurements["bytes"] for e in rec.named("sftpd", "sftp", "write"))
    read = sum(e.measurements["bytes"] for e in rec.named("sftpd", "sftp", "read"))
    assert written == read == 300_000
    assert rec.named("sftpd", "sftp", "get_cwd")[0].metadata["result"] == "ok"


DOCS = Path(__file__).parents[2] / "docs" / "telemetry.md"


def test_the_docs_catalog_is_the_catalog_in_code() -> None:
    """docs/telemetry.md's catalog table is exactly telemetry.CATALOG, row for row."""
    text = DOCS.read_text()
    table = text[text.index("| event | metadata |") :].split("\n\n", 1)[0].splitlines()[2:]
    assert table == [spec.row for spec in telemetry.CATALOG]
    for spec in telemetry.CATALOG:  # every key a row names is in its documentation
        for key in spec.keys:
            assert f"`{key}`" in spec.fields, (spec.names, key)


async def test_a_session_emits_only_what_the_catalog_lists(
    bus: telemetry.TelemetryBus, tmp_path: Path
) -> None:
    """Every event of a session doing each kind of request (and failing some) is in the
    catalog, with no metadata key or measurement the catalog does not name."""
    rec = Recorder()
    bus.attach("rec", ("sftpd",), rec)
    backend = sftpd.LocalBackend(tmp_path)
    async with running_server(backend=backend, telemetry=bus) as server:
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(server.port, password="wrong"):
                pass
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/a.txt", "w") as f:
                await f.write("hello")
            async with sftp.open("/a.txt", "r") as f:
                await f.read()
            await sftp.stat("/a.txt")
            await sftp.lstat("/a.txt")
            await sftp.chmod("/a.txt", 0o600)
            await sftp.mkdir("/d")
            await sftp.listdir("/")
            await sftp.rename("/a.txt", "/d/b.txt")
            await sftp.posix_rename("/d/b.txt", "/d/c.txt")
            await sftp.copy("/d/c.txt", "/d/e.txt")
            await sftp.symlink("/d/c.txt", "/l")
            await sftp.readlink("/l")
            await sftp.link("/d/c.txt", "/d/h.txt")
            await sftp.statvfs("/")
            await sftp.realpath(".")
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.stat("/missing")
            for name in ("/d/c.txt", "/d/e.txt", "/d/h.txt", "/l"):
                await sftp.remove(name)
            await sftp.rmdir("/d")
            assert await sftp.exists("/")
    specs = {name: spec for spec in telemetry.CATALOG for name in spec.names}
    seen = set()
    for event in rec.events:
        spec = specs.get(event.name)
        assert spec is not None, event.name
        seen.add(event.name)
        allowed = set(spec.keys)
        if event.name[1] == "sftp":
            allowed |= set(telemetry.SFTP_COMMON)
        assert set(event.metadata) <= allowed, (event.name, set(event.metadata) - allowed)
        assert set(event.measurements) <= set(spec.measurements), event.name
    wanted = {telemetry.SERVER_START, telemetry.SERVER_STOP, telemetry.AUTH_SUCCESS,
              telemetry.AUTH_FAILURE, telemetry.SESSION_OPEN, telemetry.SESSION_CLOSE,
              *(telemetry.SFTP_EVENTS[op] for op in telemetry.SFTP_OPERATIONS
                if op != "check_file")}  # fmt: skip
    assert wanted <= seen, wanted - seen
