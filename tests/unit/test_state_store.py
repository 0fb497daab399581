"""The state store contract, on the in-process store and on a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sftpd import ConfigError, LoginLimits
from sftpd._config import state_from_url
from sftpd._shared import SharedState
from sftpd._throttle import LoginThrottle
from sftpd.redis_state import RedisState
from sftpd.state import MemoryState, StateStore, StateUnavailable, Usage
from tests.s3_servers import free_port


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    """Each contract test runs on MemoryState and on RedisState (a real redis-server)."""
    if request.param == "memory":
        yield MemoryState()
        return
    url = request.getfixturevalue("redis_url")
    redis = RedisState(url, prefix="test:")
    await redis.start()
    yield redis
    await redis.close()


async def test_failures_count_per_key_within_the_window(store: StateStore) -> None:
    """Failures count per key, age out of the window, and a clear forgets one key only."""
    assert await store.record_failure(["a", "b"], 0.5) == [1, 1]
    assert await store.record_failure(["a"], 0.5) == [2]
    assert await store.failure_counts(["a", "b", "c"], 0.5) == [2, 1, 0]
    await store.clear_failures("a")
    assert await store.failure_counts(["a", "b"], 0.5) == [0, 1]
    await asyncio.sleep(0.6)
    assert await store.failure_counts(["b"], 0.5) == [0]


async def test_session_leases_hold_the_caps(store: StateStore) -> None:
    """Per-user and total caps refuse a lease beyond them; renewing a held lease is not a
    new one; a lease given back frees its place."""
    assert await store.open_session("l1", "ann", per_user=2, total=3, ttl=30) is None
    assert await store.open_session("l2", "ann", per_user=2, total=3, ttl=30) is None
    assert await store.open_session("l3", "ann", per_user=2, total=3, ttl=30) == (
        "max_sessions_per_user"
    )
    assert await store.open_session("l1", "ann", per_user=2, total=3, ttl=30) is None  # renewal
    assert await store.open_session("l4", "bob", per_user=2, total=3, ttl=30) is None
    assert await store.open_session("l5", "cat", per_user=2, total=3, ttl=30) == (
        "max_sessions_total"
    )
    await store.close_session("l2", "ann")
    assert await store.session_count("ann") == 1
    assert await store.open_session("l5", "cat", per_user=2, total=3, ttl=30) is None
    assert await store.session_count() == 3


async def test_leases_lapse_unless_renewed(store: StateStore) -> None:
    """A lease not renewed within its ttl stops counting (a dead process's sessions);
    renewing re-takes a lease the store lost."""
    assert await store.open_session("gone", "ann", per_user=1, total=None, ttl=0.3) is None
    assert await store.open_session("kept", "bob", per_user=1, total=None, ttl=0.3) is None
    await asyncio.sleep(0.2)
    await store.refresh_sessions([("kept", "bob")], 0.5)
    await asyncio.sleep(0.2)
    assert await store.session_count("ann") == 0
    assert await store.session_count("bob") == 1
    assert await store.open_session("new", "ann", per_user=1, total=None, ttl=30) is None
    await store.close_session("kept", "bob")
    await store.refresh_sessions([("kept", "bob")], 30)  # lost, then renewed: back
    assert await store.session_count("bob") == 1


async def test_quota_reservations_hold_to_the_byte(store: StateStore) -> None:
    """Concurrent reservations never together pass the limit; settling moves a reservation
    into the committed usage; releasing gives it back."""
    assert await store.usage("t") is None
    unknown = await store.reserve("t", "r", 1, 0, max_bytes=10, max_files=None, ttl=30)
    assert not unknown.known
    assert not unknown.granted
    assert await store.set_usage("t", 40, 2)
    assert not await store.set_usage("t", 0, 0, if_unknown=True)

    async def one(index: int) -> bool:
        answer = await store.reserve("t", f"r{index}", 7, 0, max_bytes=100, max_files=None,
                                     ttl=30)  # fmt: skip
        return answer.granted

    granted = await asyncio.gather(*(one(i) for i in range(20)))
    assert sum(granted) == 8  # 40 + 8 * 7 = 96; a ninth would make 103
    assert await store.usage("t") == Usage(40, 2, 56, 0)
    winners = [i for i, ok in enumerate(granted) if ok]
    await store.settle("t", f"r{winners[0]}", 5, 1)  # stored 5 bytes as a new file
    await store.release("t", f"r{winners[1]}")
    assert await store.usage("t") == Usage(45, 3, 42, 0)
    assert (await store.reserve("t", "x", 13, 0, max_bytes=100, max_files=None, ttl=30)).granted
    refused = await store.reserve("t", "y", 1, 0, max_bytes=100, max_files=None, ttl=30)
    assert not refused.granted
    assert refused.usage == Usage(45, 3, 55, 0)


async def test_quota_files_and_floors(store: StateStore) -> None:
    """The file limit counts files; usage never goes below zero; reservations of a dead
    process lapse after their ttl unless renewed."""
    await store.set_usage("t", 10, 1)
    assert (await store.reserve("t", "a", 0, 1, max_bytes=None, max_files=2, ttl=0.3)).granted
    assert not (await store.reserve("t", "b", 0, 1, max_bytes=None, max_files=2, ttl=30)).granted
    assert (await store.reserve("t", "c", 5, 0, max_bytes=None, max_files=2, ttl=0.3)).granted
    await store.refresh_reservations([("t", "c")], 30)
    await asyncio.sleep(0.4)
    assert await store.usage("t") == Usage(10, 1, 5, 0)  # "a" lapsed, "c" was renewed
    await store.settle("t", "c", -50, -5)
    assert await store.usage("t") == Usage(0, 0, 0, 0)


async def test_changes_against_an_older_count_are_dropped(store: StateStore) -> None:
    """A change replayed against the count it was made on applies; once the usage was
    counted again (a new generation), the old change is dropped, not added twice."""
    await store.set_usage("t", 100, 1)
    first = await store.usage("t")
    assert first is not None
    assert first.generation
    await store.settle("t", "r1", 10, 1, generation=first.generation)
    assert await store.usage("t") == Usage(110, 2)
    await store.set_usage("t", 500, 5)  # a scan after the store lost its data
    await store.settle("t", "r2", 10, 1, generation=first.generation)
    assert await store.usage("t") == Usage(500, 5)


async def test_bandwidth_bucket_says_how_long_to_wait(store: StateStore) -> None:
    """A bucket gives its burst at once, then asks each taker to wait for its share."""
    assert await store.take("k", 1000, 10_000.0, 1000.0) == 0.0
    wait = await store.take("k", 5000, 10_000.0, 1000.0)
    assert 0.45 <= wait <= 0.51
    wait = await store.take("k", 5000, 10_000.0, 1000.0)
    assert 0.95 <= wait <= 1.01  # queued behind the first taker's debt


async def test_an_unreachable_redis_is_reported() -> None:
    """A Redis nobody listens on: start() fails with what to fix, calls raise
    StateUnavailable, and the password never appears in messages."""
    store = RedisState(f"redis://user:hunter2@127.0.0.1:{free_port()}/0", timeout=0.5)
    with pytest.raises(ConfigError, match="unreachable") as started:
        await store.start()
    assert "hunter2" not in str(started.value)
    with pytest.raises(StateUnavailable):
        await store.record_failure(["a"], 10)
    await store.close()


def test_state_urls() -> None:
    """'memory' and redis URLs make stores; anything else is a ConfigError."""
    assert isinstance(state_from_url("memory"), MemoryState)
    assert isinstance(state_from_url("redis://localhost:6379/0"), RedisState)
    with pytest.raises(ConfigError, match="Redis URL"):
        state_from_url("postgres://x")


async def test_a_user_name_alone_is_slowed_never_banned() -> None:
    """Failures of one user name from many addresses slow its attempts but never refuse
    it; an address, or the name from one address, is banned at its limit."""
    limits = LoginLimits(per_user_and_address=3, per_user=4, per_address=5, base_delay=0.1,
                         max_delay=2.0)  # fmt: skip
    throttle = LoginThrottle(limits, SharedState(MemoryState()))
    for index in range(6):  # a spray from six addresses
        await throttle.failed("ann", f"198.51.100.{index}")
    assert await throttle.check("ann", "203.0.113.1") == (None, 2.0, 0)  # slowed, not banned
    for _ in range(3):
        delay = await throttle.failed("bob", "203.0.113.9")
    assert delay == pytest.approx(0.4)  # 0.1 * 2 ** (3 - 1)
    refusal, _, _ = await throttle.check("bob", "203.0.113.9")
    assert refusal == "too many failed logins for this user from this address"
    assert (await throttle.check("bob", "203.0.113.10"))[0] is None
    for name in ("c", "d"):
        await throttle.failed(name, "203.0.113.9")
    refusal, _, _ = await throttle.check("zed", "203.0.113.9")
    assert refusal == "too many failed logins from this address"
