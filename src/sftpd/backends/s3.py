"""Amazon S3 and S3-compatible storage (MinIO, SeaweedFS...), streaming both ways.

Needs the optional extra: ``pip install 'pysftpd[s3]'`` (aiobotocore).

- Keys: ``/a/b.txt`` is stored as ``<prefix>a/b.txt``. The prefix is static
  (``prefix="tenant-a/"``) or read from each session's attributes
  (``prefix=SessionPrefix("sftp_prefix")``, the reference's ``{:session, key}``).
- Directories: ``mkdir`` writes a ``dir/.keep`` marker; directories implied by keys below
  them count too. Listings are paginated ``ListObjectsV2`` calls with a delimiter,
  streamed page by page, with sizes and times from the listing itself.
- Reads: ranged GETs with a bounded read-ahead window, so a sequential download streams
  while memory stays bounded; a 416 is the end of the file.
- Writes: a multipart upload fed as the client writes, with a bounded number of parts in
  flight; files smaller than one part are a single PutObject at close. The object appears
  only when the client closes the file; a failed CompleteMultipartUpload fails the close;
  an abandoned upload is aborted (no object, no open multipart upload).
- Resume and append (OpenSSH ``reput``): the stored object becomes the first part(s) by
  ``UploadPartCopy``, so nothing already stored is downloaded or sent again.
- Rename: server-side copy (multipart copy above 5 GiB) then delete; a directory moves
  every key below it with bounded concurrency.
- Objects: ``object_args`` (encryption, storage class, ACL, metadata, tags) go with every
  object written, and Content-Type follows the file name, also across renames.
- Errors: 404 is "no such file", 403 "permission denied"; throttling and 5xx are retried
  with backoff by botocore, then reported as a failure. Raw storage messages never reach
  the client; they are logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import io
import itertools
import logging
import mimetypes
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .. import paths
from .._memory import UNLIMITED

try:
    from aiohttp import ClientPayloadError as _PayloadError
except ImportError:  # pragma: no cover - without the s3 extra the backend cannot start

    class _PayloadError(Exception):  # type: ignore[no-redef]
        """Never raised: aiohttp is not installed."""


from .._session import Session
from ..backend import AttrChanges, DirEntry, FileAttrs, FileType
from ..errors import (
    ConfigError,
    DirectoryNotEmpty,
    Failure,
    FileAlreadyExists,
    InvalidParameter,
    IsADirectory,
    NoSuchFile,
    NotADirectory,
    PermissionDenied,
    StorageError,
    Unsupported,
)

__all__ = ["OBJECT_ARGS", "S3Backend", "SessionPrefix", "content_type"]

log = logging.getLogger("sftpd.s3")

MIN_PART_SIZE = 5 << 20
MAX_COPY_PART = 5 << 30
#: The object metadata key of a client's mtime (setstat="keep"): float seconds, as rclone.
MTIME = "mtime"
#: Object metadata keys of the digests sftpd computes as a file is uploaded.
DIGEST_PREFIX = "sftpd-"
#: The key rclone's S3 backend reads an object's MD5 from (base64) when its ETag is not one.
RCLONE_MD5 = "md5chksum"


def digest_metadata(digests: Mapping[str, str]) -> dict[str, str]:
    """Object metadata for ``digests``: ``sftpd-<algorithm>`` hex, and rclone's md5chksum."""
    metadata = {f"{DIGEST_PREFIX}{name}": value for name, value in digests.items()}
    if "md5" in digests:
        metadata[RCLONE_MD5] = base64.b64encode(bytes.fromhex(digests["md5"])).decode()
    return metadata


def _is_digest_key(name: str) -> bool:
    return name.startswith(DIGEST_PREFIX) or name == RCLONE_MD5


def digests_from_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    """The digests kept in an object's metadata, or None."""
    found = {k[len(DIGEST_PREFIX) :]: v for k, v in (metadata or {}).items()
             if k.startswith(DIGEST_PREFIX)}  # fmt: skip
    return found or None


KEEP = ".keep"

#: What ``object_args`` may set: how each object sftpd writes is stored (encryption,
#: storage class, ACL, metadata, tags). Content-Type comes from the file name instead.
OBJECT_ARGS = frozenset({
    "ACL", "BucketKeyEnabled", "Metadata", "ServerSideEncryption", "SSEKMSEncryptionContext",
    "SSEKMSKeyId", "StorageClass", "Tagging",
})  # fmt: skip
#: Those a CopyObject does not take over from its source: each copy must name them again.
#: (Metadata, tags and Content-Type are copied from the source, which sftpd wrote.)
COPY_ARGS = OBJECT_ARGS - {"Metadata", "Tagging"}
#: Headers a CopyObject that replaces the metadata must repeat from the source.
_KEPT_HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")
#: Content types of compressed files, which ``mimetypes`` reports as encodings.
_ENCODING_TYPES = {
    "gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
    "compress": "application/x-compress", "br": "application/x-brotli",
}  # fmt: skip
_MIME = mimetypes.MimeTypes(filenames=())  # Python's own table: the same on every machine


def content_type(key: str) -> str | None:
    """The content type for a file name (``report.csv`` -> ``text/csv``), or None."""
    kind, encoding = _MIME.guess_type(key.rsplit("/", 1)[-1], strict=False)
    if encoding is not None:
        return _ENCODING_TYPES.get(encoding)
    return kind


def _check_object_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """``object_args`` checked: known keys and the types botocore wants.

    Raises:
        ConfigError: naming the key, and the allowed ones if it is unknown.
    """
    checked: dict[str, Any] = {}
    for key, value in args.items():
        if key not in OBJECT_ARGS:
            raise ConfigError(
                f"object_args: unknown key {key!r}; allowed: {', '.join(sorted(OBJECT_ARGS))}"
            )
        if key == "BucketKeyEnabled":
            if not isinstance(value, bool):
                raise ConfigError(
                    f"object_args: BucketKeyEnabled must be true or false, got {value!r}"
                )
        elif key == "Metadata":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ConfigError("object_args: Metadata must map names to strings")
            value = dict(value)
        elif not isinstance(value, str) or not value:
            raise ConfigError(f"object_args: {key} must be a non-empty string, got {value!r}")
        checked[key] = value
    return checked


def _copy_ranges(size: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges that copy ``size`` bytes in as few parts as S3 allows.

    The parts are of equal size (to the byte), not 5 GiB and a remainder: a copied object
    that new parts follow must not end in a part under 5 MiB, and equal parts of an object
    over 5 GiB are each over 2.5 GiB.
    """
    count = max(1, -(-size // MAX_COPY_PART))
    bounds = [size * i // count for i in range(count + 1)]
    return [(start, end - 1) for start, end in itertools.pairwise(bounds)]


@dataclass(frozen=True, slots=True)
class SessionPrefix:
    """Read each session's key prefix from ``session.attributes[attribute]``."""

    attribute: str


def _import_aiobotocore() -> Any:
    try:
        import aiobotocore.session
        import botocore.config
        import botocore.exceptions
    except ImportError as exc:
        raise ConfigError(
            "the S3 backend needs aiobotocore: install the extra with pip install 'pysftpd[s3]'"
        ) from exc
    return aiobotocore.session, botocore.config, botocore.exceptions


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    code = str(error.get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if response else None
    return code or str(status or "")


class _Truncated(Failure):
    """A response body ended early (the storage broke off): the request may be retried."""


#: Ranged GETs tried at most when the storage breaks off a response body.
BODY_ATTEMPTS = 3


async def _read_body(body: Any, size: int, spare: bytearray | None = None) -> bytearray:
    """Read a response body of ``size`` bytes into one buffer, copying each byte once.

    ``spare``, if it has the right size, is filled instead of a new buffer.

    Raises:
        _Truncated: the body ended before ``size`` bytes (or the connection broke).
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
        raise _Truncated("Storage broke off a read; try again") from exc
    if done != size:
        raise _Truncated("Storage sent a response of the wrong length")
    return buffer


#: The client's checksum settings. SigV4 already hashes every payload, so a second (CRC32)
#: checksum per part would cost CPU and copies for no extra safety.
CHECKSUM_SETTINGS: Final = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
}


class S3Backend:
    """Files in an S3 bucket.

    Args:
        bucket: The bucket (required).
        prefix: A static key prefix (``"tenant-a/"``) or a :class:`SessionPrefix`.
        client: An aiobotocore S3 client you created (and will close); for tests or custom
            sessions. Otherwise one is created from the standard AWS configuration
            (environment, ``~/.aws``, ``AWS_ENDPOINT_URL``...).
        client_factory: A zero-argument callable returning an async context manager that
            yields a client, instead of ``client``.
        endpoint_url: Overrides the endpoint (MinIO, SeaweedFS...).
        region_name: Overrides the region.
        part_size: Multipart part size in bytes (default 8 MiB, at least 5 MiB).
        upload_concurrency: Parts of one upload in flight at once.
        read_ahead: Chunks of one download fetched ahead at once.
        read_chunk: Size of one ranged GET (default 8 MiB).
        copy_concurrency: Keys copied at once when a directory is renamed.
        setstat: ``"ignore"`` (default: accept mtime/mode changes and keep nothing),
            ``"keep"`` (a client's mtime, as WinSCP's "preserve timestamp", ``sftp put
            -p`` and rclone set it, is kept in the object's ``mtime`` metadata, which
            rclone reads, and reported by stat and listings; each change is a CopyObject
            onto itself, and a listing HEADs its objects) or ``"refuse"`` (answer
            "unsupported").
        max_attempts: Attempts per request, with backoff, for throttling and 5xx.
        object_args: How every object sftpd writes is stored, as botocore arguments of
            PutObject, CreateMultipartUpload and CopyObject: ``ServerSideEncryption``
            (``"AES256"``, ``"aws:kms"``), ``SSEKMSKeyId``, ``SSEKMSEncryptionContext``,
            ``BucketKeyEnabled``, ``StorageClass``, ``ACL``, ``Metadata`` (a dict) and
            ``Tagging`` (``"k=v&k2=v2"``). For buckets whose policy demands them.
        content_types: Set each object's Content-Type from its file name (``.csv`` ->
            ``text/csv``, using Python's own table), also when a rename changes it
            (uploads to a temporary name then renamed, as WinSCP does). False: S3's
            default, ``binary/octet-stream``.
        stale_uploads_after: Seconds after which a multipart upload under ``prefix`` that
            nobody finished is aborted (default one day, as the usual lifecycle rule), by a
            janitor that runs at start-up and every ``cleanup_every`` seconds; ``None``:
            never. For uploads a killed server could not abort. See
            :meth:`abort_stale_uploads`.
        cleanup_every: Seconds between two janitor runs (default one hour).

    Raises:
        ConfigError: aiobotocore is missing, or an option is invalid.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str | SessionPrefix = "",
        client: Any = None,
        client_factory: Any = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        part_size: int = 8 << 20,
        upload_concurrency: int = 2,
        read_ahead: int = 3,
        read_chunk: int = 8 << 20,
        copy_concurrency: int = 8,
        setstat: str = "ignore",
        max_attempts: int = 5,
        object_args: Mapping[str, Any] | None = None,
        content_types: bool = True,
        stale_uploads_after: float | None = 86400.0,
        cleanup_every: float = 3600.0,
    ) -> None:
        self._session_module, self._config_module, self._exceptions = _import_aiobotocore()
        if not bucket or not isinstance(bucket, str):
            raise ConfigError("S3Backend needs a bucket name")
        if isinstance(prefix, str):
            prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        elif not isinstance(prefix, SessionPrefix):
            raise ConfigError("prefix must be a string or SessionPrefix('attribute')")
        if part_size < MIN_PART_SIZE:
            raise ConfigError(
                f"part_size must be at least 5 MiB ({MIN_PART_SIZE}), got {part_size}"
            )
        for name, value in (("upload_concurrency", upload_concurrency), ("read_ahead", read_ahead),
                            ("copy_concurrency", copy_concurrency)):  # fmt: skip
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if read_chunk < 64 << 10:
            raise ConfigError("read_chunk must be at least 64 KiB")
        if setstat not in ("ignore", "keep", "refuse"):
            raise ConfigError("setstat must be 'ignore', 'keep' or 'refuse'")
        if client is not None and client_factory is not None:
            raise ConfigError("give client or client_factory, not both")
        if stale_uploads_after is not None and not stale_uploads_after > 0:
            raise ConfigError("stale_uploads_after must be a positive number of seconds or None")
        if not cleanup_every > 0:
            raise ConfigError("cleanup_every must be a positive number of seconds")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.upload_concurrency = upload_concurrency
        self.read_ahead = read_ahead
        self.read_chunk = read_chunk
        self.copy_concurrency = copy_concurrency
        self.setstat = setstat
        self.object_args = _check_object_args(object_args or {})
        self.content_types = content_types
        self._client = client
        self._factory = client_factory
        self._endpoint_url = endpoint_url
        self._region_name = region_name
        self._max_attempts = max_attempts
        self.stale_uploads_after = stale_uploads_after
        self.cleanup_every = cleanup_every
        self._janitor: asyncio.Task[None] | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._client_lock: asyncio.Lock | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"S3Backend(bucket={self.bucket!r}, prefix={self.prefix!r})"

    # ------------------------------------------------------------------ plumbing

    async def client(self) -> Any:
        """The S3 client, created on first use (``startup()`` does it at server start).

        A client this backend creates lives on the event loop that created it; used from
        another loop (a server started again under a new ``asyncio.run``), a new one is
        made. A given client (``client=``) is used as is.
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
            max_pool_connections=max(16, self.upload_concurrency * 4),
            **CHECKSUM_SETTINGS,
        )
        client = await stack.enter_async_context(
            session.create_client(
                "s3",
                endpoint_url=self._endpoint_url,
                region_name=self._region_name,
                config=config,
            )
        )
        self._stack = stack
        return client

    async def startup(self) -> None:
        """Create the client and check that the bucket exists and these credentials reach it.

        Raises:
            ConfigError: with what to fix (credentials, endpoint, bucket name or policy).
        """
        where = self._endpoint_url or "the configured S3 endpoint"
        try:
            client = await self.client()
            await client.head_bucket(Bucket=self.bucket)
        except self._exceptions.NoCredentialsError as exc:
            raise ConfigError(
                "no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE, or ~/.aws/credentials)"
            ) from exc
        except (self._exceptions.EndpointConnectionError, OSError) as exc:
            raise ConfigError(f"cannot reach {where}: {exc}; check AWS_ENDPOINT_URL") from exc
        except self._exceptions.ClientError as exc:
            code = _error_code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ConfigError(
                    f"bucket {self.bucket!r} does not exist at {where}: create it or fix "
                    "the bucket name"
                ) from exc
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ConfigError(
                    f"access to bucket {self.bucket!r} at {where} was denied ({code}): check "
                    "the credentials and the bucket policy"
                ) from exc
            raise ConfigError(f"checking bucket {self.bucket!r} at {where} failed: {exc}") from exc
        if self.stale_uploads_after is not None and isinstance(self.prefix, str):
            self._janitor = asyncio.get_running_loop().create_task(self._clean_periodically())

    async def shutdown(self) -> None:
        """Stop the janitor; close a client this backend created (a server calls this when
        it stops)."""
        janitor, self._janitor = self._janitor, None
        if janitor is not None:
            janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await janitor
        await self.aclose()

    # ------------------------------------------------------------------ stale uploads

    async def abort_stale_uploads(self, older_than: float | None = None) -> list[str]:
        """Abort the multipart uploads under this backend's prefix started over
        ``older_than`` seconds ago (default ``stale_uploads_after``, one day).

        An upload sftpd abandons is aborted at once; this is for those nobody could abort
        (a server killed mid-upload, the storage unreachable at that moment). It is safe
        with several instances on one bucket: an upload younger than the age, such as a
        live peer's, is never touched. With a :class:`SessionPrefix` there is no single
        prefix, so nothing is scanned.

        Returns:
            The keys whose uploads were aborted.
        """
        age = self.stale_uploads_after if older_than is None else older_than
        if age is None or not isinstance(self.prefix, str):
            return []
        client = await self.client()
        cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=age)
        aborted: list[str] = []
        paginator = client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                started = upload.get("Initiated")
                if started is None or started > cutoff:
                    continue
                key = upload["Key"]
                try:
                    await client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                    )
                except self._exceptions.ClientError as exc:
                    if _error_code(exc) != "NoSuchUpload":  # a peer aborted it just now
                        raise
                    continue
                aborted.append(key)
        if aborted:
            log.warning("aborted %d stale multipart upload(s) in %s/%s older than %.0f s",
                        len(aborted), self.bucket, self.prefix, age)  # fmt: skip
        return aborted

    async def _clean_periodically(self) -> None:
        while True:
            try:
                await self.abort_stale_uploads()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("aborting stale multipart uploads in %s failed", self.bucket)
            await asyncio.sleep(self.cleanup_every)

    async def aclose(self) -> None:
        """Close a client this backend created (not one that was given to it)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
            self._client = None

    def _base(self, session: Session) -> str:
        prefix = self.prefix
        if isinstance(prefix, SessionPrefix):
            value = session.attributes.get(prefix.attribute)
            if not isinstance(value, str) or not value.strip("/"):
                log.error("session %s has no %r attribute for its S3 prefix", session.id,
                          prefix.attribute)  # fmt: skip
                raise PermissionDenied("No storage prefix for this session")
            if ".." in value.split("/"):
                raise PermissionDenied("Invalid storage prefix for this session")
            return value.strip("/") + "/"
        return prefix

    def key(self, path: str, session: Session) -> str:
        """The object key of a file path."""
        return self._base(session) + paths.to_key(path)

    def dir_prefix(self, path: str, session: Session) -> str:
        """The key prefix of everything inside a directory path."""
        key = paths.to_key(path)
        return self._base(session) + (key + "/" if key else "")

    def _translate(self, exc: BaseException, what: str) -> StorageError:
        code = _error_code(exc)
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchUpload"):
            return NoSuchFile()
        if code in ("403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                    "SignatureDoesNotMatch"):  # fmt: skip
            log.warning("S3 %s denied (bucket %s): %s", what, self.bucket, exc)
            return PermissionDenied()
        if code in ("InvalidRange", "416"):
            return InvalidParameter("Range not satisfiable")
        if code in ("PreconditionFailed", "412"):
            if what in ("PutObject", "CompleteMultipartUpload"):  # an exclusive create lost
                return FileAlreadyExists()
            log.info("S3 %s: %s changed while it was being read", what, self.bucket)
            return Failure("The file changed while it was being read")
        log.error("S3 %s failed (bucket %s): %s", what, self.bucket, exc)
        return Failure("Storage error")

    @contextlib.asynccontextmanager
    async def _errors(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except StorageError:
            raise
        except (self._exceptions.BotoCoreError, self._exceptions.ClientError) as exc:
            raise self._translate(exc, what) from exc
        except (OSError, asyncio.TimeoutError) as exc:
            log.error("S3 %s failed (bucket %s): %s", what, self.bucket, exc)
            raise Failure("Storage unavailable") from exc

    async def _head(self, key: str) -> dict[str, Any] | None:
        client = await self.client()
        try:
            async with self._errors("HeadObject"):
                return dict(await client.head_object(Bucket=self.bucket, Key=key))
        except NoSuchFile:
            return None

    def _new_object_args(self, key: str) -> dict[str, Any]:
        """Arguments of a new object at ``key``: ``object_args`` and its content type."""
        args = dict(self.object_args)
        if self.content_types and (kind := content_type(key)):
            args["ContentType"] = kind
        return args

    def _copy_args(self, dst_key: str, head: Mapping[str, Any] | None) -> dict[str, Any]:
        """Arguments of a CopyObject to ``dst_key`` from the object described by ``head``.

        S3 copies metadata, tags and Content-Type from the source; when the new name
        calls for another content type, the metadata is replaced, repeating the source's.
        """
        args = {key: value for key, value in self.object_args.items() if key in COPY_ARGS}
        kind = content_type(dst_key) if self.content_types else None
        if head is not None and kind is not None and kind != head.get("ContentType"):
            args.update(MetadataDirective="REPLACE", ContentType=kind,
                        Metadata=dict(head.get("Metadata") or {}))  # fmt: skip
            args.update({name: head[name] for name in _KEPT_HEADERS if head.get(name)})
        return args

    def _multipart_copy_args(self, dst_key: str, head: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments of the CreateMultipartUpload of a copy: parts copy data only."""
        args = self._new_object_args(dst_key)
        if head.get("Metadata"):
            args["Metadata"] = dict(head["Metadata"])
        if "ContentType" not in args and head.get("ContentType"):
            args["ContentType"] = head["ContentType"]
        args.update({name: head[name] for name in _KEPT_HEADERS if head.get(name)})
        return args

    async def _has_children(self, prefix: str, limit: int = 1) -> list[str]:
        """Up to ``limit`` keys below ``prefix`` (any depth)."""
        client = await self.client()
        async with self._errors("ListObjectsV2"):
            page = await client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=limit)
        return [item["Key"] for item in page.get("Contents", [])]

    async def _kind(self, path: str, session: Session) -> tuple[FileType, dict[str, Any]] | None:
        if path == "/":
            return FileType.DIRECTORY, {}
        head = await self._head(self.key(path, session))
        if head is not None:
            return FileType.FILE, head
        if await self._has_children(self.dir_prefix(path, session)):
            return FileType.DIRECTORY, {}
        return None

    async def _require_parent(self, path: str, session: Session) -> None:
        parent = paths.parent(path)
        if parent == "/":
            return
        kind = await self._kind(parent, session)
        if kind is None:
            raise NoSuchFile("Parent directory does not exist")
        if kind[0] is not FileType.DIRECTORY:
            raise NoSuchFile("Parent is not a directory")

    # ------------------------------------------------------------------ required

    async def stat(self, path: str, session: Session) -> FileAttrs:
        """A file from HEAD, or a directory (marker or keys below it)."""
        kind = await self._kind(path, session)
        if kind is None:
            raise NoSuchFile()
        if kind[0] is FileType.DIRECTORY:
            return FileAttrs(type=FileType.DIRECTORY, mtime=time.time(), permissions=0o755)
        head = kind[1]
        stored = head["LastModified"].timestamp() if "LastModified" in head else time.time()
        return FileAttrs(
            type=FileType.FILE,
            size=int(head.get("ContentLength", 0)),
            mtime=self._kept_mtime(head.get("Metadata")) or stored,
            permissions=0o644,
        )

    def _kept_mtime(self, metadata: Mapping[str, str] | None) -> float | None:
        """With ``setstat="keep"``: the client's mtime kept in the metadata, if any."""
        if self.setstat != "keep" or not metadata or MTIME not in metadata:
            return None
        try:
            return float(metadata[MTIME])
        except ValueError:
            return None

    async def _kept_mtimes(self, prefix: str, items: list[dict[str, Any]]) -> dict[str, float]:
        """The kept mtimes of a listing page's objects (HEADs, 16 at a time)."""
        gate = asyncio.Semaphore(16)

        async def one(key: str) -> tuple[str, float | None]:
            async with gate:
                head = await self._head(key)
            return key, self._kept_mtime(head.get("Metadata") if head else None)

        found = await asyncio.gather(*(one(item["Key"]) for item in items
                                       if item["Key"] != prefix + KEEP))  # fmt: skip
        return {key: mtime for key, mtime in found if mtime is not None}

    async def list_dir(self, path: str, session: Session) -> AsyncIterator[DirEntry]:
        """Stream a directory, one ListObjectsV2 page at a time."""
        prefix = self.dir_prefix(path, session)
        client = await self.client()
        token: str | None = None
        seen_any = False
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            async with self._errors("ListObjectsV2"):
                page = await client.list_objects_v2(**kwargs)
            for common in page.get("CommonPrefixes", []):
                seen_any = True
                name = common["Prefix"][len(prefix) :].rstrip("/")
                if name and "/" not in name:
                    yield DirEntry(name, FileAttrs(type=FileType.DIRECTORY, mtime=time.time(),
                                                   permissions=0o755))  # fmt: skip
            contents = page.get("Contents", [])
            kept = await self._kept_mtimes(prefix, contents) if self.setstat == "keep" else {}
            for item in contents:
                seen_any = True
                name = item["Key"][len(prefix) :]
                if not name or name == KEEP or name.endswith("/") or "/" in name:
                    continue
                yield DirEntry(
                    name,
                    FileAttrs(
                        type=FileType.FILE,
                        size=int(item.get("Size", 0)),
                        mtime=kept.get(item["Key"]) or item["LastModified"].timestamp(),
                        permissions=0o644,
                    ),
                )
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        if not seen_any and path != "/":
            kind = await self._kind(path, session)
            if kind is None:
                raise NoSuchFile()
            if kind[0] is FileType.FILE:
                raise NotADirectory()

    async def make_dir(self, path: str, session: Session) -> None:
        """Write a ``dir/.keep`` marker."""
        await self._require_parent(path, session)
        if await self._kind(path, session) is not None:
            raise FileAlreadyExists()
        client = await self.client()
        async with self._errors("PutObject"):
            key = self.dir_prefix(path, session) + KEEP
            await client.put_object(
                Bucket=self.bucket, Key=key, Body=b"", **self._new_object_args(key)
            )

    async def remove_dir(self, path: str, session: Session) -> None:
        """Delete an empty directory's marker; fail if anything else is below it."""
        kind = await self._kind(path, session)
        if kind is None:
            raise NoSuchFile()
        if kind[0] is FileType.FILE:
            raise NotADirectory()
        prefix = self.dir_prefix(path, session)
        below = await self._has_children(prefix, limit=3)
        if any(key not in (prefix + KEEP, prefix) for key in below):
            raise DirectoryNotEmpty()
        client = await self.client()
        async with self._errors("DeleteObjects"):
            await client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": prefix + KEEP}, {"Key": prefix}], "Quiet": True},
            )

    async def remove_file(self, path: str, session: Session) -> None:
        """Delete an object (after checking it exists: S3 deletes are silent)."""
        kind = await self._kind(path, session)
        if kind is None:
            raise NoSuchFile()
        if kind[0] is FileType.DIRECTORY:
            raise IsADirectory()
        client = await self.client()
        async with self._errors("DeleteObject"):
            await client.delete_object(Bucket=self.bucket, Key=self.key(path, session))

    async def rename(self, src: str, dst: str, session: Session, *, overwrite: bool) -> None:
        """Server-side copy then delete; directories move every key below them."""
        kind = await self._kind(src, session)
        if kind is None:
            raise NoSuchFile()
        if src == dst:
            return
        if dst.startswith(src + "/"):
            raise InvalidParameter("Cannot move a directory into itself")
        await self._require_parent(dst, session)
        target = await self._kind(dst, session)
        if target is not None:
            if not overwrite:
                raise FileAlreadyExists()
            if target[0] is FileType.DIRECTORY:
                raise IsADirectory() if kind[0] is FileType.FILE else DirectoryNotEmpty()
            if kind[0] is FileType.DIRECTORY:
                raise NotADirectory()
        if kind[0] is FileType.FILE:
            src_key = self.key(src, session)
            head = kind[1]
            await self._copy(src_key, self.key(dst, session), int(head["ContentLength"]), head)
            client = await self.client()
            async with self._errors("DeleteObject"):
                await client.delete_object(Bucket=self.bucket, Key=src_key)
            return
        await self._move_tree(self.dir_prefix(src, session), self.dir_prefix(dst, session))

    async def _move_tree(self, src_prefix: str, dst_prefix: str) -> None:
        client = await self.client()
        limit = asyncio.Semaphore(self.copy_concurrency)
        moved: list[str] = []

        async def copy_one(key: str, size: int) -> None:
            async with limit:
                await self._copy(key, dst_prefix + key[len(src_prefix) :], size)
            moved.append(key)

        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": src_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            async with self._errors("ListObjectsV2"):
                page = await client.list_objects_v2(**kwargs)
            items = page.get("Contents", [])
            await asyncio.gather(*(copy_one(i["Key"], int(i.get("Size", 0))) for i in items))
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        for start in range(0, len(moved), 1000):
            batch = [{"Key": key} for key in moved[start : start + 1000]]
            async with self._errors("DeleteObjects"):
                await client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
        with contextlib.suppress(StorageError):  # SeaweedFS keeps the emptied folder entry
            async with self._errors("DeleteObject"):
                await client.delete_object(Bucket=self.bucket, Key=src_prefix)

    async def _copy(
        self, src_key: str, dst_key: str, size: int, head: Mapping[str, Any] | None = None
    ) -> None:
        """Copy one object; ``head`` (its HeadObject) lets a rename update its content type."""
        client = await self.client()
        source = {"Bucket": self.bucket, "Key": src_key}
        if size <= MAX_COPY_PART:
            async with self._errors("CopyObject"):
                await client.copy_object(
                    Bucket=self.bucket, Key=dst_key, CopySource=source,
                    **self._copy_args(dst_key, head),
                )  # fmt: skip
            return
        if head is None:
            head = await self._head(src_key) or {}
        async with self._errors("CreateMultipartUpload"):
            upload = await client.create_multipart_upload(
                Bucket=self.bucket, Key=dst_key, **self._multipart_copy_args(dst_key, head)
            )
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, (start, end) in enumerate(_copy_ranges(size), 1):
                async with self._errors("UploadPartCopy"):
                    result = await client.upload_part_copy(
                        Bucket=self.bucket, Key=dst_key, UploadId=upload_id, PartNumber=number,
                        CopySource=source, CopySourceRange=f"bytes={start}-{end}",
                    )  # fmt: skip
                parts.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
            async with self._errors("CompleteMultipartUpload"):
                await client.complete_multipart_upload(
                    Bucket=self.bucket, Key=dst_key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):
                await client.abort_multipart_upload(
                    Bucket=self.bucket, Key=dst_key, UploadId=upload_id
                )
            raise

    async def read_file(self, path: str, session: Session) -> bytes:
        """A whole object."""
        client = await self.client()
        async with self._errors("GetObject"):
            response = await client.get_object(Bucket=self.bucket, Key=self.key(path, session))
            async with response["Body"] as body:
                data: bytes = await body.read()
        return data

    async def _require_upload_target(self, path: str, session: Session) -> None:
        """The parent must be a directory and ``path`` must not be one."""
        await self._require_parent(path, session)
        if await self._is_dir(path, session):
            raise IsADirectory()

    async def write_file(self, path: str, data: bytes, session: Session) -> None:
        """One PutObject."""
        await self._require_upload_target(path, session)
        client = await self.client()
        async with self._errors("PutObject"):
            key = self.key(path, session)
            await client.put_object(
                Bucket=self.bucket, Key=key, Body=data, **self._new_object_args(key)
            )

    async def _is_dir(self, path: str, session: Session) -> bool:
        return path == "/" or bool(await self._has_children(self.dir_prefix(path, session)))

    # ------------------------------------------------------------------ optional

    async def read_range(self, path: str, offset: int, length: int, session: Session) -> bytes:
        """One ranged GET; ``b""`` past the end (416)."""
        return await self._get_range(self.key(path, session), offset, length)

    async def _get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return bytes(await self._get_chunk(key, offset, length, None, None))

    async def _get_chunk(
        self, key: str, offset: int, length: int, etag: str | None, spare: bytearray | None
    ) -> bytearray:
        """A ranged GET of the version ``etag``, read straight into one buffer (``spare``)."""
        client = await self.client()
        pinned = {"IfMatch": etag} if etag else {}
        for attempt in range(1, BODY_ATTEMPTS + 1):
            try:
                async with self._errors("GetObject"):
                    response = await client.get_object(
                        Bucket=self.bucket, Key=key,
                        Range=f"bytes={offset}-{offset + length - 1}", **pinned,
                    )  # fmt: skip
                    async with response["Body"] as body:
                        size = int(response.get("ContentLength", length))
                        return await _read_body(body, size, spare)
            except InvalidParameter:
                return bytearray()  # 416: the object got shorter
            except _Truncated:
                if attempt == BODY_ATTEMPTS:
                    raise
                log.warning("S3 GetObject of %s broke off (attempt %d of %d); trying again",
                            key, attempt, BODY_ATTEMPTS)  # fmt: skip
        raise AssertionError("unreachable")  # pragma: no cover

    async def open_reader(self, path: str, session: Session) -> S3Reader:
        """A reader with read-ahead for one open file."""
        key = self.key(path, session)
        head = await self._head(key)
        if head is None:
            raise NoSuchFile()
        return S3Reader(self, key, int(head.get("ContentLength", 0)), head.get("ETag"))

    async def open_writer(
        self, path: str, session: Session, *, keep_existing: bool, exclusive: bool = False
    ) -> S3Writer:
        """Start an upload that becomes visible at commit (exclusive: only if still new)."""
        await self._require_upload_target(path, session)
        key = self.key(path, session)
        existing = 0
        if keep_existing:
            head = await self._head(key)
            existing = int(head.get("ContentLength", 0)) if head else 0
        writer = S3Writer(self, key, exclusive=exclusive, session=session)
        if existing:
            await writer.start_from_existing(existing)
        return writer

    async def read_digests(self, path: str, session: Session) -> Mapping[str, str] | None:
        """Digests kept in the object's metadata (``x-amz-meta-sftpd-md5``, ...)."""
        head = await self._head(self.key(path, session))
        return digests_from_metadata(head.get("Metadata") if head else None)

    async def store_digests(self, path: str, digests: Mapping[str, str], session: Session) -> None:
        """Put digests into the object's metadata: a CopyObject of the object onto itself
        (inside the storage, no byte through sftpd; objects over 5 GiB are left alone)."""
        with contextlib.suppress(NoSuchFile):
            await self._rewrite_metadata(self.key(path, session), digest_metadata(digests),
                                         replacing=_is_digest_key)  # fmt: skip

    async def _rewrite_metadata(
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
        head = await self._head(key)
        if head is None:
            raise NoSuchFile()
        if int(head.get("ContentLength", 0)) > MAX_COPY_PART:
            return False
        kept = {k: v for k, v in (head.get("Metadata") or {}).items() if not replacing(k)}
        await self._replace_metadata(key, head, {**kept, **metadata})
        return True

    async def _replace_metadata(
        self, key: str, head: Mapping[str, Any], metadata: Mapping[str, str]
    ) -> None:
        client = await self.client()
        args = {k: v for k, v in self.object_args.items() if k in COPY_ARGS}
        args.update(
            {name: head[name] for name in (*_KEPT_HEADERS, "ContentType") if head.get(name)}
        )
        async with self._errors("CopyObject"):
            await client.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE", Metadata=dict(metadata), **args,
            )  # fmt: skip

    async def set_attrs(self, path: str, changes: AttrChanges, session: Session) -> None:
        """Keep a new mtime in the metadata (``setstat="keep"``), or accept and ignore (or
        refuse) times and modes; objects cannot be resized."""
        attrs = await self.stat(path, session)
        if changes.size is not None and changes.size != attrs.size:
            raise Unsupported("Objects cannot be resized")
        if self.setstat == "refuse" and (
            changes.mtime is not None or changes.permissions is not None
        ):
            raise Unsupported("Objects keep no times or permissions")
        if self.setstat == "keep" and changes.mtime is not None and attrs.is_file:
            key = self.key(path, session)
            if not await self._rewrite_metadata(key, {MTIME: f"{changes.mtime:.9f}"}):
                log.info("not keeping the mtime of %s: objects over 5 GiB", key)


class S3Reader:
    """Sequential downloads with a bounded read-ahead window of ranged GETs.

    Every GET asks for the version (ETag) the file had when it was opened, so a file
    replaced during a download fails the download instead of mixing two versions.
    """

    def __init__(self, backend: S3Backend, key: str, size: int, etag: str | None) -> None:
        self._backend = backend
        self._key = key
        self._etag = etag
        self.size = size
        self._chunk = backend.read_chunk
        self._chunks: dict[int, asyncio.Task[bytearray]] = {}
        self._spare: list[bytearray] = []  # buffers of chunks done with, to fill again
        self._in_use: dict[int, int] = {}  # chunk -> reads in progress that need it

    def _fetch(self, index: int) -> asyncio.Task[bytearray]:
        task = self._chunks.get(index)
        if task is None:
            start = index * self._chunk
            spare = self._spare.pop() if self._spare else None
            task = asyncio.get_running_loop().create_task(
                self._backend._get_chunk(
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
        for index in range(first, min(last_chunk, last + self._backend.read_ahead) + 1):
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
        backend: S3Backend,
        key: str,
        *,
        exclusive: bool = False,
        session: Session | None = None,
    ) -> None:
        self._backend = backend
        self._key = key
        self._session = session  # to name the source of a copy-data
        # copy-data of a whole object into this empty upload: (source key, size, head),
        # done with CopyObject at commit unless a write comes first.
        self._copy: tuple[str, int, Mapping[str, Any]] | None = None
        self._object_args = backend._new_object_args(key)
        # Exclusive creates commit with If-None-Match: *, so S3 itself refuses the commit
        # if another upload stored the key since the open.
        self._condition = {"IfNoneMatch": "*"} if exclusive else {}
        self._upload_id: str | None = None
        self._parts: dict[int, str] = {}
        self._next_part = 1
        self._buffer = _PartBuffer()
        self._buffer_start = 0  # file offset of the buffer's first byte
        self._limit = asyncio.Semaphore(backend.upload_concurrency)
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

    async def _client(self) -> Any:
        return await self._backend.client()

    async def _start_multipart(self) -> str:
        if self._upload_id is None:
            client = await self._client()
            async with self._backend._errors("CreateMultipartUpload"):
                result = await client.create_multipart_upload(
                    Bucket=self._backend.bucket, Key=self._key,
                    **self._object_args,
                )  # fmt: skip
            self._upload_id = str(result["UploadId"])
        return self._upload_id

    async def start_from_existing(self, size: int, source_key: str | None = None) -> None:
        """Begin with the stored object: copied as parts if large, in memory if small."""
        source_key = self._key if source_key is None else source_key
        if size < MIN_PART_SIZE:
            data = await self._backend._get_range(source_key, 0, size)
            if self._memory.try_take(len(data)):
                self._held = len(data)
                self._buffer = _PartBuffer(data)
            else:  # no memory to spare: start on disk
                self._spill = tempfile.TemporaryFile()  # noqa: SIM115
                self._spill.write(data)
                self._spill_size = len(data)
            return
        upload_id = await self._start_multipart()
        client = await self._client()
        source = {"Bucket": self._backend.bucket, "Key": source_key}
        for start, end in _copy_ranges(size):
            number = self._next_part
            self._next_part += 1
            async with self._backend._errors("UploadPartCopy"):
                result = await client.upload_part_copy(
                    Bucket=self._backend.bucket, Key=self._key, UploadId=upload_id,
                    PartNumber=number, CopySource=source, CopySourceRange=f"bytes={start}-{end}",
                )  # fmt: skip
            self._parts[number] = result["CopyPartResult"]["ETag"]
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
        if self._session is None:
            raise Unsupported("No session to name the source with")
        source = self._backend.key(path, self._session)
        head = await self._backend._head(source)
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
            if offset - self._end > self._backend.part_size:
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
        part = self._backend.part_size
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
        want = max(end, self._backend.part_size)
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
                client = await self._client()
                async with self._backend._errors("UploadPart"):
                    result = await client.upload_part(
                        Bucket=self._backend.bucket, Key=self._key, UploadId=upload_id,
                        PartNumber=number, Body=data,
                    )  # fmt: skip
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
        client = await self._client()
        bucket = self._backend.bucket
        try:
            if self._copy is not None:
                source, size, head = self._copy
                await self._backend._copy(source, self._key, size, head)
            elif self._spill is not None:
                await self._commit_spill()
            elif self._upload_id is None:
                async with self._backend._errors("PutObject"):
                    await client.put_object(
                        Bucket=bucket, Key=self._key, Body=self._buffer.body(),
                        **self._put_args(), **self._condition,
                    )  # fmt: skip
                self._release()
            else:
                if len(self._buffer) or self._next_part == 1:
                    held, self._held = self._held, 0
                    await self._send_part(self._buffer.body(), held=held)
                    self._buffer = _PartBuffer()
                await self._drain()
                parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
                async with self._backend._errors("CompleteMultipartUpload"):
                    await client.complete_multipart_upload(
                        Bucket=bucket, Key=self._key, UploadId=self._upload_id,
                        MultipartUpload={"Parts": parts}, **self._condition,
                    )  # fmt: skip
                self._upload_id = None
                if self.digests:
                    await self._keep_digests()
        except BaseException:
            await self.abort()
            raise
        self._done = True

    def _put_args(self) -> dict[str, Any]:
        """The new object's arguments, its digests among its metadata."""
        if not self.digests:
            return self._object_args
        args = dict(self._object_args)
        args["Metadata"] = {**args.get("Metadata", {}), **digest_metadata(self.digests)}
        return args

    async def _keep_digests(self) -> None:
        """A completed multipart upload gets its digests by a copy onto itself; if that
        fails the object stays as stored, and digests are computed when asked for."""
        assert self.digests is not None
        try:
            await self._backend._rewrite_metadata(self._key, digest_metadata(self.digests))
        except NoSuchFile:
            pass  # replaced or removed since: nothing to keep them on
        except Exception:
            log.warning("keeping the digests of %s failed", self._key, exc_info=True)

    async def _commit_spill(self) -> None:
        spill, size = self._spill, self._spill_size
        self._spill = None
        try:
            spill.seek(0)
            if size < self._backend.part_size:
                client = await self._client()
                async with self._backend._errors("PutObject"):
                    await client.put_object(
                        Bucket=self._backend.bucket, Key=self._key, Body=spill.read(size),
                        **self._put_args(), **self._condition,
                    )  # fmt: skip
                return
            self._buffer = _PartBuffer()
            self._buffer_start = 0
            self._must_stream = True
            while chunk := spill.read(self._backend.part_size):
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
                client = await self._client()
                await client.abort_multipart_upload(
                    Bucket=self._backend.bucket, Key=self._key, UploadId=upload_id
                )
            except Exception:
                log.warning("aborting multipart upload %s of %s failed; a bucket lifecycle rule "
                            "for incomplete uploads will clean it", upload_id, self._key,
                            exc_info=True)  # fmt: skip
