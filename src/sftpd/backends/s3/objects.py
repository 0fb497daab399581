"""What goes with each object: keys, metadata, digests, content types, copy arguments."""

from __future__ import annotations

import base64
import itertools
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError

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


def is_digest_key(name: str) -> bool:
    """Whether an object metadata key holds a digest sftpd keeps."""
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
KEPT_HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage")
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


def check_object_args(args: Mapping[str, Any]) -> dict[str, Any]:
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


def copy_ranges(size: int) -> list[tuple[int, int]]:
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


@dataclass(frozen=True, slots=True)
class ObjectArgs:
    """The arguments each request that writes an object carries.

    Attributes:
        args: The checked ``object_args`` (encryption, storage class, ACL, metadata, tags).
        content_types: Set Content-Type from the file name.
    """

    args: Mapping[str, Any]
    content_types: bool = True

    def new(self, key: str) -> dict[str, Any]:
        """Arguments of a new object at ``key``: ``object_args`` and its content type."""
        args = dict(self.args)
        if self.content_types and (kind := content_type(key)):
            args["ContentType"] = kind
        return args

    def copy(self, dst_key: str, head: Mapping[str, Any] | None) -> dict[str, Any]:
        """Arguments of a CopyObject to ``dst_key`` from the object described by ``head``.

        S3 copies metadata, tags and Content-Type from the source; when the new name
        calls for another content type, the metadata is replaced, repeating the source's.
        """
        args = {key: value for key, value in self.args.items() if key in COPY_ARGS}
        kind = content_type(dst_key) if self.content_types else None
        if head is not None and kind is not None and kind != head.get("ContentType"):
            args.update(MetadataDirective="REPLACE", ContentType=kind,
                        Metadata=dict(head.get("Metadata") or {}))  # fmt: skip
            args.update({name: head[name] for name in KEPT_HEADERS if head.get(name)})
        return args

    def multipart_copy(self, dst_key: str, head: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments of the CreateMultipartUpload of a copy: parts copy data only."""
        args = self.new(dst_key)
        if head.get("Metadata"):
            args["Metadata"] = dict(head["Metadata"])
        if "ContentType" not in args and head.get("ContentType"):
            args["ContentType"] = head["ContentType"]
        args.update({name: head[name] for name in KEPT_HEADERS if head.get(name)})
        return args

    def same_object(self, head: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments of a CopyObject of an object onto itself that replaces its metadata."""
        args = {k: v for k, v in self.args.items() if k in COPY_ARGS}
        args.update({name: head[name] for name in (*KEPT_HEADERS, "ContentType") if head.get(name)})
        return args
