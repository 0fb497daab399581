"""The SFTP engine on standard input and output, for OpenSSH's sshd (``sftpd stdio``).

sshd authenticates the user and runs ``sftpd stdio`` as its ``Subsystem sftp`` (or a
``ForceCommand``), as it runs OpenSSH's own ``sftp-server``; the engine, the backends, the
permissions, the limits and the telemetry are the same as behind ``sftpd serve``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import time
from typing import IO, Any

from ._bandwidth import Bandwidth, Shaper
from ._binding import BoundBackend, start_backend, stop_backend
from ._coalesce import CoalescingTransport
from ._quota import QuotaLedger, count_usage
from ._requests import Requests, SessionState, Settings
from ._session import Peer, Session
from ._sftp.engine import ConnectionBudget, SftpEngine
from ._shared import SharedState
from .state import MemoryState
from .telemetry import SESSION_CLOSE, SESSION_OPEN, TelemetryBus

__all__ = ["peer_from_environment", "serve_stdio"]

log = logging.getLogger("sftpd")


def peer_from_environment(environ: dict[str, str] | None = None) -> Peer:
    """The client's address as sshd tells it (``SSH_CONNECTION``), else an empty one."""
    fields = (environ if environ is not None else dict(os.environ)).get("SSH_CONNECTION", "")
    parts = fields.split()
    if len(parts) >= 2 and parts[1].isdigit():
        return Peer(parts[0], int(parts[1]))
    return Peer("", 0)


class _PipeTransport:
    """A :class:`~sftpd._sftp.engine.Transport` over a read pipe and a write pipe.

    Replies written in one pass of the event loop leave in one ``write`` to sshd.
    """

    def __init__(self, reader: asyncio.ReadTransport, writer: asyncio.WriteTransport) -> None:
        self._reader = reader
        self._writer = CoalescingTransport(writer, asyncio.get_running_loop())
        self.closed = asyncio.Event()

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    def backlog(self) -> int:
        return self._writer.get_write_buffer_size()

    def flush(self) -> None:
        """Hand the replies of this pass to the pipe now."""
        self._writer.flush()

    def pause_reading(self) -> None:
        self._reader.pause_reading()

    def resume_reading(self) -> None:
        self._reader.resume_reading()

    def close(self) -> None:
        self._reader.close()
        self.closed.set()


class _Input(asyncio.Protocol):
    """Standard input: bytes go to the engine (held until it exists)."""

    def __init__(self) -> None:
        self._engine: SftpEngine | None = None
        self._early: list[bytes] = []
        self.ended = asyncio.Event()

    def start(self, engine: SftpEngine) -> None:
        self._engine = engine
        for data in self._early:
            engine.data_received(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self._engine is None:
            self._early.append(data)
        else:
            self._engine.data_received(data)

    def eof_received(self) -> bool:
        self.ended.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.set()


async def serve_stdio(
    backend: BoundBackend,
    session: Session,
    *,
    bus: TelemetryBus,
    settings: Settings,
    stdin: IO[bytes],
    stdout: IO[bytes],
    max_requests: int = 64,
    shared: SharedState | None = None,
    bandwidth: Bandwidth | None = None,
) -> None:
    """Serve one SFTP session on ``stdin``/``stdout`` until the client closes it.

    With ``shared`` (the state store), the session's quota and ``bandwidth`` limits apply
    as on a server; the quota is counted from the storage when the store knows none.
    """
    loop = asyncio.get_running_loop()
    shared = shared if shared is not None else SharedState(MemoryState())
    await shared.start()
    await start_backend(backend)
    try:
        if backend.session_opened is not None:
            await backend.session_opened(session)
        ledger = None
        if session.quota is not None:
            ledger = QuotaLedger(shared, session.quota, lambda: count_usage(
                lambda directory: backend.list_dir(directory, session), session.root
            ))  # fmt: skip
            await ledger.ensure_known()
        shaper = Shaper(shared, bandwidth or Bandwidth(), session.username, session.attributes)
        state = SessionState(session=session, last_active=loop.time(), ledger=ledger,
                             shaper=shaper if shaper.limited else None)  # fmt: skip
        bus.execute(SESSION_OPEN, {"duration": 0},
                    {"username": session.username, "peer": str(session.peer),
                     "auth_method": session.auth_method}, session)  # fmt: skip
        protocol = _Input()
        read_transport, write_transport = await _open_stdio(protocol, stdin, stdout)
        transport = _PipeTransport(read_transport, write_transport)
        requests = Requests(backend, state, bus, settings)
        engine = SftpEngine(requests, transport, ConnectionBudget(max_requests),
                            concurrency=max_requests)  # fmt: skip
        protocol.start(engine)
        ended = asyncio.ensure_future(protocol.ended.wait())
        closed = asyncio.ensure_future(transport.closed.wait())
        await asyncio.wait([ended, closed], return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        closed.cancel()
        await engine.wait_idle()
        await engine.connection_lost()
        transport.flush()
        await _drain(write_transport)
        write_transport.close()
        bus.execute(SESSION_CLOSE,
                    {"duration": int((time.time() - session.started) * 1e9),
                     "bytes_in": state.bytes_in, "bytes_out": state.bytes_out},
                    {"username": session.username, "peer": str(session.peer),
                     "reason": "closed"}, session)  # fmt: skip
        if backend.session_closed is not None:
            await backend.session_closed(session)
    finally:
        await stop_backend(backend)
        await shared.close()


def _same_socket(a: int, b: int) -> bool:
    """True when both descriptors are one socket (fstat on open descriptors never blocks)."""
    first, second = os.fstat(a), os.fstat(b)
    same = (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)
    return stat.S_ISSOCK(first.st_mode) and same


async def _open_stdio(
    protocol: asyncio.Protocol, stdin: IO[bytes], stdout: IO[bytes]
) -> tuple[asyncio.ReadTransport, asyncio.WriteTransport]:
    """Transports for the two ends; one socket transport when sshd gave a socketpair.

    sshd (and ``sftp -D``) connect a subsystem through one socket on both descriptors.
    asyncio's write-pipe transport watches its descriptor for reads to notice a closed
    pipe, and would take the client's requests arriving on that socket for a close.
    """
    loop = asyncio.get_running_loop()
    if _same_socket(stdin.fileno(), stdout.fileno()):
        sock = socket.socket(fileno=os.dup(stdin.fileno()))
        both, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
        return both, both
    reader, _ = await loop.connect_read_pipe(lambda: protocol, stdin)
    writer, _ = await loop.connect_write_pipe(asyncio.Protocol, stdout)
    return reader, writer


async def _drain(writer: Any) -> None:
    """Wait until the replies written so far have left."""
    while writer.get_write_buffer_size() and not writer.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
