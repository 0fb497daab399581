"""Shared state in Redis, for several workers or hosts (needs ``pysftpd[redis]``).

    from sftpd.redis_state import RedisState
    server = sftpd.Server(..., state=RedisState("redis://redis:6379/0"))

``sftpd serve --state redis://redis:6379/0`` does the same. Every operation is one Lua
script, so it is atomic across the fleet and timed by Redis's own clock. Keys start with
``prefix`` (``sftpd:`` unless told), so several fleets can share one Redis. Redis
Cluster is not supported (a script touches several keys); Sentinel or a managed
primary with replicas is.

What each key holds (``P`` is the prefix):

- ``P f:<kind>:<key>``: sorted set of failed-login times (expires after the window);
- ``P s:all`` and ``P s:u:<user>``: sorted sets of session leases, scored by expiry;
- ``P q:<key>``: hash of committed ``bytes`` and ``files``; ``P q:<key>:rb``,
  ``:rf`` and ``:re``: reservations' bytes, files and expiries;
- ``P b:<key>``: a bandwidth token bucket (expires once full again).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .errors import ConfigError
from .state import MAX_FAILURES_KEPT, QuotaAnswer, StateUnavailable, Usage

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "a Redis state store needs the redis package: pip install 'pysftpd[redis]'"
    ) from exc

__all__ = ["RedisState"]

T = TypeVar("T")
Arg = str | int | float

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

_FAILED = (
    _NOW
    + """
local window = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[3] .. ':' .. t[1] .. '.' .. t[2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local n = redis.call('ZCARD', key)
  if n > cap then
    redis.call('ZREMRANGEBYRANK', key, 0, n - cap - 1)
    n = cap
  end
  redis.call('PEXPIRE', key, math.ceil(window * 1000) + 1)
  out[i] = n
end
return out
"""
)

_COUNTS = (
    _NOW
    + """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('ZCOUNT', key, '(' .. (now - tonumber(ARGV[1])), '+inf')
end
return out
"""
)

_OPEN_SESSION = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local lease = ARGV[1]
if not redis.call('ZSCORE', KEYS[2], lease) then
  local per_user = tonumber(ARGV[2])
  local total = tonumber(ARGV[3])
  if per_user > 0 and redis.call('ZCARD', KEYS[2]) >= per_user then
    return 'max_sessions_per_user'
  end
  if total > 0 and redis.call('ZCARD', KEYS[1]) >= total then
    return 'max_sessions_total'
  end
end
local ttl = tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now + ttl, lease)
redis.call('ZADD', KEYS[2], now + ttl, lease)
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000) + 1)
redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 1000) + 1)
return false
"""
)

_REFRESH_SESSIONS = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[i])
  redis.call('PEXPIRE', KEYS[i], math.ceil(ttl * 1000) + 1)
end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000) + 1)
return 0
"""
)

_COUNT_SESSIONS = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)

# KEYS: usage hash, reserved bytes hash, reserved files hash, expiries zset.
_LIVE = (
    _NOW
    + """
local stale = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
for _, id in ipairs(stale) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
if #stale > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now) end
local rb, rf = 0, 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do rb = rb + tonumber(v) end
for _, v in ipairs(redis.call('HVALS', KEYS[3])) do rf = rf + tonumber(v) end
local known = redis.call('EXISTS', KEYS[1])
local used = redis.call('HMGET', KEYS[1], 'bytes', 'files', 'generation')
local ub, uf, gen = tonumber(used[1]) or 0, tonumber(used[2]) or 0, used[3] or ''
"""
)

_USAGE = (
    _LIVE
    + """
return {known, ub, uf, rb, rf, gen}
"""
)

_RESERVE = (
    _LIVE
    + """
if known == 0 then return {-1, 0, 0, rb, rf, ''} end
local id, nb, nf = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local maxb, maxf, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if (maxb >= 0 and nb > 0 and ub + rb + nb > maxb)
    or (maxf >= 0 and nf > 0 and uf + rf + nf > maxf) then
  return {0, ub, uf, rb, rf, gen}
end
redis.call('HINCRBY', KEYS[2], id, nb)
redis.call('HINCRBY', KEYS[3], id, nf)
redis.call('ZADD', KEYS[4], now + ttl, id)
return {1, ub, uf, rb + nb, rf + nf, gen}
"""
)

_SETTLE = """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local gen = redis.call('HGET', KEYS[1], 'generation')
if gen and (ARGV[4] == '' or ARGV[4] == gen) then
  for i, name in ipairs({'bytes', 'files'}) do
    if redis.call('HINCRBY', KEYS[1], name, ARGV[i + 1]) < 0 then
      redis.call('HSET', KEYS[1], name, 0)
    end
  end
end
return 0
"""

_SET_USAGE = """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'bytes', ARGV[1], 'files', ARGV[2], 'generation', ARGV[4])
return 1
"""

_REFRESH_RESERVATIONS = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[i + 1]) then redis.call('ZADD', key, now + ttl, ARGV[i + 1]) end
end
return 0
"""
)

_TAKE = (
    _NOW
    + """
local amount, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('HMGET', KEYS[1], 't', 'w')
local tokens, since = tonumber(held[1]), tonumber(held[2])
if not tokens then tokens, since = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - since) * rate) - amount
redis.call('HSET', KEYS[1], 't', string.format('%.6f', tokens), 'w', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(((burst - tokens) / rate + 1) * 1000))
if tokens >= 0 then return '0' end
return string.format('%.6f', -tokens / rate)
"""
)


class RedisState:
    """A :class:`~sftpd.state.StateStore` in Redis, shared by every process given the
    same URL and prefix.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
            ``unix:///path/redis.sock``.
        prefix: Put before every key.
        timeout: Seconds a command may take before the store counts as unreachable.
    """

    def __init__(self, url: str, *, prefix: str = "sftpd:", timeout: float = 2.0) -> None:
        self.url = url
        self.prefix = prefix
        self._token = secrets.token_hex(6)  # tells this process's failure entries apart
        try:
            self._redis: Any = aioredis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
                retry_on_error=[RedisConnectionError, RedisTimeoutError],
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(f"state URL {_safe(url)!r}: {exc}") from exc
        register = self._redis.register_script
        self._failed = register(_FAILED)
        self._counts = register(_COUNTS)
        self._open_session = register(_OPEN_SESSION)
        self._refresh_sessions = register(_REFRESH_SESSIONS)
        self._count_sessions = register(_COUNT_SESSIONS)
        self._usage = register(_USAGE)
        self._reserve = register(_RESERVE)
        self._settle = register(_SETTLE)
        self._set_usage = register(_SET_USAGE)
        self._refresh_reservations = register(_REFRESH_RESERVATIONS)
        self._take = register(_TAKE)

    def __repr__(self) -> str:
        return f"RedisState({_safe(self.url)!r}, prefix={self.prefix!r})"

    async def _call(self, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StateUnavailable(f"Redis at {_safe(self.url)} is unreachable: {exc}") from exc
        except RedisError as exc:
            raise StateUnavailable(f"Redis at {_safe(self.url)} failed: {exc}") from exc

    async def start(self) -> None:
        try:
            await self.ping()
        except StateUnavailable as exc:
            raise ConfigError(f"{exc}; start Redis or fix --state") from exc

    async def close(self) -> None:
        await self._redis.aclose()

    async def ping(self) -> None:
        await self._call(self._redis.ping)

    def _quota_keys(self, key: str) -> list[str]:
        base = f"{self.prefix}q:{key}"
        return [base, base + ":rb", base + ":rf", base + ":re"]

    async def record_failure(self, keys: Sequence[str], window: float) -> list[int]:
        names = [f"{self.prefix}f:{key}" for key in keys]
        args: list[Arg] = [window, MAX_FAILURES_KEPT, self._token]
        return [int(n) for n in await self._call(lambda: self._failed(names, args))]

    async def failure_counts(self, keys: Sequence[str], window: float) -> list[int]:
        names = [f"{self.prefix}f:{key}" for key in keys]
        return [int(n) for n in await self._call(lambda: self._counts(names, [window]))]

    async def clear_failures(self, key: str) -> None:
        await self._call(lambda: self._redis.delete(f"{self.prefix}f:{key}"))

    async def open_session(
        self, lease: str, user: str, *, per_user: int | None, total: int | None, ttl: float
    ) -> str | None:
        keys = [f"{self.prefix}s:all", f"{self.prefix}s:u:{user}"]
        args: list[Arg] = [lease, per_user or 0, total or 0, ttl]
        refused = await self._call(lambda: self._open_session(keys, args))
        return None if refused is None else bytes(refused).decode()

    async def close_session(self, lease: str, user: str) -> None:
        all_key, user_key = f"{self.prefix}s:all", f"{self.prefix}s:u:{user}"

        async def drop() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                await pipe.zrem(all_key, lease).zrem(user_key, lease).execute()

        await self._call(drop)

    async def refresh_sessions(self, leases: Sequence[tuple[str, str]], ttl: float) -> None:
        if not leases:
            return
        keys = [f"{self.prefix}s:all"] + [f"{self.prefix}s:u:{user}" for _, user in leases]
        args: list[Arg] = [ttl] + [lease for lease, _ in leases]
        await self._call(lambda: self._refresh_sessions(keys, args))

    async def session_count(self, user: str | None = None) -> int:
        key = f"{self.prefix}s:all" if user is None else f"{self.prefix}s:u:{user}"
        return int(await self._call(lambda: self._count_sessions([key])))

    async def usage(self, key: str) -> Usage | None:
        known, ub, uf, rb, rf, generation = await self._call(
            lambda: self._usage(self._quota_keys(key))
        )
        return Usage(int(ub), int(uf), int(rb), int(rf), _text(generation)) if known else None

    async def set_usage(
        self, key: str, nbytes: int, files: int, *, if_unknown: bool = False
    ) -> bool:
        args: list[Arg] = [max(0, nbytes), max(0, files), 1 if if_unknown else 0,
                           secrets.token_hex(8)]  # fmt: skip
        return bool(await self._call(lambda: self._set_usage(self._quota_keys(key), args)))

    async def reserve(
        self,
        key: str,
        reservation: str,
        nbytes: int,
        files: int,
        *,
        max_bytes: int | None,
        max_files: int | None,
        ttl: float,
    ) -> QuotaAnswer:
        args: list[Arg] = [reservation, nbytes, files, -1 if max_bytes is None else max_bytes,
                -1 if max_files is None else max_files, ttl]  # fmt: skip
        granted, ub, uf, rb, rf, generation = await self._call(
            lambda: self._reserve(self._quota_keys(key), args)
        )
        usage = Usage(int(ub), int(uf), int(rb), int(rf), _text(generation))
        return QuotaAnswer(granted == 1, usage, known=granted != -1)

    async def settle(
        self, key: str, reservation: str, nbytes: int, files: int, *, generation: str = ""
    ) -> None:
        args: list[Arg] = [reservation, nbytes, files, generation]
        await self._call(lambda: self._settle(self._quota_keys(key), args))

    async def release(self, key: str, reservation: str) -> None:
        await self.settle(key, reservation, 0, 0)

    async def refresh_reservations(
        self, reservations: Sequence[tuple[str, str]], ttl: float
    ) -> None:
        if not reservations:
            return
        keys = [self._quota_keys(key)[3] for key, _ in reservations]
        args: list[Arg] = [ttl] + [reservation for _, reservation in reservations]
        await self._call(lambda: self._refresh_reservations(keys, args))

    async def take(self, key: str, amount: int, rate: float, burst: float) -> float:
        args: list[Arg] = [amount, rate, burst]
        wait = await self._call(lambda: self._take([f"{self.prefix}b:{key}"], args))
        return float(wait)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}" if user else f"{scheme}{sep}***@{host}"
