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

The package's rooms: :mod:`.bucket` (the client, requests, errors, paging, copies),
:mod:`.files` (:class:`S3Backend`: directories, renames and the rest of the file-system
semantics over keys), :mod:`.writer` (uploads), :mod:`.reader` (downloads) and
:mod:`.objects` (what goes with each object).
"""

from .bucket import BODY_ATTEMPTS, CHECKSUM_SETTINGS, Bucket
from .files import S3Backend
from .objects import OBJECT_ARGS, SessionPrefix, content_type
from .reader import S3Reader
from .writer import S3Writer

__all__ = [
    "BODY_ATTEMPTS",
    "CHECKSUM_SETTINGS",
    "OBJECT_ARGS",
    "Bucket",
    "S3Backend",
    "S3Reader",
    "S3Writer",
    "SessionPrefix",
    "content_type",
]
