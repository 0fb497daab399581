"""One bucket and the client that reaches it: requests, errors, paging, copies, metadata.

Everything that speaks S3 goes through :class:`Bucket`; the file-system semantics above
it (:mod:`.files`), the writer and the reader never touch the client themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

from ...errors import (
    ConfigError,
    Failure,
    FileAlreadyExists,
    InvalidParameter,
    NoSuchFile,
    PermissionDenied,
    StorageError,
)
from . import objects
from .objects import ObjectArgs

try:
    from aiohttp import ClientPayloadError as _PayloadError
except ImportError:  # pragma: no cover - without the s3 extra the backend cannot start

    class _PayloadError(Exception):  # type: ignore[no-redef]
        """Never raised: aiohttp is not installed."""


log = logging.getLogger("sftpd.s3")

#: The client's checksum settings. SigV4 already hashes every payload, so a second (CRC32)
#: checksum per part would cost CPU and copies for no extra safety.
CHECKSUM_SETTINGS: Final = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
}

#: Ranged GETs tried at most when the storage breaks off a response body.
BODY_ATTEMPTS = 3

#: An S3 page: the dict a ListObjectsV2 answers (``Contents``, ``CommonPrefixes``...).
Page = dict[str, Any]


def import_aiobotocore() -> Any:
    """aiobotocore's session, botocore's config and exceptions modules.

    Raises:
        ConfigError: the s3 extra is not installed.
    """
    try:
        import aiobotocore.session
        import botocore.config
        import botocore.exceptions
    except ImportError as exc:
        raise ConfigError(
            "the S3 backend needs aiobotocore: install the extra with pip install 'pysftpd[s3]'"
        ) from exc
    return aiobotocore.session, botocore.config, botocore.exceptions


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore error (``NoSuchKey``, ``403``...), or ``""``."""
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    code = str(error.get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if response else None
    return code or str(status or "")


class Truncated(Failure):
    """A response body ended early (the storage broke off): the request may be retried."""


async def read_body(body: Any, size: int, spare: bytearray | None = None) -> bytearray:
    """Read a response body of ``size`` bytes into one buffer, copying each byte once.

    ``spare``, if it has the right size, is filled instead of a new buffer.

    Raises:
        Truncated: the body ended before ``size`` bytes (or the connection broke).
    """
    buffer = spare if spare is not None and len(spare) == size else bytearray(size)
    done = 0
    stream = getattr(getattr(body, "raw_stream", None), "content", None)
    try:
        if stream is not None and hasattr(stream, "readany"):  # aiohttp: its chunks as is
            while done < size and (chunk := await stream.readany()):
                end = done + len(chunk)
                if end > size:
                    break
                buffer[done:end] = chunk
                done = end
        else:
            view = memoryview(buffer)
            while done < size and (count := await body.readinto(view[done:])):
                done += count
    except _PayloadError as exc:
        raise Truncated("Storage broke off a read; try again") from exc
    if done != size:
        raise Truncated("Storage sent a response of the wrong length")
    return buffer


def _method_name(operation: str) -> str:
    """``UploadPartCopy`` -> ``upload_part_copy`` (botocore's client method)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


class Bucket:
    """A bucket reached by one aiobotocore client, made on first use.

    Args:
        name: The bucket.
        client: A client made elsewhere (and closed there).
        client_factory: A zero-argument callable returning an async context manager that
            yields a client.
        endpoint_url: Overrides the endpoint.
        region_name: Overrides the region.
        max_attempts: Attempts per request, with backoff, for throttling and 5xx.
        pool_size: Connections the client keeps.
        object_args: What goes with every object written.
        copy_concurrency: Keys copied at once when a tree moves.
    """

    def __init__(
        self,
        name: str,
        *,
        client: Any = None,
        client_factory: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        max_attempts: int = 5,
        pool_size: int = 16,
        object_args: ObjectArgs,
        copy_concurrency: int = 8,
    ) -> None:
        self._session_module, self._config_module, self.exceptions = import_aiobotocore()
        self.name = name
        self.object_args = object_args
        self.copy_concurrency = copy_concurrency
        self.endpoint_url = endpoint_url
        self._client = client
        self._factory = client_factory
        self._region_name = region_name
        self._max_attempts = max_attempts
        self._pool_size = pool_size
        self._stack: contextlib.AsyncExitStack | None = None
        self._client_lock: asyncio.Lock | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ the client

    async def client(self) -> Any:
        """The S3 client, created on first use.

        A client this bucket creates lives on the event loop that created it; used from
        another loop (a server started again under a new ``asyncio.run``), a new one is
        made. A given client is used as is.
        """
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop in (None, loop):
            return self._client
        if self._client_lock is None or self._client_loop is not loop:
            self._client_lock = asyncio.Lock()
            self._client, self._stack, self._client_loop = None, None, loop
        async with self._client_lock:
            if self._client is None:
                if self._factory is not None:
                    stack = contextlib.AsyncExitStack()
                    self._client = await stack.enter_async_context(self._factory())
                    self._stack = stack
                else:
                    self._client = await self._create_client()
        return self._client

    async def _create_client(self) -> Any:
        stack = contextlib.AsyncExitStack()
        session = self._session_module.get_session()
        config = self._config_module.Config(
            retries={"max_attempts": self._max_attempts, "mode": "standard"},
            max_pool_connections=self._pool_size,
            **CHECKSUM_SETTINGS,
        )
        client = await stack.enter_async_context(
            session.create_client(
                "s3", endpoint_url=self.endpoint_url, region_name=self._region_name,
                config=config,
            )
        )  # fmt: skip
        self._stack = stack
        return client

    async def aclose(self) -> None:
        """Close a client this bucket created (not one that was given to it)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
            self._client = None

    async def check(self) -> None:
        """Check that the bucket exists and these credentials reach it.

        Raises:
            ConfigError: with what to fix (credentials, endpoint, bucket name or policy).
        """
        where = self.endpoint_url or "the configured S3 endpoint"
        errors = self.exceptions
        try:
            client = await self.client()
            await client.head_bucket(Bucket=self.name)
        except errors.NoCredentialsError as exc:
            raise ConfigError(
                "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE, or ~/.aws/credentials)"
            ) from exc
        except (errors.EndpointConnectionError, OSError) as exc:
            raise ConfigError(f"cannot reach {where}: {exc}; check AWS_ENDPOINT_URL") from exc
        except errors.ClientError as exc:
            code = error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(
                    f"bucket {self.name!r} does not exist at {where}: create it or fix "
                    "the bucket name"
                ) from exc
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ConfigError(
                    f"access to bucket {self.name!r} at {where} was denied ({code}): check "
                    "the credentials and the bucket policy"
                ) from exc
            raise ConfigError(f"checking bucket {self.name!r} at {where} failed: {exc}") from exc

    # ------------------------------------------------------------------ requests

    def translate(self, exc: BaseException, what: str) -> StorageError:
        """The storage error a client sees for a failed S3 request ``what``."""
        code = error_code(exc)
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchUpload"):
            return NoSuchFile()
        if code in ("403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch"):  # fmt: skip
            log.warning("S3 %s denied (bucket %s): %s", what, self.name, exc)
            return PermissionDenied()
        if code in ("InvalidRange", "416"):
            return InvalidParameter("Range not satisfiable")
        if code in ("PreconditionFailed", "412"):
            if what in ("PutObject", "CompleteMultipartUpload"):  # an exclusive create lost
                return FileAlreadyExists()
            log.info("S3 %s: %s changed while it was being read", what, self.name)
            return Failure("The file changed while it was being read")
        log.error("S3 %s failed (bucket %s): %s", what, self.name, exc)
        return Failure("Storage error")

    @contextlib.asynccontextmanager
    async def errors(self, what: str) -> AsyncIterator[None]:
        """Turn what an S3 request ``what`` raises into a short storage error."""
        try:
            yield
        except StorageError:
            raise
        except (self.exceptions.BotoCoreError, self.exceptions.ClientError) as exc:
            raise self.translate(exc, what) from exc
        except (OSError, asyncio.TimeoutError) as exc:
            log.error("S3 %s failed (bucket %s): %s", what, self.name, exc)
            raise Failure("Storage unavailable") from exc

    async def call(self, operation: str, **args: Any) -> dict[str, Any]:
        """One S3 request on this bucket (``call("DeleteObject", Key=k)``), errors mapped."""
        client = await self.client()
        method = getattr(client, _method_name(operation))
        async with self.errors(operation):
            return dict(await method(Bucket=self.name, **args))

    async def head(self, key: str) -> dict[str, Any] | None:
        """The object's HeadObject, or ``None`` if there is none."""
        try:
            return await self.call("HeadObject", Key=key)
        except NoSuchFile:
            return None

    async def keys_below(self, prefix: str, limit: int = 1) -> list[str]:
        """Up to ``limit`` keys below ``prefix`` (any depth)."""
        page = await self.call("ListObjectsV2", Prefix=prefix, MaxKeys=limit)
        return [item["Key"] for item in page.get("Contents", [])]

    async def pages(self, prefix: str, delimiter: str | None = None) -> AsyncIterator[Page]:
        """The ListObjectsV2 pages of ``prefix``, one request each."""
        args: dict[str, Any] = {"Prefix": prefix}
        if delimiter is not None:
            args["Delimiter"] = delimiter
        while True:
            page = await self.call("ListObjectsV2", **args)
            yield page
            if not page.get("IsTruncated"):
                return
            args["ContinuationToken"] = page.get("NextContinuationToken")

    async def put(self, key: str, body: object, **args: Any) -> dict[str, Any]:
        """A PutObject of a new object, with the object arguments of its key."""
        return await self.call("PutObject", Key=key, Body=body, **self.object_args.new(key), **args)

    async def delete(self, *keys: str) -> None:
        """Delete objects (one DeleteObject, or DeleteObjects by 1,000)."""
        if len(keys) == 1:
            await self.call("DeleteObject", Key=keys[0])
            return
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            await self.call("DeleteObjects", Delete={"Objects": batch, "Quiet": True})

    async def read_object(self, key: str) -> bytes:
        """A whole object."""
        response = await self.call("GetObject", Key=key)
        async with self.errors("GetObject"), response["Body"] as body:
            data: bytes = await body.read()
        return data

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """One ranged GET; ``b""`` past the end."""
        if length <= 0:
            return b""
        return bytes(await self.get_chunk(key, offset, length, None, None))

    async def get_chunk(
        self, key: str, offset: int, length: int, etag: str | None, spare: bytearray | None
    ) -> bytearray:
        """A ranged GET of the version ``etag``, read straight into one buffer (``spare``)."""
        pinned = {"IfMatch": etag} if etag else {}
        for attempt in range(1, BODY_ATTEMPTS + 1):
            try:
                response = await self.call(
                    "GetObject", Key=key, Range=f"bytes={offset}-{offset + length - 1}", **pinned
                )
                async with self.errors("GetObject"), response["Body"] as body:
                    size = int(response.get("ContentLength", length))
                    return await read_body(body, size, spare)
            except InvalidParameter:
                return bytearray()  # 416: the object got shorter
            except Truncated:
                if attempt == BODY_ATTEMPTS:
                    raise
                log.warning("S3 GetObject of %s broke off (attempt %d of %d); trying again",
                            key, attempt, BODY_ATTEMPTS)  # fmt: skip
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ multipart

    async def start_multipart(self, key: str, args: Mapping[str, Any]) -> str:
        """Start a multipart upload; returns its id."""
        result = await self.call("CreateMultipartUpload", Key=key, **args)
        return str(result["UploadId"])

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[dict[str, Any]], **args: Any
    ) -> None:
        """Complete a multipart upload from its parts (``PartNumber``, ``ETag``)."""
        await self.call("CompleteMultipartUpload", Key=key, UploadId=upload_id,
                        MultipartUpload={"Parts": parts}, **args)  # fmt: skip

    async def abort_multipart(self, key: str, upload_id: str) -> bool:
        """Abort a multipart upload; False if it was gone already (no error)."""
        client = await self.client()
        try:
            await client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)
        except self.exceptions.ClientError as exc:
            if error_code(exc) != "NoSuchUpload":  # a peer aborted it just now
                raise
            return False
        return True

    async def copy_part(
        self, key: str, upload_id: str, number: int, source_key: str, start: int, end: int
    ) -> str:
        """UploadPartCopy of bytes ``start`` to ``end`` (inclusive); returns its ETag."""
        result = await self.call(
            "UploadPartCopy", Key=key, UploadId=upload_id, PartNumber=number,
            CopySource={"Bucket": self.name, "Key": source_key},
            CopySourceRange=f"bytes={start}-{end}",
        )  # fmt: skip
        return str(result["CopyPartResult"]["ETag"])

    async def abort_stale_uploads(self, prefix: str, age: float) -> list[str]:
        """Abort the multipart uploads under ``prefix`` started over ``age`` seconds ago.

        Returns:
            The keys whose uploads were aborted.
        """
        client = await self.client()
        cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=age)
        aborted: list[str] = []
        paginator = client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
            for upload in page.get("Uploads", []):
                started = upload.get("Initiated")
                if started is None or started > cutoff:
                    continue
                if await self.abort_multipart(upload["Key"], upload["UploadId"]):
                    aborted.append(upload["Key"])
        return aborted

    # ------------------------------------------------------------------ copies

    async def copy(
        self, src_key: str, dst_key: str, size: int, head: Mapping[str, Any] | None = None
    ) -> None:
        """Copy one object; ``head`` (its HeadObject) lets a rename update its content type."""
        source = {"Bucket": self.name, "Key": src_key}
        if size <= objects.MAX_COPY_PART:
            await self.call("CopyObject", Key=dst_key, CopySource=source,
                            **self.object_args.copy(dst_key, head))  # fmt: skip
            return
        if head is None:
            head = await self.head(src_key) or {}
        upload_id = await self.start_multipart(
            dst_key, self.object_args.multipart_copy(dst_key, head)
        )
        try:
            parts = []
            for number, (start, end) in enumerate(objects.copy_ranges(size), 1):
                etag = await self.copy_part(dst_key, upload_id, number, src_key, start, end)
                parts.append({"PartNumber": number, "ETag": etag})
            await self.complete_multipart(dst_key, upload_id, parts)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.abort_multipart(dst_key, upload_id)
            raise

    async def move_tree(self, src_prefix: str, dst_prefix: str) -> None:
        """Copy every key below ``src_prefix`` to ``dst_prefix``, then delete the sources."""
        limit = asyncio.Semaphore(self.copy_concurrency)
        moved: list[str] = []

        async def copy_one(key: str, size: int) -> None:
            async with limit:
                await self.copy(key, dst_prefix + key[len(src_prefix) :], size)
            moved.append(key)

        async for page in self.pages(src_prefix):
            items = page.get("Contents", [])
            await asyncio.gather(*(copy_one(i["Key"], int(i.get("Size", 0))) for i in items))
        for start in range(0, len(moved), 1000):
            batch = [{"Key": key} for key in moved[start : start + 1000]]
            await self.call("DeleteObjects", Delete={"Objects": batch, "Quiet": True})
        with contextlib.suppress(StorageError):  # SeaweedFS keeps the emptied folder entry
            await self.call("DeleteObject", Key=src_prefix)

    async def rewrite_metadata(
        self, key: str, metadata: Mapping[str, str],
        replacing: Callable[[str], bool] = lambda name: False,
    ) -> bool:  # fmt: skip
        """Put ``metadata`` into the object at ``key`` (its keys for which ``replacing``
        holds dropped first) by a CopyObject onto itself, inside the storage.

        Returns:
            False for an object over 5 GiB, which is left as it is.

        Raises:
            NoSuchFile: there is no such object.
        """
        head = await self.head(key)
        if head is None:
            raise NoSuchFile()
        if int(head.get("ContentLength", 0)) > objects.MAX_COPY_PART:
            return False
        kept = {k: v for k, v in (head.get("Metadata") or {}).items() if not replacing(k)}
        await self.call(
            "CopyObject", Key=key, CopySource={"Bucket": self.name, "Key": key},
            MetadataDirective="REPLACE", Metadata={**kept, **metadata},
            **self.object_args.same_object(head),
        )  # fmt: skip
        return True
