"""Unit: the server-wide budget of upload bytes held in memory."""

from __future__ import annotations

import asyncio

import pytest

from sftpd.backend import UploadMemory


def test_try_take_refuses_what_does_not_fit() -> None:
    """try_take grants bytes while they fit and refuses, without waiting, once they do not."""
    memory = UploadMemory(100)
    assert memory.try_take(60)
    assert not memory.try_take(50)
    assert memory.try_take(40)
    assert (memory.in_use, memory.peak) == (100, 100)
    memory.give(100)
    assert memory.in_use == 0


async def test_take_waits_until_bytes_are_given_back_first_come_first_served() -> None:
    """take() waits while the budget is spent and is granted in arrival order on give()."""
    memory = UploadMemory(100)
    await memory.take(90)
    order: list[str] = []

    async def taker(name: str, size: int) -> None:
        await memory.take(size)
        order.append(name)

    first = asyncio.create_task(taker("first", 50))
    await asyncio.sleep(0)
    second = asyncio.create_task(taker("second", 5))  # would fit now, but must queue
    await asyncio.sleep(0.01)
    assert order == []
    assert memory.waits == 2
    assert not memory.try_take(5)  # nobody jumps the queue either
    memory.give(90)
    await asyncio.gather(first, second)
    assert order == ["first", "second"]
    assert memory.in_use == 55
    assert memory.peak <= 100


async def test_a_request_larger_than_the_budget_gets_it_whole_once_free() -> None:
    """An upload needing more than the whole budget waits for it to be free, then runs."""
    memory = UploadMemory(10)
    await memory.take(4)
    big = asyncio.create_task(memory.take(25))
    await asyncio.sleep(0.01)
    assert not big.done()
    memory.give(4)
    await asyncio.wait_for(big, 1)
    assert memory.in_use == 25


async def test_a_cancelled_waiter_leaves_the_queue_and_holds_nothing() -> None:
    """Cancelling a waiting take() frees its place, and the next waiter is served."""
    memory = UploadMemory(10)
    await memory.take(10)
    cancelled = asyncio.create_task(memory.take(8))
    await asyncio.sleep(0)
    after = asyncio.create_task(memory.take(2))
    await asyncio.sleep(0)
    cancelled.cancel()
    memory.give(10)
    await asyncio.wait_for(after, 1)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert memory.in_use == 2


def test_no_limit_grants_everything_and_bad_limits_are_refused() -> None:
    """None means no limit; a zero, negative or non-integer budget is a clear error."""
    memory = UploadMemory()
    assert memory.try_take(1 << 40)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive number of bytes"):
            UploadMemory(bad)  # type: ignore[arg-type]
