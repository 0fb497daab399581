"""The file-system semantics over keys: :class:`S3Backend` (see :mod:`sftpd.backends.s3`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ... import paths
from ..._session import Session
from ...backend import AttrChanges, DirEntry, FileAttrs, FileType
from ...errors import (
    ConfigError,
    DirectoryNotEmpty,
    FileAlreadyExists,
    InvalidParameter,
    IsADirectory,
    NoSuchFile,
    NotADirectory,
    PermissionDenied,
    Unsupported,
)
from .bucket import Bucket
from .objects import (
    KEEP,
    MIN_PART_SIZE,
    MTIME,
    ObjectArgs,
    SessionPrefix,
    check_object_args,
    digest_metadata,
    digests_from_metadata,
    is_digest_key,
)
from .reader import S3Reader
from .writer import S3Writer

__all__ = ["S3Backend"]

log = logging.getLogger("sftpd.s3")


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
        self.object_args = check_object_args(object_args or {})
        self.content_types = content_types
        self.stale_uploads_after = stale_uploads_after
        self.cleanup_every = cleanup_every
        self._janitor: asyncio.Task[None] | None = None
        #: The bucket's requests; everything that speaks S3 goes through it.
        self.store = Bucket(
            bucket, client=client, client_factory=client_factory, endpoint_url=endpoint_url,
            region_name=region_name, max_attempts=max_attempts,
            pool_size=max(16, upload_concurrency * 4),
            object_args=ObjectArgs(self.object_args, content_types),
            copy_concurrency=copy_concurrency,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"S3Backend(bucket={self.bucket!r}, prefix={self.prefix!r})"

    # ------------------------------------------------------------------ plumbing

    async def client(self) -> Any:
        """The S3 client, created on first use (``startup()`` does it at server start)."""
        return await self.store.client()

    async def startup(self) -> None:
        """Create the client and check that the bucket exists and these credentials reach it.

        Raises:
            ConfigError: with what to fix (credentials, endpoint, bucket name or policy).
        """
        await self.store.check()
        if self.stale_uploads_after is not None and isinstance(self.prefix, str):
            self._janitor = asyncio.get_running_loop().create_task(self._clean_periodically())

    async def shutdown(self) -> None:
        """Stop the janitor; close a client this backend created (a server calls this when
        it stops).
        """
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
        aborted = await self.store.abort_stale_uploads(self.prefix, age)
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
        await self.store.aclose()

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

    async def _kind(self, path: str, session: Session) -> tuple[FileType, dict[str, Any]] | None:
        if path == "/":
            return FileType.DIRECTORY, {}
        head = await self.store.head(self.key(path, session))
        if head is not None:
            return FileType.FILE, head
        if await self.store.keys_below(self.dir_prefix(path, session)):
            return FileType.DIRECTORY, {}
        return None

    async def _existing(self, path: str, session: Session) -> tuple[FileType, dict[str, Any]]:
        """What ``path`` is (and its HeadObject for a file); NoSuchFile if nothing."""
        kind = await self._kind(path, session)
        if kind is None:
            raise NoSuchFile()
        return kind

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
        kind = await self._existing(path, session)
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
                head = await self.store.head(key)
            return key, self._kept_mtime(head.get("Metadata") if head else None)

        found = await asyncio.gather(*(one(item["Key"]) for item in items
                                       if item["Key"] != prefix + KEEP))  # fmt: skip
        return {key: mtime for key, mtime in found if mtime is not None}

    async def list_dir(self, path: str, session: Session) -> AsyncIterator[DirEntry]:
        """Stream a directory, one ListObjectsV2 page at a time."""
        prefix = self.dir_prefix(path, session)
        seen_any = False
        async for page in self.store.pages(prefix, delimiter="/"):
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
        if not seen_any and path != "/":
            kind = await self._existing(path, session)
            if kind[0] is FileType.FILE:
                raise NotADirectory()

    async def make_dir(self, path: str, session: Session) -> None:
        """Write a ``dir/.keep`` marker."""
        await self._require_parent(path, session)
        if await self._kind(path, session) is not None:
            raise FileAlreadyExists()
        await self.store.put(self.dir_prefix(path, session) + KEEP, b"")

    async def remove_dir(self, path: str, session: Session) -> None:
        """Delete an empty directory's marker; fail if anything else is below it."""
        kind = await self._existing(path, session)
        if kind[0] is FileType.FILE:
            raise NotADirectory()
        prefix = self.dir_prefix(path, session)
        below = await self.store.keys_below(prefix, limit=3)
        if any(key not in (prefix + KEEP, prefix) for key in below):
            raise DirectoryNotEmpty()
        await self.store.delete(prefix + KEEP, prefix)

    async def remove_file(self, path: str, session: Session) -> None:
        """Delete an object (after checking it exists: S3 deletes are silent)."""
        kind = await self._existing(path, session)
        if kind[0] is FileType.DIRECTORY:
            raise IsADirectory()
        await self.store.delete(self.key(path, session))

    async def rename(self, src: str, dst: str, session: Session, *, overwrite: bool) -> None:
        """Server-side copy then delete; directories move every key below them."""
        kind = await self._existing(src, session)
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
            await self.store.copy(src_key, self.key(dst, session), int(head["ContentLength"]), head)
            await self.store.delete(src_key)
            return
        await self.store.move_tree(self.dir_prefix(src, session), self.dir_prefix(dst, session))

    async def read_file(self, path: str, session: Session) -> bytes:
        """A whole object."""
        return await self.store.read_object(self.key(path, session))

    async def _require_upload_target(self, path: str, session: Session) -> None:
        """The parent must be a directory and ``path`` must not be one."""
        await self._require_parent(path, session)
        if await self._is_dir(path, session):
            raise IsADirectory()

    async def write_file(self, path: str, data: bytes, session: Session) -> None:
        """One PutObject."""
        await self._require_upload_target(path, session)
        await self.store.put(self.key(path, session), data)

    async def _is_dir(self, path: str, session: Session) -> bool:
        return path == "/" or bool(await self.store.keys_below(self.dir_prefix(path, session)))

    # ------------------------------------------------------------------ optional

    async def read_range(self, path: str, offset: int, length: int, session: Session) -> bytes:
        """One ranged GET; ``b""`` past the end (416)."""
        return await self.store.get_range(self.key(path, session), offset, length)

    async def open_reader(self, path: str, session: Session) -> S3Reader:
        """A reader with read-ahead for one open file."""
        key = self.key(path, session)
        head = await self.store.head(key)
        if head is None:
            raise NoSuchFile()
        return S3Reader(self.store, key, int(head.get("ContentLength", 0)), head.get("ETag"),
                        chunk=self.read_chunk, ahead=self.read_ahead)  # fmt: skip

    async def open_writer(
        self, path: str, session: Session, *, keep_existing: bool, exclusive: bool = False
    ) -> S3Writer:
        """Start an upload that becomes visible at commit (exclusive: only if still new)."""
        await self._require_upload_target(path, session)
        key = self.key(path, session)
        existing = 0
        if keep_existing:
            head = await self.store.head(key)
            existing = int(head.get("ContentLength", 0)) if head else 0
        writer = S3Writer(
            self.store, key, part_size=self.part_size, concurrency=self.upload_concurrency,
            key_of=lambda source: self.key(source, session), exclusive=exclusive,
            session=session,
        )  # fmt: skip
        if existing:
            await writer.start_from_existing(existing)
        return writer

    async def read_digests(self, path: str, session: Session) -> Mapping[str, str] | None:
        """Digests kept in the object's metadata (``x-amz-meta-sftpd-md5``, ...)."""
        head = await self.store.head(self.key(path, session))
        return digests_from_metadata(head.get("Metadata") if head else None)

    async def store_digests(self, path: str, digests: Mapping[str, str], session: Session) -> None:
        """Put digests into the object's metadata: a CopyObject of the object onto itself
        (inside the storage, no byte through sftpd; objects over 5 GiB are left alone).
        """
        with contextlib.suppress(NoSuchFile):
            await self.store.rewrite_metadata(self.key(path, session), digest_metadata(digests),
                                              replacing=is_digest_key)  # fmt: skip

    async def set_attrs(self, path: str, changes: AttrChanges, session: Session) -> None:
        """Keep a new mtime in the metadata (``setstat="keep"``), or accept and ignore (or
        refuse) times and modes; objects cannot be resized.
        """
        attrs = await self.stat(path, session)
        if changes.size is not None and changes.size != attrs.size:
            raise Unsupported("Objects cannot be resized")
        if self.setstat == "refuse" and (
            changes.mtime is not None or changes.permissions is not None
        ):
            raise Unsupported("Objects keep no times or permissions")
        if self.setstat == "keep" and changes.mtime is not None and attrs.is_file:
            key = self.key(path, session)
            if not await self.store.rewrite_metadata(key, {MTIME: f"{changes.mtime:.9f}"}):
                log.info("not keeping the mtime of %s: objects over 5 GiB", key)
