"""Unit: SFTP replies written in one event-loop pass leave in one channel write."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncssh

from sftpd._sftp.ssh import ChannelTransport


class RecordingChannel:
    """The part of an asyncssh channel ChannelTransport uses, recording what it is given."""

    def __init__(self, buffered: int = 0) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.buffered = buffered

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def close(self) -> None:
        self.events.append("close")

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def transport_over(chan: RecordingChannel) -> ChannelTransport:
    """A ChannelTransport over the recording channel."""
    return ChannelTransport(cast(asyncssh.SSHServerChannel[bytes], chan))


async def test_replies_of_one_pass_leave_as_one_channel_write() -> None:
    """Three replies in one pass reach the channel joined, in order, when the pass ends."""
    chan = RecordingChannel(buffered=7)
    transport = transport_over(chan)
    for reply in (b"one", b"two", b"three"):
        transport.write(reply)
    assert chan.writes == []
    assert transport.backlog() == 7 + len(b"onetwothree")
    await asyncio.sleep(0)
    assert chan.writes == [b"onetwothree"]
    assert transport.backlog() == 7
    transport.write(b"four")
    await asyncio.sleep(0)
    assert chan.writes == [b"onetwothree", b"four"]


async def test_close_sends_what_is_pending_and_then_nothing_more() -> None:
    """Replies written just before close go out before it; later writes are dropped."""
    chan = RecordingChannel()
    transport = transport_over(chan)
    transport.write(b"last")
    transport.close()
    transport.write(b"late")
    await asyncio.sleep(0)
    assert chan.writes == [b"last"]
    assert chan.events == ["close"]
    assert transport.backlog() == 0


async def test_a_channel_gone_mid_pass_gets_nothing() -> None:
    """When the channel is lost before the pass ends, its pending replies are dropped."""
    chan = RecordingChannel()
    transport = transport_over(chan)
    transport.write(b"reply")
    transport.closed = True
    await asyncio.sleep(0)
    assert chan.writes == []


async def test_a_large_pass_is_joined_in_bounded_writes() -> None:
    """A pass of 2 MiB of replies reaches the channel in order, in writes of about JOIN
    bytes each, so joining never copies the whole pass at once."""
    from sftpd._sftp.ssh import JOIN

    chan = RecordingChannel()
    transport = transport_over(chan)
    replies = [bytes([i]) * (32 * 1024 + 13) for i in range(64)]
    for reply in replies:
        transport.write(reply)
    await asyncio.sleep(0)
    assert b"".join(chan.writes) == b"".join(replies)
    assert len(chan.writes) == 8
    assert all(JOIN <= len(w) < JOIN + len(replies[0]) for w in chan.writes[:-1])


class ClosedByPeer(RecordingChannel):
    """A channel the client has closed: asyncssh refuses writes with BrokenPipeError."""

    def write(self, data: bytes) -> None:
        raise BrokenPipeError("Channel not open for sending")


async def test_replies_to_a_channel_the_client_closed_are_dropped() -> None:
    """A reply flushed after the client closed its channel is dropped quietly, and the
    transport counts as closed (it raised in an event-loop callback; found by fuzzing)."""
    transport = transport_over(ClosedByPeer())
    transport.write(b"late reply")
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert errors == []
    assert transport.closed
    transport.write(b"later still")  # no callback scheduled, nothing raised
    assert transport.backlog() == 0
