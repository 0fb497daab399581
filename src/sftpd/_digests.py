"""File digests: the check-file extension and rclone's hash commands, without a shell.

``check-file-name`` / ``check-file-handle`` (draft-ietf-secsh-filexfer-extensions, and
paramiko's ``check-file``) hash a range of a file, whole or in blocks, with the first
algorithm of the client's list the server knows. rclone's sftp backend asks for MD5 and
SHA-1 by running ``md5sum``/``sha1sum`` over SSH exec; with ``hash_commands`` on, sftpd
answers exactly those commands (and rclone's shell probe) itself, never starting a
process. Either way the file is read in chunks of :data:`CHUNK`, so memory stays bounded
whatever its size.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from .errors import InvalidParameter, Unsupported

__all__ = ["ALGORITHMS", "DigestTap", "HashCommand", "hash_range", "parse_hash_command"]


class Hasher(Protocol):
    """A running digest (what ``hashlib.md5()`` returns)."""

    @property
    def digest_size(self) -> int: ...
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


ALGORITHMS: dict[str, Callable[[], Hasher]] = {
    "md5": hashlib.md5,
    "sha1": hashlib.sha1,
    "sha224": hashlib.sha224,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
CHUNK = 1 << 20
"""Bytes read at a time while hashing."""
MAX_DIGEST_BYTES = 200 << 10
"""The most digest bytes one check-file reply carries (it must fit in a packet)."""


def choose_algorithm(names: bytes) -> str:
    """The first of the client's comma-separated algorithms the server knows.

    Raises:
        Unsupported: none of them.
    """
    for name in names.decode("ascii", "replace").split(","):
        if name.strip().lower() in ALGORITHMS:
            return name.strip().lower()
    raise Unsupported(f"No known hash algorithm; supported: {', '.join(ALGORITHMS)}")


async def hash_range(
    read: Callable[[int, int], Awaitable[bytes]],
    algorithm: str,
    offset: int,
    length: int,
    block_size: int,
) -> bytes:
    """Digests of ``length`` bytes from ``offset`` (0: to the end), one per ``block_size``
    bytes (0: one for the whole range), concatenated, reading ``CHUNK`` bytes at a time.

    Raises:
        InvalidParameter: a block size below 256 (the draft's minimum), or more blocks
            than one reply can carry.
    """
    if block_size and block_size < 256:
        raise InvalidParameter("Block size must be 0 or at least 256")
    new = ALGORITHMS[algorithm]
    size = new().digest_size
    end = offset + length if length else None
    if block_size and end is not None and (length // block_size + 1) * size > MAX_DIGEST_BYTES:
        raise InvalidParameter("Too many blocks for one reply; ask for a larger block size")
    digests: list[bytes] = []
    current = new()
    in_block = 0
    position = offset
    while end is None or position < end:
        want = CHUNK if end is None else min(CHUNK, end - position)
        if block_size:
            want = min(want, block_size - in_block)
        data = await read(position, want)
        if not data:
            break
        current.update(data)
        position += len(data)
        in_block += len(data)
        if block_size and in_block == block_size:
            digests.append(current.digest())
            if len(digests) * size > MAX_DIGEST_BYTES:
                raise InvalidParameter("Too many blocks for one reply; ask for a larger block size")
            current, in_block = new(), 0
    if not block_size or in_block or not digests:
        digests.append(current.digest())
    return b"".join(digests)


REORDER_LIMIT = 8 << 20
"""Bytes of early writes an upload's digests wait with for the gap before them."""
INLINE_HASH = 64 << 10
"""Writes up to this size are hashed on the event loop when nothing is queued."""
QUEUE_LIMIT = 16 << 20
"""Bytes an upload's hashing may lag behind the client before the client waits."""
_HASHING = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sftpd-digests")
_WAITING = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sftpd-digests-wait")


class DigestTap:
    """Digests of an upload computed as its bytes arrive: no second read.

    Writes in file order update the hashes at once; a few early ones wait for the gap
    before them. An upload that keeps stored bytes (append, resume), rewrites, skips far
    ahead or is resized gets no digests here: they are computed when first asked for.
    """

    def __init__(self, algorithms: Sequence[str], *, whole: bool) -> None:
        self._hashes = {name: ALGORITHMS[name]() for name in algorithms}
        self._next = 0
        self._early: dict[int, bytes] = {}
        self._early_bytes = 0
        self.broken = not whole
        # Hashing runs in a worker thread, in order (hashlib lets go of the GIL), so the
        # event loop goes on decrypting and answering while the digests catch up.
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._running = False
        self._idle = threading.Event()
        self._idle.set()

    def write(self, offset: int, data: bytes) -> None:
        if self.broken:
            return
        if offset == self._next:
            self._update(data)
            while self._next in self._early:
                piece = self._early.pop(self._next)
                self._early_bytes -= len(piece)
                self._update(piece)
        elif offset > self._next and self._early_bytes + len(data) <= REORDER_LIMIT:
            self._early[offset] = bytes(data)
            self._early_bytes += len(data)
        else:
            self.broken = True
            self._early.clear()

    def _update(self, data: bytes) -> None:
        self._next += len(data)
        with self._lock:
            if not self._running and len(data) <= INLINE_HASH:
                # Small and nothing queued: hashing here costs less than a thread hop
                # (a small file's only write, and its close, then need no thread).
                for digest in self._hashes.values():
                    digest.update(data)
                return
            self._queue.append(data)
            self._queued += len(data)
            if self._running:
                return
            self._running = True
            self._idle.clear()
        _HASHING.submit(self._drain)

    def _drain(self) -> None:  # in a worker thread
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    self._idle.set()
                    return
                data = self._queue.popleft()
            for digest in self._hashes.values():
                digest.update(data)
            with self._lock:
                self._queued -= len(data)

    @property
    def behind(self) -> bool:
        """True when hashing lags the client by more than :data:`QUEUE_LIMIT` bytes."""
        return self._queued > QUEUE_LIMIT

    async def settle(self) -> None:
        """Wait until every byte given so far is hashed."""
        if not self._idle.is_set():
            await asyncio.get_running_loop().run_in_executor(_WAITING, self._idle.wait)

    def result(self, size: int) -> dict[str, str] | None:
        """Hex digests of a stored file of ``size`` bytes, or None if not all were seen.
        Call :meth:`settle` first.
        """
        if self.broken or self._early or self._next != size or not self._idle.is_set():
            return None
        return {name: digest.hexdigest() for name, digest in self._hashes.items()}


def check_algorithms(names: Sequence[str]) -> tuple[str, ...]:
    """The configured ``upload_digests``, checked."""
    unknown = [n for n in names if n not in ALGORITHMS]
    if isinstance(names, str) or unknown:
        raise ValueError(f"upload_digests: choose from {', '.join(ALGORITHMS)}; got {names!r}")
    return tuple(names)


@dataclass(frozen=True, slots=True)
class HashCommand:
    """One exec command rclone sends, understood.

    Attributes:
        kind: ``"probe"`` (the shell-type probe), ``"empty"`` (``md5sum`` of nothing,
            rclone's check that the command works) or ``"file"``.
        algorithm: ``"md5"`` or ``"sha1"`` (for ``empty`` and ``file``).
        path: The file, as the client named it (for ``file``).
    """

    kind: str
    algorithm: str = ""
    path: bytes = b""


SHELL_PROBE = "echo ${ShellId}%ComSpec%"
_COMMAND = re.compile(r"(md5sum|sha1sum)(?: (.+))?", re.DOTALL)
_SAFE = re.compile(r"[A-Za-z0-9_.,:/@\x80-\U0010ffff-]")


def parse_hash_command(command: str) -> HashCommand | None:
    r"""rclone's probe, ``md5sum``/``sha1sum``, or one of them with one path escaped as
    rclone escapes it for a Unix shell (a backslash before each special character, a
    newline as ``'\n'``); None for anything else, which is then refused.
    """
    if command == SHELL_PROBE:
        return HashCommand("probe")
    match = _COMMAND.fullmatch(command)
    if match is None:
        return None
    algorithm = "md5" if match.group(1) == "md5sum" else "sha1"
    if match.group(2) is None:
        return HashCommand("empty", algorithm)
    path = _unescape(match.group(2))
    return None if path is None else HashCommand("file", algorithm, path.encode("utf-8"))


def _unescape(text: str) -> str | None:
    """One argument as rclone escapes it; None if it is not exactly one such argument."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if text.startswith("'\n'", i):
            out.append("\n")
            i += 3
        elif char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif _SAFE.fullmatch(char):
            out.append(char)
            i += 1
        else:
            return None  # an unescaped space, quote, $, ; ...: not a command of rclone's
    return "".join(out) if out else None
