"""Unit: SSH packets written in one event-loop pass leave in one transport write."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd._coalesce import BATCH, CoalescingTransport, supported
from sftpd._connection import Connection
from sftpd.testing import running_server
from tests.conftest import connect


class RecordingTransport(asyncio.Transport):
    """A transport that records what reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0  # the socket took everything

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_in_one_pass_are_sent_together_in_order() -> None:
    """Three writes in one pass reach the transport as one write, at the end of the pass."""
    inner = RecordingTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    outer.write(b"a")
    outer.write(b"bc")
    outer.write(b"d")
    assert inner.writes == []
    assert outer.get_write_buffer_size() == 4
    await asyncio.sleep(0)
    assert inner.writes == [b"abcd"]
    outer.write(b"e")
    await asyncio.sleep(0)
    assert inner.writes == [b"abcd", b"e"]


async def test_close_and_abort_send_what_is_pending_first() -> None:
    """A disconnect message written just before close or abort is not lost."""
    for how in ("close", "abort"):
        inner = RecordingTransport()
        outer = CoalescingTransport(inner, asyncio.get_running_loop())
        outer.write(b"bye")
        getattr(outer, how)()
        assert inner.writes == [b"bye"]
        assert inner.events == [how]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
        assert inner.writes == [b"bye"]


async def test_nothing_is_written_to_a_closing_transport() -> None:
    """Data pending when the transport started closing is dropped, not written late."""
    inner = RecordingTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    outer.write(b"late")
    inner.closing = True
    await asyncio.sleep(0)
    assert inner.writes == []


async def test_other_attributes_reach_the_transport() -> None:
    """Everything else (extra info, closing state) is the wrapped transport's."""
    inner = RecordingTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    assert outer.get_extra_info("peername") == ("127.0.0.1", 1)
    assert outer.is_closing() is False


class BackedUpTransport(RecordingTransport):
    """A transport whose socket accepts nothing: everything written stays buffered."""

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.writes))


async def test_large_passes_are_sent_in_bounded_batches() -> None:
    """A pass of 1 MiB leaves in batches of about BATCH bytes, in order, nothing lost."""
    inner = RecordingTransport()
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    packets = [bytes([i]) * 32_800 for i in range(32)]
    for packet in packets:
        outer.write(packet)
    await asyncio.sleep(0)
    assert b"".join(inner.writes) == b"".join(packets)
    assert len(inner.writes) == 4
    assert all(BATCH <= len(w) < BATCH + 32_800 for w in inner.writes[:-1])


async def test_a_backed_up_socket_gets_packets_without_joining() -> None:
    """Once the transport holds unsent data, packets are handed over as they are."""
    inner = BackedUpTransport()
    inner.writes.append(b"unsent")
    outer = CoalescingTransport(inner, asyncio.get_running_loop())
    for packet in (b"a" * 10, b"b" * 10, b"c" * 10):
        outer.write(packet)
    await asyncio.sleep(0)
    assert inner.writes == [b"unsent", b"a" * 10, b"b" * 10, b"c" * 10]


def test_only_tested_asyncssh_versions_get_the_swap() -> None:
    """The swap runs on the asyncssh versions it was tested with, and on no others."""
    assert supported(asyncssh.__version__), "update TESTED after checking the assumptions"
    assert not supported("2.16.0")
    assert not supported("3.0.0")


async def test_asyncssh_keeps_its_transport_where_the_swap_expects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a live connection, asyncssh's server connection holds its transport in
    ``_transport`` and sends through it: after the swap its bytes go through ours."""
    writes: list[int] = []
    original = CoalescingTransport.write

    def spy(self: CoalescingTransport, data: bytes) -> None:
        writes.append(len(data))
        original(self, data)

    async with running_server(backend=sftpd.MemoryBackend()) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await sftp.listdir("/")
            context = server._ctx
            assert context is not None
            [connection] = list(context.connections)
            assert isinstance(connection, Connection)
            assert isinstance(connection._conn._transport, CoalescingTransport)  # type: ignore[union-attr]
            monkeypatch.setattr(CoalescingTransport, "write", spy)
            await sftp.listdir("/")
    assert writes, "asyncssh wrote around the transport it was given"


async def test_a_server_connection_sends_no_empty_ignore_packets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a live connection the server's packets reach asyncssh's sender with no empty
    MSG_IGNORE among them, while the client (untouched) still sends its usual ones.

    This fails if asyncssh stops sending its ignore packets through ``self.send_packet``
    with an empty string, the one shape :func:`skip_ignore_packets` filters."""
    sent: dict[str, list[int]] = {"server": [], "client": []}
    original = asyncssh.connection.SSHConnection.send_packet

    def spy(self: asyncssh.connection.SSHConnection, pkttype: int, *args: bytes, **kw: Any) -> None:
        side = "server" if isinstance(self, asyncssh.SSHServerConnection) else "client"
        sent[side].append(pkttype)
        original(self, pkttype, *args, **kw)

    monkeypatch.setattr(asyncssh.connection.SSHConnection, "send_packet", spy)
    async with running_server(backend=sftpd.MemoryBackend()) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/f", "wb") as f:
                await f.write(b"x" * 100_000)
            async with sftp.open("/f", "rb") as f:
                assert await f.read() == b"x" * 100_000
    data = asyncssh.constants.MSG_CHANNEL_DATA
    assert sent["server"].count(data) >= 4
    assert asyncssh.constants.MSG_IGNORE not in sent["server"]
    assert sent["client"].count(asyncssh.constants.MSG_IGNORE) >= sent["client"].count(data)
