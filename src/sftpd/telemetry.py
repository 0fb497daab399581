"""Telemetry: an in-process event bus with the reference's catalog, and more.

Attach a handler to one event or many, by name or by prefix::

    from sftpd import telemetry

    def log_reads(event: telemetry.Event) -> None:
        print(event.session.username, event.measurements["bytes"], event.metadata["result"])

    telemetry.attach("read-logger", ("sftpd", "sftp", "read"), log_reads)
    telemetry.attach("everything", ("sftpd",), audit)        # a prefix matches all below it
    telemetry.detach("read-logger")

Events (see docs/telemetry.md for every field):

- ``("sftpd", "server", "start" | "stop")``
- ``("sftpd", "sftp", OPERATION)`` for open, close, read, write, list_dir, read_file_info,
  read_link_info, read_link, rename, delete, make_dir, del_dir, get_cwd, make_symlink,
  make_link, copy_data, write_file_info, disk_usage
- ``("sftpd", "auth", "success" | "failure")``
- ``("sftpd", "session", "open" | "close")``
- ``("sftpd", "connection", "refused")`` (a limit such as ``max_sessions`` was reached)

Every event has ``measurements["duration"]`` in nanoseconds of ``time.monotonic_ns()``
(0 for instantaneous events). Handlers run inline, so keep them fast; one that raises is
logged and detached, and never breaks the session that emitted the event. With no handler
attached, emitting costs one dictionary lookup.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._session import Session

__all__ = [
    "Event",
    "EventName",
    "Handler",
    "Listener",
    "TelemetryBus",
    "attach",
    "bus",
    "detach",
    "execute",
    "span",
]

log = logging.getLogger("sftpd.telemetry")

EventName = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Event:
    """One telemetry event.

    Attributes:
        name: ``("sftpd", "sftp", "read")`` and so on.
        measurements: Numbers: ``duration`` (ns), ``bytes`` for reads and writes, ...
        metadata: Context: ``result``, ``reason``, ``path``, ``backend``, ...
        session: The session it belongs to (``None`` for server events).
        time: Wall-clock time of emission (``time.time()``).
    """

    name: EventName
    measurements: Mapping[str, float]
    metadata: Mapping[str, Any]
    session: Session | None = None
    time: float = field(default_factory=time.time)


Handler = Callable[[Event], None]


@dataclass(slots=True)
class _Attached:
    handler_id: str
    prefixes: tuple[EventName, ...]
    handler: Handler


class TelemetryBus:
    """Handlers keyed by event name; events go to every handler whose prefix matches."""

    def __init__(self) -> None:
        self._handlers: dict[str, _Attached] = {}
        self._routes: dict[EventName, tuple[_Attached, ...]] = {}

    def attach(
        self, handler_id: str, names: EventName | Iterable[EventName], handler: Handler
    ) -> None:
        """Attach ``handler`` to one event name or prefix, or to several.

        Raises:
            ValueError: ``handler_id`` is already attached.
        """
        if handler_id in self._handlers:
            raise ValueError(f"a handler with id {handler_id!r} is already attached")
        if isinstance(names, tuple) and all(isinstance(part, str) for part in names):
            prefixes: tuple[EventName, ...] = (names,)
        else:
            prefixes = tuple(tuple(name) for name in names)
        self._handlers[handler_id] = _Attached(handler_id, prefixes, handler)
        self._routes.clear()

    def detach(self, handler_id: str) -> bool:
        """Detach a handler; returns whether it was attached."""
        found = self._handlers.pop(handler_id, None) is not None
        self._routes.clear()
        return found

    def handlers(self) -> list[str]:
        """Ids of the attached handlers."""
        return list(self._handlers)

    def _route(self, name: EventName) -> tuple[_Attached, ...]:
        route = self._routes.get(name)
        if route is None:
            route = tuple(
                a
                for a in self._handlers.values()
                if any(name[: len(prefix)] == prefix for prefix in a.prefixes)
            )
            self._routes[name] = route
        return route

    def listening(self, name: EventName) -> bool:
        """True when some handler would receive ``name`` (use it to skip building events)."""
        return bool(self._handlers) and bool(self._route(name))

    def execute(
        self,
        name: EventName,
        measurements: Mapping[str, float],
        metadata: Mapping[str, Any],
        session: Session | None = None,
    ) -> None:
        """Deliver one event to every matching handler."""
        if not self._handlers:
            return
        route = self._route(name)
        if not route:
            return
        event = Event(name, measurements, metadata, session)
        for attached in route:
            try:
                attached.handler(event)
            except Exception:
                log.exception(
                    "telemetry handler %r failed on %s; detaching it",
                    attached.handler_id,
                    ".".join(name),
                )
                self.detach(attached.handler_id)

    @contextmanager
    def span(
        self,
        name: EventName,
        metadata: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Time a block and emit ``name`` when it ends.

        The block may add to the yielded metadata dict (and set ``result``). An exception
        emits ``result="exception"`` with ``kind`` and ``reason`` and is re-raised.
        """
        meta: dict[str, Any] = dict(metadata or {})
        start = time.monotonic_ns()
        try:
            yield meta
        except BaseException as exc:
            meta.update(result="exception", kind=type(exc).__name__, reason=str(exc))
            self.execute(name, {"duration": time.monotonic_ns() - start}, meta, session)
            raise
        meta.setdefault("result", "ok")
        self.execute(name, {"duration": time.monotonic_ns() - start}, meta, session)


bus = TelemetryBus()
"""The process-wide bus servers use unless given their own."""


class Listener:
    """Base for objects that consume events: ``attach(bus)``, ``detach()``, ``handle``.

    Subclasses set ``events`` (names or prefixes) and implement :meth:`handle`.
    """

    events: tuple[EventName, ...] = (("sftpd",),)

    def __init__(self) -> None:
        self._bus: TelemetryBus | None = None
        self.handler_id = f"{type(self).__name__}-{id(self):x}"

    def attach(self, target: TelemetryBus | None = None) -> Any:
        """Start receiving events from ``target`` (default: the process-wide bus)."""
        self._bus = target if target is not None else bus
        self._bus.attach(self.handler_id, self.events, self.handle)
        return self

    def detach(self) -> None:
        """Stop receiving events."""
        if self._bus is not None:
            self._bus.detach(self.handler_id)
            self._bus = None

    def handle(self, event: Event) -> None:  # pragma: no cover - abstract
        """Consume one event."""
        raise NotImplementedError


attach = bus.attach
detach = bus.detach
execute = bus.execute
span = bus.span
