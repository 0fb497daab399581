"""Telemetry: an in-process event bus with the reference's catalog, and more.

Attach a handler to one event or many, by name or by prefix::

    from sftpd import telemetry

    def log_reads(event: telemetry.Event) -> None:
        print(event.session.username, event.measurements["bytes"], event.metadata["result"])

    telemetry.attach("read-logger", ("sftpd", "sftp", "read"), log_reads)
    telemetry.attach("everything", ("sftpd",), audit)        # a prefix matches all below it
    telemetry.detach("read-logger")

Events: :data:`CATALOG` lists every one with the metadata it carries (docs/telemetry.md
shows the same table; a test holds them equal):

- ``("sftpd", "server", "start" | "stop")``
- ``("sftpd", "sftp", OPERATION)``, one per request (:data:`SFTP_OPERATIONS`)
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
    "AUTH_FAILURE",
    "AUTH_SUCCESS",
    "CATALOG",
    "CONNECTION_REFUSED",
    "SERVER_START",
    "SERVER_STOP",
    "SESSION_CLOSE",
    "SESSION_OPEN",
    "SFTP_COMMON",
    "SFTP_EVENTS",
    "SFTP_OPERATIONS",
    "Event",
    "EventName",
    "EventSpec",
    "Handler",
    "Listener",
    "Meta",
    "TelemetryBus",
    "attach",
    "bus",
    "detach",
    "execute",
    "span",
]

log = logging.getLogger("sftpd.telemetry")

EventName = tuple[str, ...]
#: An event's metadata as an emitter builds it (names from :data:`CATALOG`).
Meta = dict[str, object]

SERVER_START: EventName = ("sftpd", "server", "start")
SERVER_STOP: EventName = ("sftpd", "server", "stop")
AUTH_SUCCESS: EventName = ("sftpd", "auth", "success")
AUTH_FAILURE: EventName = ("sftpd", "auth", "failure")
SESSION_OPEN: EventName = ("sftpd", "session", "open")
SESSION_CLOSE: EventName = ("sftpd", "session", "close")
CONNECTION_REFUSED: EventName = ("sftpd", "connection", "refused")


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One row of the catalog: events, the metadata keys they carry, and their docs.

    Attributes:
        names: The events of the row (``auth`` success and failure share one).
        keys: Every metadata key they may carry (``sftp`` events add :data:`SFTP_COMMON`).
        fields: The row's metadata column in docs/telemetry.md (markdown).
        measurements: Their measurements.
    """

    names: tuple[EventName, ...]
    keys: tuple[str, ...]
    fields: str
    measurements: tuple[str, ...] = ("duration",)

    @property
    def row(self) -> str:
        """The row as docs/telemetry.md shows it."""
        head = self.names[0][:-1]
        parts = " \\| ".join(f'"{name[-1]}"' for name in self.names)
        event = "(" + ", ".join(f'"{p}"' for p in head) + f", {parts})"
        return f"| `{event}` | {self.fields} |"


def _sftp(operation: str, keys: tuple[str, ...], fields: str, *more: str) -> EventSpec:
    return EventSpec((("sftpd", "sftp", operation),), keys, fields, ("duration", *more))


#: What every ``sftp`` event carries besides its own keys.
SFTP_COMMON = ("backend", "backend_kind", "result", "reason", "code", "kind", "rule")

_AUTH_REASONS = ("rejected", "timeout", "error", "locked out", "disconnected",
                 "source network", "max_sessions_per_user", "max_sessions_total",
                 "state store unreachable")  # fmt: skip
_LIMITS = ("max_sessions", "max_sessions_per_user", "max_sessions_total",
           "max_unauthenticated", "max_unauthenticated_per_address", "connection_rate",
           "state_store_unreachable")  # fmt: skip


def _ticks(words: Iterable[str]) -> str:
    return ", ".join(f"`{word}`" for word in words)


#: Every event sftpd emits, with the metadata it carries.
CATALOG: tuple[EventSpec, ...] = (
    EventSpec(
        (SERVER_START,),
        ("host", "port", "max_sessions", "backend", "backend_kind", "result", "server_ref"),
        "`host`, `port`, `max_sessions`, `backend`, `backend_kind`, `result`, `server_ref`",
    ),
    EventSpec(
        (SERVER_STOP,),
        ("port", "backend", "backend_kind", "result", "server_ref"),
        "`port`, `backend`, `backend_kind`, `result`, `server_ref`",
    ),
    EventSpec(
        (AUTH_SUCCESS, AUTH_FAILURE),
        ("method", "username", "peer", "reason"),
        f"`method`, `username`, `peer`, `reason` (failures: {_ticks(_AUTH_REASONS)}); "
        "never the password",
    ),
    EventSpec(
        (SESSION_OPEN,), ("username", "peer", "auth_method"), "`username`, `peer`, `auth_method`"
    ),
    EventSpec(
        (SESSION_CLOSE,),
        ("username", "peer", "reason"),
        "`username`, `peer`, `reason`; measurements `duration`, `bytes_in`, `bytes_out`",
        ("duration", "bytes_in", "bytes_out"),
    ),
    EventSpec(
        (CONNECTION_REFUSED,),
        ("peer", "reason"),
        f"`peer`, `reason`: the limit reached ({_ticks(_LIMITS)}); no session",
    ),
    _sftp(
        "open",
        ("path", "requested_modes", "mode", "open_timeout", "handle"),
        "`path`, `requested_modes` (`read`, `write`, `append`, `create`, `truncate`, "
        "`exclusive`), `mode` (`read`, `write`, `read_write`), `open_timeout`, `handle`",
    ),
    _sftp(
        "close",
        (
            "handle",
            "path",
            "mode",
            "close_timeout",
            "abandoned",
            "stored",
            "bytes_read",
            "bytes_written",
            "open_for",
        ),
        "`handle`, `path`, `mode`, `close_timeout`, `abandoned`, `stored`, `bytes_read`, "
        "`bytes_written`, `open_for` (ns)",
    ),
    _sftp(
        "read",
        ("handle", "offset", "bytes_requested"),
        "`handle`, `offset`, `bytes_requested`; `bytes`; result `eof` at end of file",
        "bytes",
    ),
    _sftp("write", ("handle", "offset"), "`handle`, `offset`; `bytes`", "bytes"),
    _sftp(
        "list_dir",
        ("path", "entries"),
        "`path`, `entries`; one event per listing, at its end (a failed OPENDIR or READDIR "
        "reports the error)",
    ),
    _sftp("read_file_info", ("path",), "`path` (stat)"),
    _sftp("read_link_info", ("path",), "`path` (lstat)"),
    _sftp("read_link", ("path",), "`path`"),
    _sftp(
        "make_symlink",
        ("src_path", "dst_path"),
        "`src_path` (the target), `dst_path` (the new link)",
    ),
    _sftp("make_link", ("src_path", "dst_path"), "`src_path`, `dst_path` (hard link)"),
    _sftp(
        "copy_data",
        ("handle", "src_path", "dst_path"),
        "`handle` (the target's), `src_path`, `dst_path`",
    ),
    _sftp(
        "check_file",
        ("path", "offset", "length", "algorithm", "command"),
        "`path`, `offset`, `length`, `algorithm` (check-file and rclone's hash commands, "
        "which add `command`: `md5sum` or `sha1sum`)",
    ),
    _sftp("write_file_info", ("path", "handle"), "`path` (setstat; fsetstat adds `handle`)"),
    _sftp("rename", ("src_path", "dst_path", "overwrite"), "`src_path`, `dst_path`, `overwrite`"),
    _sftp("delete", ("path",), "`path`"),
    _sftp("make_dir", ("path",), "`path`"),
    _sftp("del_dir", ("path",), "`path`"),
    _sftp("get_cwd", ("path",), "`path` (realpath, expand-path, home-directory)"),
    _sftp("disk_usage", ("path",), "`path` (statvfs)"),
)

#: The name of each SFTP operation's event (``SFTP_EVENTS["read"]``).
SFTP_EVENTS: Mapping[str, EventName] = {
    spec.names[0][2]: spec.names[0] for spec in CATALOG if spec.names[0][1] == "sftp"
}
#: The operations the request layer reports, one event each.
SFTP_OPERATIONS: frozenset[str] = frozenset(SFTP_EVENTS)


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

    @property
    def area(self) -> str:
        """The event's family: ``sftp``, ``session``, ``auth``, ``connection``, ``server``."""
        return self.name[1] if len(self.name) > 1 else ""

    @property
    def action(self) -> str:
        """What happened in that family: the operation (``read``), ``open``, ``success``..."""
        return self.name[2] if len(self.name) > 2 else ""

    @property
    def result(self) -> str:
        """``ok``, ``eof``, ``error`` or ``exception`` (``ok`` for events without one)."""
        return str(self.metadata.get("result", "ok"))

    def text(self, key: str, default: str = "") -> str:
        """A metadata value as text (``default`` where the event has none)."""
        value = self.metadata.get(key)
        return default if value is None else str(value)

    def flag(self, key: str) -> bool:
        """A metadata value as a yes or no (``stored``, ``abandoned``...)."""
        return bool(self.metadata.get(key, False))

    def amount(self, key: str) -> float:
        """A measurement (``duration`` in ns, ``bytes``...), 0 where the event has none."""
        return float(self.measurements.get(key, 0))


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
