"""``sftpd serve --workers N``: server processes sharing one port, one per core.

The supervisor binds the port with ``SO_REUSEPORT`` (so ``--port 0`` works too) and forks
the workers; each runs its own :class:`~sftpd.Server` on a listening socket of its own on
that port, and the kernel spreads new connections across them. Workers share nothing but
the storage, as separate ``sftpd serve`` instances behind a load balancer would.

- Workers start one after another; one that fails to start (a misconfiguration) stops
  the whole start with its message and exit status.
- A worker that dies is started again; one that keeps dying at once stops everything.
- SIGTERM or Ctrl-C to the supervisor stops every worker gracefully; a second one stops
  them now. Workers live in their own process group, so Ctrl-C reaches them only through
  the supervisor, and they stop by themselves if the supervisor disappears.
- SIGHUP to the supervisor is passed on to every worker (``sftpd serve`` reloads users).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from ._config import ServerConfig
from .errors import ConfigError

__all__ = ["Supervision", "Worker", "reserve_port", "supervise"]

log = logging.getLogger("sftpd")

#: A worker that dies sooner than this after starting counts as a crash loop.
QUICK_DEATH = 2.0
#: Crash-loop deaths in a row after which the supervisor gives up.
MAX_QUICK_DEATHS = 3
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclasses.dataclass(frozen=True)
class Worker:
    """What a worker process is handed: its number and its pipes to the supervisor."""

    index: int
    ready_fd: int  # write one byte once listening
    lifeline_fd: int  # end of file: the supervisor is gone


@dataclasses.dataclass
class Supervision:
    """How the workers stand, for the supervisor's readiness check (read from a thread)."""

    started: bool = False
    stopping: bool = False

    def problem(self) -> str | None:
        """None while every worker serves; else why not."""
        if self.stopping:
            return "draining"
        return None if self.started else "starting"


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) ``host:port`` with SO_REUSEPORT; port 0 picks a free one.

    Raises:
        ConfigError: the platform has no SO_REUSEPORT, or the address cannot be bound.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers needs SO_REUSEPORT (Linux); run one process per port")
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        # First without SO_REUSEPORT: this fails if anyone (another sftpd with workers
        # included) holds the port, where SO_REUSEPORT would silently share it; and for
        # port 0 the kernel then picks a port nobody has.
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
            address = (address[0], probe.getsockname()[1], *address[2:])
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another port or "
            "stop the server using it"
        ) from exc
    return sock


def supervise(
    config: ServerConfig,
    workers: int,
    run_worker: Callable[[ServerConfig, Worker], int],
    on_ready: Callable[[ServerConfig], None],
    on_exit: Callable[[int], None] = lambda pid: None,
    supervision: Supervision | None = None,
) -> int:
    """Run ``workers`` processes serving ``config``; return the exit status for the CLI.

    ``run_worker(config, worker)`` runs in each forked process and returns its exit
    status; ``on_ready(config)`` is called once every worker listens (``config.port`` is
    the bound port); ``on_exit(pid)`` after a worker process has exited. ``supervision``
    is kept up to date (started, stopping).
    """
    fleet = supervision if supervision is not None else Supervision()
    reserved = reserve_port(config.host, config.port)
    config = dataclasses.replace(config, port=int(reserved.getsockname()[1]), reuse_port=True)
    lifeline_read, lifeline_write = os.pipe()
    previous: dict[int, Any] = {}
    children: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    stopping = 0

    def start(index: int) -> int | None:
        """Fork worker ``index`` and wait until it listens; its exit status if it could not."""
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                os.setpgid(0, 0)
                os.close(ready_read)
                os.close(lifeline_write)
                reserved.close()
                for signum in STOP_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker handles it
                status = run_worker(config, Worker(index, ready_write, lifeline_read))
            finally:
                os._exit(status)
        os.close(ready_write)
        children[pid] = (index, time.monotonic())
        try:
            ready = os.read(ready_read, 1)
        finally:
            os.close(ready_read)
        if ready:
            return None
        _, status = os.waitpid(pid, 0)
        del children[pid]
        on_exit(pid)
        return os.waitstatus_to_exitcode(status) or 1

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping += 1
        fleet.stopping = True
        _terminate(children)

    def hangup(_signum: int, _frame: object) -> None:
        _signal_all(children, signal.SIGHUP)

    try:
        for index in range(workers):
            failed = start(index)
            if failed is not None:
                _stop_all(children)
                return failed
        previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup)
        on_ready(config)
        fleet.started = True
        quick_deaths = 0
        while children:
            pid, status = _wait_any(children)
            index, started = children.pop(pid)
            on_exit(pid)
            if stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            log.error("worker %d (pid %d) exited with status %d; starting it again",
                      index, pid, code)  # fmt: skip
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH else 0
            failed = start(index) if quick_deaths < MAX_QUICK_DEATHS else code or 1
            if failed is not None and not stopping:
                log.error("worker %d cannot stay up; stopping", index)
                _stop_all(children)
                return failed
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(lifeline_write)
        os.close(lifeline_read)
        reserved.close()


def _wait_any(children: dict[int, tuple[int, float]]) -> tuple[int, int]:
    """Wait until one of ``children`` exits (never reaping other children of this process)."""
    while True:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return done, status
        time.sleep(0.1)


def _signal_all(children: dict[int, tuple[int, float]], signum: int) -> None:
    """Send ``signum`` to every worker still there."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _terminate(children: dict[int, tuple[int, float]]) -> None:
    """SIGTERM every worker: a graceful stop (a second one stops it now)."""
    _signal_all(children, signal.SIGTERM)


def _stop_all(children: dict[int, tuple[int, float]]) -> None:
    """Stop the started workers gracefully and wait for them."""
    _terminate(children)
    for pid in list(children):
        os.waitpid(pid, 0)
        del children[pid]
