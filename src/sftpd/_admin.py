"""The admin port: ``/healthz``, ``/readyz`` and ``/metrics`` over plain HTTP.

For load balancers and orchestrators: ``/healthz`` answers 200 while the process (its
event loop) responds, ``/readyz`` 200 while new logins can succeed and 503 with the
reason otherwise (starting, draining after SIGTERM, state store unreachable), and
``/metrics`` the Prometheus page when ``pysftpd[metrics]`` is installed. It runs in a
thread of its own (the standard library's ``http.server``), so a busy event loop shows as
an unhealthy process, not as a slow probe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import ConfigError

__all__ = ["AdminServer"]

log = logging.getLogger("sftpd")

#: A check returns None when all is well, else the reason (sent with a 503).
Check = Callable[[], "str | None"]


class AdminServer:
    """Serves the admin endpoints from a daemon thread.

    Args:
        host: Address to listen on.
        port: Port (0 picks a free one; read :attr:`port`).
        live: The liveness check (``/healthz``).
        ready: The readiness check (``/readyz``).
        metrics: Makes the Prometheus page, or None when metrics are not installed.

    Raises:
        ConfigError: the address cannot be bound.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        live: Check,
        ready: Check,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        checks = {"/healthz": live, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in checks:
                    try:
                        problem = checks[path]()
                    except Exception as exc:  # a check that fails is a failed check
                        problem = f"check failed: {type(exc).__name__}"
                    self._answer(503 if problem else 200, f"{problem or 'ok'}\n".encode())
                elif path == "/metrics" and metrics is not None:
                    self._answer(200, metrics(), "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/metrics":
                    self._answer(404, b"metrics need prometheus-client: pip install "
                                      b"'pysftpd[metrics]'\n")  # fmt: skip
                else:
                    self._answer(404, b"not found; try /healthz, /readyz or /metrics\n")

            def _answer(self, code: int, body: bytes,
                        kind: str = "text/plain; charset=utf-8") -> None:  # fmt: skip
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("admin: " + format, *args)

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve the admin port on {host}:{port}: {exc}") from exc
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sftpd-admin",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def url(self, path: str) -> str:
        """The address of ``path`` on this server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()
