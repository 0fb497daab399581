"""One SFTP session, fed by bytes from any transport.

The engine frames packets, negotiates the version (v3 only, as OpenSSH), decodes each
request in one place (:data:`_TABLE`, one row per packet type and per extension) and
hands it to a :class:`Handler` (:class:`~sftpd._requests.Requests`); replies go out as
they complete.

**Concurrency and ordering.** Requests run concurrently, up to ``concurrency`` per channel
and the connection's :class:`ConnectionBudget` in all. Before it starts, each request
waits for the earlier requests it conflicts with, so that whatever a client could observe
of a sequential server still holds:

- path operations keep their arrival order among themselves: one that changes the
  namespace (open for writing, close of an upload, mkdir, remove, rename, setstat, links)
  waits for every earlier path operation and every later one waits for it; those that
  only look (stat, realpath, opendir, open for reading) run alongside each other;
- on one handle, reads run together; a write waits for earlier reads and writes that
  overlap its range (and for every earlier write where the writer is not safe for
  concurrent writes, or the file is opened for appending); fstat, fsetstat, readdir and
  close wait for everything earlier on that handle, and everything later waits for them;
- stat and lstat wait for writes already in flight on the channel, so they report the
  size a sequential server would.

Backend authors: requests on *different* handles and paths reach a backend at the same
time, and so may reads of one handle. Writes of one handle reach a
:class:`~sftpd.backend.Writer` one at a time unless it sets ``concurrent_writes = True``
(then only non-overlapping writes run together).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine

from ..errors import SftpStatus, to_sftp_error
from . import codec
from .codec import BadMessage, OutOfRange, Parser
from .handler import HandleInfo, Handler, Transport

__all__ = ["ConnectionBudget", "HandleInfo", "Handler", "SftpEngine", "Transport"]

log = logging.getLogger("sftpd")

#: The largest packet a client may send. OpenSSH's sftp-server takes 256 KiB; clients that
#: ignore ``limits@openssh.com`` may send more, so four times that is accepted.
MAX_PACKET = (1 << 20) + 1024
#: What ``limits@openssh.com`` announces, as OpenSSH's sftp-server does.
LIMIT_PACKET = 256 << 10
LIMIT_READ = LIMIT_PACKET - 1024
LIMIT_WRITE = LIMIT_PACKET - 1024
#: Reply bytes the client has not taken yet, per connection, above which reads wait.
REPLY_BACKLOG = 4 << 20

_FULL = (0, 1 << 64)
_SHARED, _WRITE, _EXCLUSIVE = 0, 1, 2
_NS = ("ns",)
_DATA = ("data",)

ClaimKey = tuple[str, ...] | tuple[str, bytes]  # the namespace, the data, or one handle
Claim = tuple[ClaimKey, int, int, int]  # key, start, end, mode
Work = Coroutine[None, None, bytes]
_Entry = tuple[int, int, int, "asyncio.Future[None]"]  # start, end, mode, done
_Row = Callable[["SftpEngine", int, Parser], tuple[list[Claim], Work]]


class ConnectionBudget:
    """What all SFTP channels of one connection share: requests and reply bytes in flight."""

    def __init__(self, max_requests: int, reply_backlog: int = REPLY_BACKLOG) -> None:
        self.max_requests = max_requests
        self.reply_backlog = reply_backlog
        self.requests = 0
        self.reserved = 0
        self.engines: set[SftpEngine] = set()

    def backlog(self) -> int:
        """Reply bytes waiting for the client, on every channel, and reads reserved."""
        return self.reserved + sum(e.transport.backlog() for e in self.engines)

    def released(self) -> None:
        """A request ended somewhere: let engines that waited for room read on."""
        for engine in list(self.engines):
            if engine.stalled:
                engine.pump()


def _conflicts(a: int, b: int) -> bool:
    return a == _EXCLUSIVE or b == _EXCLUSIVE or a != b


class SftpEngine:
    """Serve one SFTP session on ``transport`` from ``requests``."""

    def __init__(
        self,
        requests: Handler,
        transport: Transport,
        budget: ConnectionBudget,
        *,
        concurrency: int = 64,
    ) -> None:
        self.requests = requests
        self.transport = transport
        self.budget = budget
        self.concurrency = concurrency
        self.version = 0
        self.stalled = False
        self._buffer = bytearray()
        self._running = 0
        self._pending: dict[ClaimKey, list[_Entry]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        budget.engines.add(self)

    # ------------------------------------------------------------------ input

    @property
    def in_flight(self) -> int:
        """Requests started and not answered yet."""
        return self._running

    def data_received(self, data: bytes) -> None:
        """Take bytes from the client; serve every whole packet they complete."""
        if self._closed:
            return
        self._buffer += data
        self.pump()

    def pump(self) -> None:
        """Start the buffered requests there is room for; pause the client when full."""
        buffer = self._buffer
        budget = self.budget
        while len(buffer) >= 4 and not self._closed:
            if self._running >= self.concurrency or budget.requests >= budget.max_requests:
                if not self.stalled:
                    self.stalled = True
                    self.transport.pause_reading()
                return
            length = int.from_bytes(buffer[:4], "big")
            if length == 0 or length > MAX_PACKET:
                self._fatal(f"packet of {length} bytes refused")
                return
            if len(buffer) < 4 + length:
                break
            packet = bytes(buffer[4 : 4 + length])
            del buffer[: 4 + length]
            self._packet(packet)
        if self.stalled:
            self.stalled = False
            self.transport.resume_reading()

    def _fatal(self, why: str) -> None:
        log.warning("ending SFTP session of %s: %s", self.requests.session.username, why)
        self._closed = True
        self._buffer.clear()
        self.transport.close()

    def _packet(self, packet: bytes) -> None:
        kind = packet[0]
        if self.version == 0:
            if kind != codec.FXP_INIT or len(packet) < 5:
                self._fatal("the first packet was not INIT")
                return
            self._init(int.from_bytes(packet[1:5], "big"))
            return
        if len(packet) < 5:
            self._fatal("packet without a request id")
            return
        request_id = int.from_bytes(packet[1:5], "big")
        row = _TABLE.get(kind)
        if row is None:
            reason = "Duplicate INIT" if kind == codec.FXP_INIT else "Unknown request"
            code = codec.FX_BAD_MESSAGE if kind == codec.FXP_INIT else codec.FX_OP_UNSUPPORTED
            self.transport.write(codec.status(request_id, code, reason))
            return
        parser = Parser(packet, 5)
        try:
            claims, work = row(self, request_id, parser)
        except Exception as exc:
            self.transport.write(self._error_reply(request_id, exc))
            return
        self._start(request_id, claims, work)

    def _error_reply(self, request_id: int, exc: Exception) -> bytes:
        """The STATUS reply for what decoding or serving a request raised."""
        if isinstance(exc, BadMessage):
            return codec.status(request_id, codec.FX_BAD_MESSAGE, str(exc))
        if isinstance(exc, OutOfRange):
            return codec.status(request_id, codec.FX_FAILURE, f"Invalid {exc}")
        if not isinstance(exc, SftpStatus):
            log.error("unexpected error serving an SFTP request", exc_info=exc)
            exc = to_sftp_error(exc)
        return codec.status(request_id, self._code(exc.code), exc.reason)

    def _init(self, client_version: int) -> None:
        self.version = 3
        body = codec.u32(3) + b"".join(
            codec.string(name) + codec.string(data) for name, data in self.requests.extensions()
        )
        self.transport.write(codec.u32(len(body) + 1) + bytes([codec.FXP_VERSION]) + body)
        log.debug("SFTP session started (client version %d, serving 3)", client_version)

    # ------------------------------------------------------------------ scheduling

    def _start(self, request_id: int, claims: list[Claim], work: Work) -> None:
        """Register the request's claims in arrival order, then run it when it may."""
        waits: list[asyncio.Future[None]] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entries: list[tuple[list[_Entry], _Entry]] = []
        pending = self._pending
        for key, start, end, mode in claims:
            queue = pending.get(key)
            if queue is None:
                queue = pending[key] = []
            else:
                for other_start, other_end, other_mode, other_done in queue:
                    if (
                        _conflicts(mode, other_mode)
                        and start < other_end
                        and other_start < end
                        and other_done not in waits
                    ):
                        waits.append(other_done)
            entry = (start, end, mode, done)
            queue.append(entry)
            entries.append((queue, entry))
        self._running += 1
        self.budget.requests += 1
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(
            self._run(request_id, waits, work, done, entries)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        request_id: int,
        waits: list[asyncio.Future[None]],
        work: Work,
        done: asyncio.Future[None],
        entries: list[tuple[list[_Entry], _Entry]],
    ) -> None:
        reply: bytes | None = None
        try:
            if waits:
                await asyncio.wait(waits)
            reply = await work
        except asyncio.CancelledError:
            work.close()
            if self._closed:
                raise  # the channel is gone: connection_lost cancelled the request
            # Something the request awaited was cancelled, not the request itself.
            log.error("an SFTP request was cancelled from within", exc_info=True)
            reply = codec.status(request_id, codec.FX_FAILURE, "Failure")
        except Exception as exc:
            reply = self._error_reply(request_id, exc)
        finally:
            if reply is not None and not self._closed:
                self.transport.write(reply)
            done.set_result(None)
            for queue, entry in entries:
                queue.remove(entry)
            self._running -= 1
            self.budget.requests -= 1
            if not self._running:
                self._idle.set()
            self.budget.released()  # pumps every stalled engine of the connection, this one too

    @staticmethod
    def _code(code: int) -> int:
        """The status a v3 client understands (later drafts' codes become FAILURE)."""
        return code if code <= codec.FX_V3_END else codec.FX_FAILURE

    async def wait_for_room(self, length: int) -> None:
        """Wait while the connection's unread replies would exceed the budget."""
        budget = self.budget
        delay = 0.001
        while (backlog := budget.backlog()) and backlog + length > budget.reply_backlog:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        budget.reserved += length

    async def connection_lost(self) -> None:
        """The channel is gone: cancel what still runs, then abort what is open."""
        self._closed = True
        self._buffer.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        self.budget.engines.discard(self)
        await self.requests.abandon()

    async def wait_idle(self) -> None:
        """Wait until no request runs."""
        await self._idle.wait()

    # ------------------------------------------------------------------ rows

    def _handle_claim(self, handle: bytes, start: int, end: int, mode: int) -> Claim:
        return (("h", handle), start, end, mode)

    async def _status_ok(self, request_id: int, call: Awaitable[object]) -> bytes:
        await call
        return codec.status(request_id, codec.FX_OK, "")

    async def _name(self, request_id: int, call: Awaitable[str]) -> bytes:
        path = await call
        name = path.encode("utf-8")
        body = codec.u32(1) + codec.string(name) + codec.string(name) + codec.EMPTY_ATTRS
        return codec.frame(codec.FXP_NAME, request_id, body)

    async def _attrs(self, request_id: int, call: Awaitable[bytes]) -> bytes:
        return codec.frame(codec.FXP_ATTRS, request_id, await call)

    async def _handle_reply(self, request_id: int, call: Awaitable[bytes]) -> bytes:
        return codec.frame(codec.FXP_HANDLE, request_id, codec.string(await call))

    def _open(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, pflags, attrs = p.string(), p.u32(), p.attrs()
        writes = bool(pflags & (codec.FXF_WRITE | codec.FXF_APPEND))
        claims: list[Claim] = [(_NS, *_FULL, _EXCLUSIVE if writes else _SHARED)]
        return claims, self._handle_reply(request_id, self.requests.open(path, pflags, attrs))

    def _close(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        handle = p.string()
        claims = [self._handle_claim(handle, *_FULL, _EXCLUSIVE)]
        info = self.requests.handle_info(handle)
        if info is not None and info.upload:
            claims.append((_NS, *_FULL, _EXCLUSIVE))
        return claims, self._status_ok(request_id, self.requests.close(handle))

    def _read(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        handle, offset, length = p.string(), p.offset(), p.u32()
        length = min(length, LIMIT_READ)
        claims = [self._handle_claim(handle, offset, offset + length, _SHARED)]
        return claims, self._read_work(request_id, handle, offset, length)

    async def _read_work(self, request_id: int, handle: bytes, offset: int, length: int) -> bytes:
        await self.wait_for_room(length)
        try:
            data = await self.requests.read(handle, offset, length)
        finally:
            self.budget.reserved -= length
        if not data:
            return codec.status(request_id, codec.FX_EOF, "End of file")
        if len(data) > length:
            data = data[:length]
        return codec.data_head(request_id, len(data)) + data

    def _write(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        handle, offset, data = p.string(), p.offset(), p.string()
        # Bytes after the data (pkg/sftp before 1.13.6 sends them) are ignored, as
        # OpenSSH's sftp-server ignores whatever follows the fields it reads.
        end = offset + len(data)
        if end > codec.MAX_OFFSET:
            raise OutOfRange("offset out of range")
        info = self.requests.handle_info(handle)
        claims: list[Claim] = [(_DATA, *_FULL, _WRITE)]
        if info is not None and (info.append or not info.concurrent_writes):
            claims.append(self._handle_claim(handle, *_FULL, _EXCLUSIVE))
        else:
            claims.append(self._handle_claim(handle, offset, end, _EXCLUSIVE))
        return claims, self._status_ok(request_id, self.requests.write(handle, offset, data))

    def _path_look(self, p: Parser) -> tuple[bytes, list[Claim]]:
        return p.string(), [(_NS, *_FULL, _SHARED)]

    def _path_change(self, p: Parser) -> tuple[bytes, list[Claim]]:
        return p.string(), [(_NS, *_FULL, _EXCLUSIVE)]

    def _stat(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_look(p)
        claims.append((_DATA, *_FULL, _SHARED))
        return claims, self._attrs(request_id, self.requests.stat(path))

    def _lstat(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_look(p)
        claims.append((_DATA, *_FULL, _SHARED))
        return claims, self._attrs(request_id, self.requests.lstat(path))

    def _fstat(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        handle = p.string()
        claims = [self._handle_claim(handle, *_FULL, _SHARED)]
        return claims, self._attrs(request_id, self.requests.fstat(handle))

    def _setstat(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_change(p)
        attrs = p.attrs()
        return claims, self._status_ok(request_id, self.requests.setstat(path, attrs))

    def _fsetstat(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        handle, attrs = p.string(), p.attrs()
        claims = [self._handle_claim(handle, *_FULL, _EXCLUSIVE), (_DATA, *_FULL, _WRITE)]
        return claims, self._status_ok(request_id, self.requests.fsetstat(handle, attrs))

    def _opendir(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_look(p)
        return claims, self._handle_reply(request_id, self.requests.opendir(path))

    def _readdir(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        handle = p.string()
        claims = [self._handle_claim(handle, *_FULL, _EXCLUSIVE)]
        return claims, self._readdir_work(request_id, handle)

    async def _readdir_work(self, request_id: int, handle: bytes) -> bytes:
        entries = await self.requests.readdir(handle)
        if not entries:
            return codec.status(request_id, codec.FX_EOF, "End of directory")
        body = [codec.u32(len(entries))]
        for name, longname, attrs in entries:
            body.append(codec.string(name) + codec.string(longname) + attrs)
        return codec.frame(codec.FXP_NAME, request_id, b"".join(body))

    def _remove(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_change(p)
        return claims, self._status_ok(request_id, self.requests.remove(path))

    def _mkdir(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_change(p)
        attrs = p.attrs()
        return claims, self._status_ok(request_id, self.requests.mkdir(path, attrs))

    def _rmdir(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_change(p)
        return claims, self._status_ok(request_id, self.requests.rmdir(path))

    def _realpath(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_look(p)
        return claims, self._name(request_id, self.requests.realpath(path))

    def _rename(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        old, claims = self._path_change(p)
        new = p.string()
        work = self.requests.rename(old, new, overwrite=False)
        return claims, self._status_ok(request_id, work)

    def _readlink(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_look(p)
        return claims, self._name(request_id, self.requests.readlink(path))

    def _symlink(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        # OpenSSH sends the target first and the new link second, the reverse of the
        # draft, and most clients do as OpenSSH; the request layer knows which this is.
        first, claims = self._path_change(p)
        second = p.string()
        target, link = (first, second) if self.requests.target_first else (second, first)
        return claims, self._status_ok(request_id, self.requests.symlink(target, link))

    def _extended(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        name = p.string()
        row = _EXTENDED.get(name)
        if row is None or name not in self.requests.advertised:
            raise SftpStatus(codec.FX_OP_UNSUPPORTED, "Unsupported extension")
        return row(self, request_id, p)

    # -- extensions

    def _posix_rename(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        old, claims = self._path_change(p)
        new = p.string()
        return claims, self._status_ok(request_id, self.requests.rename(old, new, overwrite=True))

    def _hardlink(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        old, claims = self._path_change(p)
        new = p.string()
        return claims, self._status_ok(request_id, self.requests.hardlink(old, new))

    def _lsetstat(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_change(p)
        attrs = p.attrs()
        return claims, self._status_ok(request_id, self.requests.setstat(path, attrs, link=True))

    def _statvfs(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_look(p)
        return claims, self._reply(request_id, self.requests.statvfs(path))

    def _fstatvfs(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        handle = p.string()
        claims = [self._handle_claim(handle, *_FULL, _SHARED)]
        return claims, self._reply(request_id, self.requests.fstatvfs(handle))

    async def _reply(self, request_id: int, call: Awaitable[bytes]) -> bytes:
        return codec.frame(codec.FXP_EXTENDED_REPLY, request_id, await call)

    async def _now(self, body: bytes) -> bytes:
        return body

    def _limits(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        body = b"".join(
            codec.u64(n)
            for n in (LIMIT_PACKET, LIMIT_READ, LIMIT_WRITE, self.requests.max_open_handles)
        )
        return [], self._now(codec.frame(codec.FXP_EXTENDED_REPLY, request_id, body))

    def _expand_path(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_look(p)
        return claims, self._name(request_id, self.requests.expand_path(path))

    def _home_directory(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        username = p.string()
        return [], self._name(request_id, self.requests.home_directory(username))

    def _users_groups(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        uids, gids = _id_list(p.string()), _id_list(p.string())
        names = self.requests.owner_names
        body = codec.string(b"".join(codec.string(names(uid)) for uid in uids)) + codec.string(
            b"".join(codec.string(names(gid)) for gid in gids)
        )
        return [], self._now(codec.frame(codec.FXP_EXTENDED_REPLY, request_id, body))

    def _copy_data(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        source, offset, length = p.string(), p.offset(), p.offset()
        target, target_offset = p.string(), p.offset()
        end = codec.MAX_OFFSET if length == 0 else offset + length
        claims = [
            self._handle_claim(target, *_FULL, _EXCLUSIVE),
            (_DATA, *_FULL, _WRITE),
        ]
        if source != target:  # one handle twice would wait for itself (found by fuzzing)
            claims.insert(0, self._handle_claim(source, offset, end, _SHARED))
        work = self.requests.copy_data(source, offset, length, target, target_offset)
        return claims, self._status_ok(request_id, work)

    def _check_file_handle(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        handle, algorithms = p.string(), p.string()
        offset, length, block_size = p.offset(), p.offset(), p.u32()
        claims = [self._handle_claim(handle, *_FULL, _SHARED)]
        work = self.requests.check_file(handle=handle, raw=None, algorithms=algorithms,
                                        offset=offset, length=length,
                                        block_size=block_size)  # fmt: skip
        return claims, self._reply(request_id, work)

    def _check_file_name(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        path, claims = self._path_look(p)
        algorithms = p.string()
        offset, length, block_size = p.offset(), p.offset(), p.u32()
        claims.append((_DATA, *_FULL, _SHARED))
        work = self.requests.check_file(handle=None, raw=path, algorithms=algorithms,
                                        offset=offset, length=length,
                                        block_size=block_size)  # fmt: skip
        return claims, self._reply(request_id, work)

    def _fsync(self, request_id: int, p: Parser) -> tuple[list[Claim], Work]:
        handle = p.string()
        claims = [self._handle_claim(handle, *_FULL, _EXCLUSIVE)]
        return claims, self._status_ok(request_id, self.requests.fsync(handle))


def _id_list(data: bytes) -> list[int]:
    if len(data) % 4:
        raise BadMessage("id list is not a whole number of uint32")
    return [int.from_bytes(data[i : i + 4], "big") for i in range(0, len(data), 4)]


_TABLE: dict[int, _Row] = {
    codec.FXP_OPEN: SftpEngine._open,
    codec.FXP_CLOSE: SftpEngine._close,
    codec.FXP_READ: SftpEngine._read,
    codec.FXP_WRITE: SftpEngine._write,
    codec.FXP_LSTAT: SftpEngine._lstat,
    codec.FXP_FSTAT: SftpEngine._fstat,
    codec.FXP_SETSTAT: SftpEngine._setstat,
    codec.FXP_FSETSTAT: SftpEngine._fsetstat,
    codec.FXP_OPENDIR: SftpEngine._opendir,
    codec.FXP_READDIR: SftpEngine._readdir,
    codec.FXP_REMOVE: SftpEngine._remove,
    codec.FXP_MKDIR: SftpEngine._mkdir,
    codec.FXP_RMDIR: SftpEngine._rmdir,
    codec.FXP_REALPATH: SftpEngine._realpath,
    codec.FXP_STAT: SftpEngine._stat,
    codec.FXP_RENAME: SftpEngine._rename,
    codec.FXP_READLINK: SftpEngine._readlink,
    codec.FXP_SYMLINK: SftpEngine._symlink,
    codec.FXP_EXTENDED: SftpEngine._extended,
}

#: Every extension the engine can serve; :meth:`Requests.extensions` picks, per backend,
#: which of them a server advertises (and only those are served).
_EXTENDED: dict[bytes, _Row] = {
    b"posix-rename@openssh.com": SftpEngine._posix_rename,
    b"hardlink@openssh.com": SftpEngine._hardlink,
    b"lsetstat@openssh.com": SftpEngine._lsetstat,
    b"statvfs@openssh.com": SftpEngine._statvfs,
    b"fstatvfs@openssh.com": SftpEngine._fstatvfs,
    b"limits@openssh.com": SftpEngine._limits,
    b"expand-path@openssh.com": SftpEngine._expand_path,
    b"home-directory": SftpEngine._home_directory,
    b"users-groups-by-id@openssh.com": SftpEngine._users_groups,
    b"copy-data": SftpEngine._copy_data,
    b"fsync@openssh.com": SftpEngine._fsync,
    b"check-file-handle": SftpEngine._check_file_handle,
    b"check-file": SftpEngine._check_file_handle,  # the name paramiko's SFTPFile.check sends
    b"check-file-name": SftpEngine._check_file_name,
}
EXTENSION_NAMES = frozenset(_EXTENDED)
