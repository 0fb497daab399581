"""Downloads: ranged GETs with a bounded read-ahead window, pinned to one version."""

from __future__ import annotations

import asyncio

from .bucket import Bucket

__all__ = ["S3Reader"]


class S3Reader:
    """Sequential downloads with a bounded read-ahead window of ranged GETs.

    Every GET asks for the version (ETag) the file had when it was opened, so a file
    replaced during a download fails the download instead of mixing two versions.
    """

    def __init__(
        self, bucket: Bucket, key: str, size: int, etag: str | None, *, chunk: int, ahead: int
    ) -> None:
        self._bucket = bucket
        self._key = key
        self._etag = etag
        self.size = size
        self._chunk = chunk
        self._ahead = ahead
        self._chunks: dict[int, asyncio.Task[bytearray]] = {}
        self._spare: list[bytearray] = []  # buffers of chunks done with, to fill again
        self._in_use: dict[int, int] = {}  # chunk -> reads in progress that need it

    def _fetch(self, index: int) -> asyncio.Task[bytearray]:
        task = self._chunks.get(index)
        if task is None:
            start = index * self._chunk
            spare = self._spare.pop() if self._spare else None
            task = asyncio.get_running_loop().create_task(
                self._bucket.get_chunk(
                    self._key, start, min(self._chunk, self.size - start), self._etag, spare
                )
            )
            self._chunks[index] = task
        return task

    def _drop(self, index: int) -> None:
        """Forget a chunk; keep its buffer for the next one (no fresh pages to fault in)."""
        task = self._chunks.pop(index)
        if task.done() and not task.cancelled() and task.exception() is None:
            self._spare.append(task.result())
        else:
            task.cancel()

    async def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``; chunks ahead are fetched meanwhile.

        Reads may run concurrently (a client keeps many outstanding): a chunk another
        read still needs is never dropped, nor its buffer reused.
        """
        if offset >= self.size or length <= 0:
            return b""
        end = min(self.size, offset + length)
        first, last = offset // self._chunk, (end - 1) // self._chunk
        # Keep only the window: chunks before this read are done with.
        for index in [i for i in self._chunks if i < first and not self._in_use.get(i)]:
            self._drop(index)
        last_chunk = (self.size - 1) // self._chunk
        for index in range(first, min(last_chunk, last + self._ahead) + 1):
            self._fetch(index)
        needed = range(first, last + 1)
        for index in needed:
            self._in_use[index] = self._in_use.get(index, 0) + 1
        try:
            pieces = []
            for index in needed:
                data = memoryview(await self._fetch(index))
                base = index * self._chunk
                pieces.append(data[max(0, offset - base) : end - base])
            return b"".join(pieces)
        finally:
            for index in needed:
                count = self._in_use[index] - 1
                if count:
                    self._in_use[index] = count
                else:
                    del self._in_use[index]

    async def close(self) -> None:
        """Cancel the read-ahead."""
        for task in self._chunks.values():
            task.cancel()
        self._chunks.clear()
        self._spare.clear()
