"""Unit: a ranged GET whose body the storage breaks off is tried again, a few times."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sftpd.backends import s3 as s3_module
from sftpd.backends.s3 import S3Backend
from sftpd.errors import Failure


class _Content:
    """An aiohttp-like stream that gives ``data``, or breaks off after half of it."""

    def __init__(self, data: bytes, broken: bool) -> None:
        self.chunks = [data[: len(data) // 2]] if broken else [data]
        self.broken = broken

    async def readany(self) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.broken:
            raise aiohttp.ClientPayloadError("Response payload is not completed")
        return b""


class _Body:
    def __init__(self, content: _Content) -> None:
        self.raw_stream = type("Raw", (), {"content": content})()

    async def __aenter__(self) -> _Body:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _FlakyClient:
    """get_object answers with a broken-off body ``breaks`` times, then whole."""

    def __init__(self, data: bytes, breaks: int) -> None:
        self.data, self.breaks, self.calls = data, breaks, 0

    async def get_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        broken = self.calls <= self.breaks
        return {"Body": _Body(_Content(self.data, broken)), "ContentLength": len(self.data)}


async def test_a_broken_off_body_is_fetched_again() -> None:
    """Two broken-off bodies, then a whole one: the read returns the bytes (3 GETs)."""
    client = _FlakyClient(b"x" * 1000, breaks=2)
    backend = S3Backend("bucket", client=client)
    assert await backend.store.get_range("key", 0, 1000) == b"x" * 1000
    assert client.calls == 3


async def test_a_storage_that_keeps_breaking_off_fails_the_read_with_a_reason() -> None:
    """After BODY_ATTEMPTS broken-off bodies the read fails with a short reason."""
    client = _FlakyClient(b"x" * 1000, breaks=10)
    backend = S3Backend("bucket", client=client)
    with pytest.raises(Failure, match="Storage broke off a read"):
        await backend.store.get_range("key", 0, 1000)
    assert client.calls == s3_module.BODY_ATTEMPTS
