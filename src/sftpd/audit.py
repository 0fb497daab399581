"""An audit trail: one JSON line per login, logout and completed data operation.

    from sftpd.audit import AuditLog
    AuditLog("/var/log/sftpd/audit.jsonl").attach()      # or AuditLog(sys.stdout)

Lines look like::

    {"time": "2026-11-27T10:00:00.123Z", "event": "upload", "user": "alice",
     "peer": "10.0.0.5:51234", "session": "3f2a...", "path": "/in/report.csv",
     "bytes": 52311, "duration_ms": 48.2, "result": "ok"}

Events: ``login`` and ``login_failed`` (method, never the password), ``logout`` (bytes
in and out), ``upload``, ``download``, ``delete``, ``rename`` (``path`` and ``to``),
``mkdir``, ``rmdir``, ``refused`` (a connection turned away at a limit, with ``peer`` and
``reason``). Failed operations are logged too, with ``result`` and ``reason``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import weakref
from datetime import datetime, timezone
from typing import IO, Any

from .telemetry import CONNECTION_REFUSED, SESSION_CLOSE, SFTP_EVENTS, Event, EventName, Listener

__all__ = ["AuditLog", "audit_record", "reopen_all"]

_SIMPLE = {"delete": "delete", "del_dir": "rmdir", "make_dir": "mkdir", "rename": "rename"}


_log = logging.getLogger("sftpd")
#: The audit logs writing to files, for :func:`reopen_all`.
_FILES: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def reopen_all() -> int:
    """Reopen every audit log file of this process (``sftpd serve`` does on SIGHUP).

    Returns:
        How many files were reopened.
    """
    logs = list(_FILES)
    for audit_log in logs:
        audit_log.reopen()
    return len(logs)


class AuditLog(Listener):
    """Writes audit lines to a file (appending) or a text stream.

    Args:
        target: A path, ``"-"`` for standard output, or an open text stream.
    """

    events: tuple[EventName, ...] = (
        SFTP_EVENTS["close"],
        ("sftpd", "auth"),
        SESSION_CLOSE,
        CONNECTION_REFUSED,
        *(SFTP_EVENTS[op] for op in _SIMPLE),
    )

    def __init__(self, target: str | os.PathLike[str] | IO[str]) -> None:
        super().__init__()
        self._path: str | os.PathLike[str] | None = None
        if target == "-":
            self._stream: IO[str] = sys.stdout
        elif isinstance(target, (str, os.PathLike)):
            self._path = target
            self._stream = self._open(target)
            _FILES.add(self)
        else:
            self._stream = target
        self._lock = threading.Lock()

    @staticmethod
    def _open(path: str | os.PathLike[str]) -> IO[str]:
        return open(path, "a", encoding="utf-8", buffering=1)

    def reopen(self) -> None:
        """Close and open the file again (after logrotate moved it); streams are kept.

        If the file cannot be opened, the old one stays in use and the error is logged.
        """
        if self._path is None:
            return
        with self._lock:
            try:
                fresh = self._open(self._path)
            except OSError as exc:
                _log.error("reopening the audit log %s failed, keeping the old file: %s",
                           self._path, exc)  # fmt: skip
                return
            old, self._stream = self._stream, fresh
            old.close()

    def close(self) -> None:
        """Detach and close the file (if this log opened it)."""
        self.detach()
        if self._path is not None:
            _FILES.discard(self)
            self._stream.close()

    def handle(self, event: Event) -> None:
        """Turn one telemetry event into an audit line (or ignore it)."""
        record = audit_record(event)
        if record is None:
            return
        line = json.dumps(record, separators=(",", ":"), default=str)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def audit_record(event: Event) -> dict[str, Any] | None:
    """The audit line of one telemetry event, as a dict (None: not an audited event)."""
    meta = event.metadata
    kind = (event.area, event.action)
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.time, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "pid": os.getpid(),  # which process, when workers share one log
    }
    session = event.session
    if kind[0] == "auth":
        record.update(
            event="login" if kind[1] == "success" else "login_failed",
            user=meta.get("username"),
            peer=meta.get("peer"),
            method=meta.get("method"),
            result="ok" if kind[1] == "success" else "error",
        )
        if "reason" in meta:
            record["reason"] = meta["reason"]
        if session is not None:
            record["session"] = session.id
        return record
    if kind == ("connection", "refused"):
        record.update(event="refused", peer=meta.get("peer"), reason=meta.get("reason"),
                      result="error")  # fmt: skip
        return record
    if kind == ("session", "close"):
        record.update(
            event="logout",
            user=meta.get("username"),
            peer=meta.get("peer"),
            bytes_in=int(event.amount("bytes_in")),
            bytes_out=int(event.amount("bytes_out")),
            duration_ms=round(event.amount("duration") / 1e6, 3),
            result="ok",
        )
    elif kind == ("sftp", "close"):
        if event.flag("abandoned"):
            name = "upload_abandoned" if event.text("mode") != "read" else "download"
        elif event.text("mode") == "read":
            name = "download"
        elif event.flag("stored") or event.result != "ok":
            name = "upload"
        else:
            return None  # a write handle closed without changes
        moved = meta.get("bytes_read" if name == "download" else "bytes_written", 0)
        record.update(
            event=name,
            path=meta.get("path"),
            bytes=moved,
            duration_ms=round(meta.get("open_for", event.amount("duration")) / 1e6, 3),
            result=meta.get("result"),
        )
    elif kind[0] == "sftp" and kind[1] in _SIMPLE:
        record.update(
            event=_SIMPLE[kind[1]],
            path=meta.get("src_path", meta.get("path")),
            duration_ms=round(event.amount("duration") / 1e6, 3),
            result=meta.get("result"),
        )
        if kind[1] == "rename":
            record["to"] = meta.get("dst_path")
    else:
        return None
    if meta.get("result") not in (None, "ok") and "reason" in meta:
        record["reason"] = meta["reason"]
        if "rule" in meta:  # refused by the session's permissions: what decided
            record["rule"] = meta["rule"]
    if session is not None:
        record.update(user=session.username, peer=str(session.peer), session=session.id)
    return record
