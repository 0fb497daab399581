"""Uploads: a multipart upload fed part by part as the client writes, or one PutObject.

Memory stays bounded by the server's upload memory; a write out of order goes to a
temporary file; nothing is visible before the commit and nothing is left by an abort.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from ..._memory import UNLIMITED
from ..._session import Session
from ...errors import Failure, InvalidParameter, NoSuchFile, Unsupported
from . import objects
from .bucket import Bucket
from .objects import MIN_PART_SIZE, digest_metadata

__all__ = ["S3Writer"]

log = logging.getLogger("sftpd.s3")


class _PartBuffer:
    """The part being filled: an in-memory file, later sent as the request body as is.

    Each byte is copied once, into the file. The HTTP client streams the file in chunks
    with back-pressure, so a part in flight costs its own size and no second copy in the
    socket's send buffer (as one large ``bytes`` body would).
    """

    __slots__ = ("file", "length")

    def __init__(self, data: bytes = b"") -> None:
        self.file = io.BytesIO()
        self.file.write(data)
        self.length = len(data)

    def __len__(self) -> int:
        return self.length

    def append(self, data: bytes) -> None:
        self.file.write(data)
        self.length += len(data)

    def patch(self, offset: int, data: bytes) -> None:
        """Overwrite (and if needed extend) at ``offset`` within the buffer (zero-filled)."""
        self.file.seek(offset)
        self.file.write(data)
        self.length = max(self.length, offset + len(data))
        self.file.seek(self.length)

    def take(self, size: int) -> io.BytesIO:
        """Remove the first ``size`` bytes and return them as a file positioned at 0."""
        body = self.file
        with body.getbuffer() as view:
            rest = bytes(view[size : self.length])
        body.truncate(size)
        body.seek(0)
        self.file = io.BytesIO()
        self.file.write(rest)
        self.length = len(rest)
        return body

    def body(self) -> io.BytesIO:
        """All of it, as a file positioned at 0 (the buffer is not used afterwards)."""
        self.file.seek(0)
        return self.file

    def to_bytes(self) -> bytes:
        return self.file.getvalue()


class S3Writer:
    """An upload: a multipart upload fed part by part, or one PutObject for small files.

    Sequential writes fill a part buffer; full parts upload in the background, at most
    ``upload_concurrency`` at once (so memory stays near ``part_size * (concurrency+1)``),
    all counted in the server's upload memory (``session.upload_memory``).
    A write that jumps back before the current part (or ahead of it) switches the upload
    to a temporary file sent at close, unless parts were already sent: rewriting data
    that was already uploaded is refused with a clear error.
    """

    def __init__(
        self,
        bucket: Bucket,
        key: str,
        *,
        part_size: int,
        concurrency: int,
        key_of: Callable[[str], str] | None = None,
        exclusive: bool = False,
        session: Session | None = None,
    ) -> None:
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._key_of = key_of  # the object key of a file path: names a copy-data's source
        # copy-data of a whole object into this empty upload: (source key, size, head),
        # done with CopyObject at commit unless a write comes first.
        self._copy: tuple[str, int, Mapping[str, Any]] | None = None
        self._object_args = bucket.object_args.new(key)
        # Exclusive creates commit with If-None-Match: *, so S3 itself refuses the commit
        # if another upload stored the key since the open.
        self._condition = {"IfNoneMatch": "*"} if exclusive else {}
        self._upload_id: str | None = None
        self._parts: dict[int, str] = {}
        self._next_part = 1
        self._buffer = _PartBuffer()
        self._buffer_start = 0  # file offset of the buffer's first byte
        self._limit = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._spill: Any = None
        self._spill_size = 0
        self._failed: BaseException | None = None
        self._done = False
        # The server's budget for upload bytes in memory: the part being filled holds
        # ``_held`` of it, each part in flight its size until it is sent.
        self._memory = session.upload_memory if session is not None else UNLIMITED
        self._held = 0
        # Set by the server before commit: kept as object metadata (PutObject at once; a
        # multipart upload by a copy onto itself once complete).
        self.digests: Mapping[str, str] | None = None
        self._must_stream = False  # sending a spilled upload: wait for memory, never spill

    @property
    def upload_id(self) -> str | None:
        """The multipart upload id, once one was started."""
        return self._upload_id

    async def _start_multipart(self) -> str:
        if self._upload_id is None:
            self._upload_id = await self._bucket.start_multipart(self._key, self._object_args)
        return self._upload_id

    async def start_from_existing(self, size: int, source_key: str | None = None) -> None:
        """Begin with the stored object: copied as parts if large, in memory if small."""
        source_key = self._key if source_key is None else source_key
        if size < MIN_PART_SIZE:
            data = await self._bucket.get_range(source_key, 0, size)
            if self._memory.try_take(len(data)):
                self._held = len(data)
                self._buffer = _PartBuffer(data)
            else:  # no memory to spare: start on disk
                self._spill = tempfile.TemporaryFile()  # noqa: SIM115
                self._spill.write(data)
                self._spill_size = len(data)
            return
        upload_id = await self._start_multipart()
        for start, end in objects.copy_ranges(size):
            number = self._next_part
            self._next_part += 1
            self._parts[number] = await self._bucket.copy_part(
                self._key, upload_id, number, source_key, start, end
            )
        self._buffer_start = size

    @property
    def _end(self) -> int:
        return self._buffer_start + len(self._buffer)

    async def copy_from(self, path: str, offset: int, length: int, target_offset: int) -> None:
        """copy-data of a whole object into this empty upload: one CopyObject at commit
        (UploadPartCopy for objects over 5 GiB), so no byte passes through sftpd.

        Raises:
            Unsupported: anything else (part of an object, into a non-empty upload, an
                exclusive create); sftpd then copies through reads and writes.
        """
        empty = not self._end and self._upload_id is None and self._spill is None
        if offset or target_offset or not empty or self._condition or self._copy:
            raise Unsupported("Only whole objects are copied inside the storage")
        if self._key_of is None:
            raise Unsupported("No session to name the source with")
        source = self._key_of(path)
        head = await self._bucket.head(source)
        if head is None:
            raise NoSuchFile()
        if int(head.get("ContentLength", 0)) != length:
            raise Unsupported("Only whole objects are copied inside the storage")
        self._copy = (source, length, head)

    async def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``."""
        if self._failed is not None:
            raise Failure("An earlier part of this upload failed")
        if self._copy is not None:  # written into after a copy-data: start from the copy
            source, size, _head = self._copy
            self._copy = None
            await self.start_from_existing(size, source)
        if self._spill is not None:
            self._spill.seek(offset)
            self._spill.write(data)
            self._spill_size = max(self._spill_size, offset + len(data))
            return
        sent = self._upload_id is not None
        if offset < self._buffer_start:
            raise InvalidParameter(
                "This part of the file was already sent to storage and cannot be rewritten"
            )
        if offset > self._end:
            if not sent:
                await self._switch_to_spill()
                await self.write(offset, data)
                return
            if offset - self._end > self._part_size:
                raise InvalidParameter("Writes may skip ahead at most one part")
        if not await self._reserve(offset + len(data) - self._buffer_start):
            await self._switch_to_spill()  # the server's upload memory is spent: use disk
            await self.write(offset, data)
            return
        if offset > self._end:
            self._buffer.append(bytes(offset - self._end))
        if offset == self._end:
            self._buffer.append(bytes(data))
        else:
            self._buffer.patch(offset - self._buffer_start, data)
        part = self._part_size
        while len(self._buffer) >= part:
            await self._limit.acquire()  # wait for a slot before building the part
            self._buffer_start += part
            held = min(part, self._held)  # the part takes its bytes of the reservation along
            self._held -= held
            await self._send_part(self._buffer.take(part), acquired=True, held=held)

    async def _reserve(self, end: int) -> bool:
        """Hold upload memory for a part buffer of ``end`` bytes; False: spill instead.

        Before the first part is sent an upload that finds no memory spills to disk. After
        that it waits, holding nothing, for a whole part's worth, so it never waits again
        within that part and waiters never hold what another waiter needs.
        """
        need = end - self._held
        if need <= 0:
            return True
        memory = self._memory
        if memory.try_take(need):
            self._held = end
            return True
        if self._upload_id is None and not self._must_stream:
            return False
        memory.give(self._held)
        self._held = 0
        want = max(end, self._part_size)
        await memory.take(want)
        self._held = want
        return True

    def _release(self) -> None:
        self._memory.give(self._held)
        self._held = 0

    async def _switch_to_spill(self) -> None:
        spill = tempfile.TemporaryFile()  # noqa: SIM115
        spill.write(self._buffer.to_bytes())
        self._spill_size = len(self._buffer)
        self._buffer = _PartBuffer()
        self._spill = spill
        self._release()

    async def _send_part(self, data: io.BytesIO, *, acquired: bool = False, held: int = 0) -> None:
        if not acquired:
            await self._limit.acquire()
        try:
            upload_id = await self._start_multipart()
        except BaseException:
            self._limit.release()
            self._memory.give(held)
            raise
        number = self._next_part
        self._next_part += 1

        async def upload() -> None:
            try:
                result = await self._bucket.call(
                    "UploadPart", Key=self._key, UploadId=upload_id, PartNumber=number, Body=data
                )
                self._parts[number] = result["ETag"]
            except BaseException as exc:
                self._failed = exc
                raise
            finally:
                self._limit.release()
                self._memory.give(held)

        task = asyncio.get_running_loop().create_task(upload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def commit(self) -> None:
        """Send what is left and complete the upload (or PutObject a small file)."""
        try:
            if self._copy is not None:
                source, size, head = self._copy
                await self._bucket.copy(source, self._key, size, head)
            elif self._spill is not None:
                await self._commit_spill()
            elif self._upload_id is None:
                await self._put(self._buffer.body())
                self._release()
            else:
                if len(self._buffer) or self._next_part == 1:
                    held, self._held = self._held, 0
                    await self._send_part(self._buffer.body(), held=held)
                    self._buffer = _PartBuffer()
                await self._drain()
                parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
                await self._bucket.complete_multipart(
                    self._key, self._upload_id, parts, **self._condition
                )
                self._upload_id = None
                if self.digests:
                    await self._keep_digests()
        except BaseException:
            await self.abort()
            raise
        self._done = True

    async def _put(self, body: object) -> None:
        """One PutObject of the whole file (exclusive: only if the key is still free)."""
        await self._bucket.call(
            "PutObject", Key=self._key, Body=body, **self._put_args(), **self._condition
        )

    def _put_args(self) -> Mapping[str, Any]:
        """The new object's arguments, its digests among its metadata."""
        if not self.digests:
            return self._object_args
        args = dict(self._object_args)
        args["Metadata"] = {**args.get("Metadata", {}), **digest_metadata(self.digests)}
        return args

    async def _keep_digests(self) -> None:
        """A completed multipart upload gets its digests by a copy onto itself; if that
        fails the object stays as stored, and digests are computed when asked for.
        """
        assert self.digests is not None
        try:
            await self._bucket.rewrite_metadata(self._key, digest_metadata(self.digests))
        except NoSuchFile:
            pass  # replaced or removed since: nothing to keep them on
        except Exception:
            log.warning("keeping the digests of %s failed", self._key, exc_info=True)

    async def _commit_spill(self) -> None:
        spill, size = self._spill, self._spill_size
        self._spill = None
        try:
            spill.seek(0)
            if size < self._part_size:
                await self._put(spill.read(size))
                return
            self._buffer = _PartBuffer()
            self._buffer_start = 0
            self._must_stream = True
            while chunk := spill.read(self._part_size):
                await self.write(self._end, chunk)
        finally:
            spill.close()
        await self.commit()

    async def _drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._failed is not None:
            raise Failure("Uploading a part failed") from self._failed

    async def abort(self) -> None:
        """Cancel parts in flight and abort the multipart upload: nothing remains."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self._release()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            try:
                await self._bucket.abort_multipart(self._key, upload_id)
            except Exception:
                log.warning("aborting multipart upload %s of %s failed; a bucket lifecycle rule "
                            "for incomplete uploads will clean it", upload_id, self._key,
                            exc_info=True)  # fmt: skip
