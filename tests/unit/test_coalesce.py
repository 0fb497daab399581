"""Unit: SSH packets written in one event-loop pass leave in one transport write."""

from __future__ import annotations

import asyncio
from typing import Any

from sftpd._coalesce import BATCH, CoalescingTransport


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
