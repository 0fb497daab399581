"""Webhooks: POST a JSON event to other systems when a file is stored, fails, goes or moves.

    from sftpd.webhooks import Webhooks
    Webhooks(["https://app.example.com/hooks/sftp"], secret=os.environ["HOOK_SECRET"]).attach()

(``sftpd serve --webhook URL --webhook-secret-env HOOK_SECRET``.) Each event is the
audit line (see :mod:`sftpd.audit`: ``event``, ``user``, ``peer``, ``session``, ``path``,
``to``, ``bytes``, ``result``, ``reason``; never a password) of an ``upload`` (stored or
failed), ``upload_abandoned``, ``delete`` or ``rename``, POSTed as JSON with headers:

* ``X-Sftpd-Event``: the event name;
* ``X-Sftpd-Delivery``: a unique id, the same on every retry (so a receiver can drop
  repeats);
* ``X-Sftpd-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the body with the secret
  (when one is set), to check with a constant-time comparison.

Deliveries run in a thread of their own, never in a session's way: a 2xx answer is a
delivery; anything else (or no answer within ``timeout``) is retried with exponential
backoff up to ``max_attempts``, then logged and dropped. The queue holds ``queue_size``
events; when it is full, new events are dropped and counted in the log. The standard
library's HTTP client is used: no dependency.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

from .audit import AuditLog, audit_record
from .errors import ConfigError
from .telemetry import Event, EventName, Listener

__all__ = ["EVENTS", "Webhooks"]

log = logging.getLogger("sftpd")

EVENTS = ("upload", "upload_abandoned", "delete", "rename")
"""The audit events sent by default."""


class Webhooks(Listener):
    """POSTs audit events to ``urls``, signed, retried, never blocking a session.

    Args:
        urls: Where to POST (http or https).
        secret: Key of the ``X-Sftpd-Signature`` HMAC (None: unsigned).
        events: Which audit events to send.
        queue_size: Events waiting for delivery, at most.
        max_attempts: Tries per event and URL.
        timeout: Seconds to wait for an answer.
        backoff: Seconds before the first retry; doubled each time (at most 60).
    """

    events: tuple[EventName, ...] = AuditLog.events

    def __init__(
        self,
        urls: Sequence[str],
        *,
        secret: str | None = None,
        events: Sequence[str] = EVENTS,
        queue_size: int = 1000,
        max_attempts: int = 6,
        timeout: float = 10.0,
        backoff: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(urls, str) or not urls:
            raise ConfigError("webhooks need a list of URLs")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"webhook URL {url!r} must start with http:// or https://")
        self.urls = tuple(urls)
        self._secret = secret.encode() if secret else None
        self._kinds = frozenset(events)
        self._queue: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue(queue_size)
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff = backoff
        self.delivered = 0
        self.dropped = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def handle(self, event: Event) -> None:
        """Queue the event for delivery, if it is one of ours (never waits)."""
        record = audit_record(event)
        if record is None or record.get("event") not in self._kinds:
            return
        body = json.dumps(record, separators=(",", ":"), default=str).encode()
        self._start()
        try:
            self._queue.put_nowait((str(record["event"]), uuid.uuid4().hex, body))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("webhook queue full: %d events dropped so far", self.dropped)

    def _start(self) -> None:
        # Started on the first event, in the process that has it (workers fork first).
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sftpd-webhooks",
                                                daemon=True)  # fmt: skip
                self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, delivery, body = item
            for url in self.urls:
                self._deliver(url, kind, delivery, body)
            self._queue.task_done()
        self._queue.task_done()

    def _deliver(self, url: str, kind: str, delivery: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "sftpd-webhooks",
                   "X-Sftpd-Event": kind, "X-Sftpd-Delivery": delivery}  # fmt: skip
        if self._secret is not None:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers["X-Sftpd-Signature"] = f"sha256={digest}"
        wait = self.backoff
        for attempt in range(1, self.max_attempts + 1):
            # The URL's scheme was checked at start-up: http:// or https:// only.
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                    if 200 <= answer.status < 300:
                        self.delivered += 1
                        return
                    problem: Any = f"HTTP {answer.status}"
            except urllib.error.HTTPError as exc:  # 4xx, 5xx: answered, not accepted
                problem = f"HTTP {exc.code}"
                exc.close()
            except Exception as exc:  # refused, timed out, unreachable
                problem = exc
            if attempt < self.max_attempts:
                time.sleep(wait)
                wait = min(wait * 2, 60.0)
        log.error("webhook %s to %s failed %d times (%s); dropped", kind, url,
                  self.max_attempts, problem)  # fmt: skip

    def close(self, timeout: float = 10.0) -> None:
        """Detach, and deliver what is queued for up to ``timeout`` seconds."""
        self.detach()
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)
