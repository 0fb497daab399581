"""End-to-end: everything that is not SFTP is refused, and so are extra sessions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from tests.conftest import connect


async def test_shell_is_refused(server: sftpd.Server) -> None:
    """A shell request on a session channel is refused."""
    async with connect(server.port) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(term_type=None)


async def test_exec_is_refused(server: sftpd.Server) -> None:
    """An exec request (here `id`) is refused and runs nothing."""
    async with connect(server.port) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.run("id", check=False)


async def test_other_subsystems_are_refused(server: sftpd.Server) -> None:
    """Only the sftp subsystem exists."""
    async with connect(server.port) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="netconf")


async def test_tcp_forwarding_is_refused(server: sftpd.Server) -> None:
    """Local (direct-tcpip) and remote (tcpip-forward) port forwarding are refused."""
    async with connect(server.port) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", server.port)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)


async def test_unix_forwarding_is_refused(server: sftpd.Server, tmp_path: Path) -> None:
    """Unix-socket forwarding in both directions is refused."""
    async with connect(server.port) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_unix_connection("/run/some.sock")
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_path(str(tmp_path / "listen.sock"), "/tmp/x")


async def test_x11_forwarding_is_refused(server: sftpd.Server) -> None:
    """An SFTP session that asks for X11 forwarding has the request refused."""
    async with connect(server.port) as conn:
        with pytest.raises(asyncssh.ChannelOpenError, match="X11"):
            await conn.create_session(
                asyncssh.SSHClientSession,
                subsystem="sftp",
                encoding=None,
                x11_forwarding=True,
                x11_display="127.0.0.1:0",
            )


async def test_agent_forwarding_is_refused(server: sftpd.Server, tmp_path: Path) -> None:
    """A client offering its agent gets no agent channel on the server side."""
    agent = await asyncio.start_unix_server(lambda r, w: None, str(tmp_path / "agent.sock"))
    async with (
        agent,
        connect(
            server.port, agent_forwarding=True, agent_path=str(tmp_path / "agent.sock")
        ) as conn,
        conn.start_sftp_client() as sftp,
    ):
        await sftp.listdir("/")
        server_conns = [c._conn for c in server._ctx.connections]  # type: ignore[union-attr]
        assert server_conns
        assert all(c is not None and c.get_agent_path() is None for c in server_conns)


async def test_wrong_password_gets_no_session(server: sftpd.Server) -> None:
    """A wrong password fails authentication."""
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(server.port, password="wrong"):
            pass
    assert server.active_sessions == 0


async def test_max_sessions_refuses_the_extra_client(
    host_key_dir: Path, memory_backend: sftpd.MemoryBackend
) -> None:
    """With max_sessions=2 a third client is refused while the first two keep working.

    The refusal is reported as a ("sftpd", "connection", "refused") event.
    """
    bus = telemetry.TelemetryBus()
    events: list[telemetry.Event] = []
    bus.attach("t", [("sftpd", "connection", "refused")], events.append)
    async with sftpd.Server(
        backend=memory_backend, auth={"dev": "dev"}, system_dir=host_key_dir, port=0,
        max_sessions=2, telemetry=bus,
    ) as server:  # fmt: skip
        async with connect(server.port) as one, connect(server.port) as two:
            with pytest.raises(asyncssh.DisconnectError) as refused:
                async with connect(server.port):
                    pass
            assert refused.value.code == asyncssh.DISC_TOO_MANY_CONNECTIONS
            assert [e.metadata["reason"] for e in events] == ["max_sessions"]
            for conn in (one, two):
                async with conn.start_sftp_client() as sftp:
                    await sftp.listdir("/")
        for _ in range(100):
            if server.active_sessions == 0:
                break
            await asyncio.sleep(0.02)
        async with connect(server.port) as three, three.start_sftp_client() as sftp:
            assert "." in await sftp.listdir("/")
