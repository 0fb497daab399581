"""The ``sftp`` subsystem on an asyncssh channel, served by :class:`~.engine.SftpEngine`.

Only asyncssh's public session API is used: a channel delivers bytes to
:meth:`SftpChannel.data_received`, replies go out with ``channel.write`` and the channel's
write buffer is the backlog. Shell, exec, pty and any other subsystem are refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import asyncssh

from .._authorized_keys import serves_sftp
from .engine import SftpEngine
from .handler import Transport

__all__ = ["ChannelTransport", "SftpChannel"]

log = logging.getLogger("sftpd")


#: Bytes of replies joined into one channel write at most.
JOIN = 256 << 10


class ChannelTransport:
    """A :class:`~.engine.Transport` over one asyncssh channel.

    Replies written during one pass of the event loop leave in one ``channel.write`` at the
    end of the pass, so asyncssh cuts them into as few SSH packets as the client's packet
    size allows: a 32 KiB read reply is 32 KiB and 13 bytes, two packets on its own, and
    about one when it shares the stream with the replies beside it. Nothing waits longer
    than the current pass.
    """

    __slots__ = ("_chan", "_pending", "_pending_bytes", "closed")

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(data)
        self._pending_bytes += len(data)

    def _flush(self) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        if self.closed:
            return
        # Joined about JOIN bytes at a time, each reply let go once copied, so a pass that
        # answers many reads at once costs one extra JOIN of memory, not a copy of it all.
        pending.reverse()
        batch: list[bytes] = []
        size = 0
        while pending:
            data = pending.pop()
            batch.append(data)
            size += len(data)
            if size >= JOIN or not pending:
                try:
                    self._chan.write(batch[0] if len(batch) == 1 else b"".join(batch))
                except BrokenPipeError:  # the client closed the channel: nobody to answer
                    self.closed = True
                    return
                batch, size = [], 0

    def backlog(self) -> int:
        return 0 if self.closed else self._chan.get_write_buffer_size() + self._pending_bytes

    def pause_reading(self) -> None:
        if not self.closed:
            self._chan.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed:
            self._chan.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self._flush()
            self.closed = True
            self._chan.close()


class SftpChannel(asyncssh.SSHServerSession[bytes]):
    """One session channel: the ``sftp`` subsystem and nothing else.

    Args:
        make_engine: Builds the engine for this channel once the subsystem starts.
        finished: Called with this channel once it is gone and its engine has aborted
            what was left open.
        spawn: Runs background work (holding a reference to it).
        grace: Seconds running requests may go on after the channel is gone.
        commands: With ``hash_commands``: whether an exec command is one sftpd answers
            itself, and the coroutine answering it (stdout, stderr, exit status). No
            process is ever started; every other command is refused.
    """

    def __init__(
        self,
        make_engine: Callable[[Transport], SftpEngine],
        finished: Callable[[SftpChannel], None],
        spawn: Callable[[Awaitable[object], str], None],
        grace: float,
        commands: tuple[Callable[[str], bool],
                        Callable[[str], Awaitable[tuple[bytes, bytes, int]]]] | None = None,
    ) -> None:  # fmt: skip
        self._commands = commands
        self._command: str | None = None
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._make_engine = make_engine
        self._finished = finished
        self._spawn = spawn
        self._grace = grace
        self._transport: ChannelTransport | None = None
        self.engine: SftpEngine | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan
        self._transport = ChannelTransport(chan)

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        return False

    def shell_requested(self) -> bool:
        return False

    def exec_requested(self, command: str) -> bool:
        if serves_sftp(command):
            # A forced command (authorized_keys command=, a certificate's force-command)
            # of internal-sftp replaces the client's subsystem request: SFTP it is.
            return True
        if self._commands is None or not self._commands[0](command):
            return False
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"

    def session_started(self) -> None:
        assert self._transport is not None
        if self._command is not None:
            self._spawn(self._answer(self._command), "answering an exec command")
            return
        self.engine = self._make_engine(self._transport)

    async def _answer(self, command: str) -> None:
        assert self._commands is not None
        assert self._chan is not None
        chan = self._chan
        try:
            stdout, stderr, status = await self._commands[1](command)
        except Exception:
            log.exception("answering %r failed", command)
            stdout, stderr, status = b"", b"sftpd: internal error\n", 1
        if stdout:
            chan.write(stdout)
        if stderr:
            chan.write_stderr(stderr)
        chan.exit(status)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.engine is not None and datatype is None:
            self.engine.data_received(data)

    def eof_received(self) -> bool:
        """The client sent all it will: answer what is running, then close."""
        if self._command is not None:
            return True  # an exec command's answer ends the channel itself (exit)
        engine, transport = self.engine, self._transport

        async def finish() -> None:
            if engine is not None:
                await engine.wait_idle()
            if transport is not None:
                transport.close()

        self._spawn(finish(), "finishing an SFTP channel")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport.closed = True
        engine = self.engine

        async def end() -> None:
            if engine is not None:
                try:
                    await asyncio.wait_for(engine.wait_idle(), self._grace)
                except asyncio.TimeoutError:
                    log.warning("requests still running %.0f s after their channel closed; "
                                "cancelling them", self._grace)  # fmt: skip
                await engine.connection_lost()
            self._finished(self)

        self._spawn(end(), "ending an SFTP channel")
