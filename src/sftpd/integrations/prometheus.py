"""Prometheus metrics from sftpd's telemetry (needs ``pysftpd[metrics]``).

    from sftpd.integrations.prometheus import PrometheusMetrics
    metrics = PrometheusMetrics().attach()
    metrics.serve(9100)            # or expose metrics.registry from your web app

``sftpd serve --metrics-port 9100`` does the same. With ``--workers``, each worker counts
in prometheus_client's multiprocess mode and the supervisor serves the sum
(:func:`serve_multiprocess`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..telemetry import Event, Listener

try:
    import prometheus_client as prom
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "Prometheus metrics need the prometheus-client package: pip install 'pysftpd[metrics]'"
    ) from exc

__all__ = ["PrometheusMetrics", "multiprocess_page", "serve_multiprocess", "worker_exited"]

#: Where prometheus_client's multiprocess mode keeps each process's values. It must be set
#: before prometheus_client is first imported (``sftpd serve --workers`` does so).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                     5, 10, 30)  # fmt: skip


class PrometheusMetrics(Listener):
    """Counters, gauges and histograms fed by telemetry events.

    Metrics: ``sftpd_operations_total{operation,result}``,
    ``sftpd_operation_duration_seconds{operation}``, ``sftpd_bytes_received_total``,
    ``sftpd_bytes_sent_total``, ``sftpd_uploads_total{result}``,
    ``sftpd_sessions_active``, ``sftpd_sessions_total``,
    ``sftpd_logins_total{method,result}``, ``sftpd_connections_refused_total{reason}``.

    Args:
        registry: Where to register (default: a new registry of its own).
    """

    def __init__(self, registry: prom.CollectorRegistry | None = None) -> None:
        super().__init__()
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        r = self.registry
        self.operations = prom.Counter(
            "sftpd_operations", "SFTP requests served", ["operation", "result"], registry=r
        )
        self.durations = prom.Histogram(
            "sftpd_operation_duration_seconds",
            "Time spent serving SFTP requests",
            ["operation"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.bytes_in = prom.Counter("sftpd_bytes_received", "Bytes clients uploaded", registry=r)
        self.bytes_out = prom.Counter("sftpd_bytes_sent", "Bytes clients downloaded", registry=r)
        self.uploads = prom.Counter(
            "sftpd_uploads", "Uploads finished, by outcome", ["result"], registry=r
        )
        self.sessions_active = prom.Gauge(
            "sftpd_sessions_active", "Sessions connected now", registry=r,
            multiprocess_mode="livesum",  # across workers: the sum over live ones
        )  # fmt: skip
        self.sessions = prom.Counter("sftpd_sessions", "Sessions opened", registry=r)
        self.logins = prom.Counter(
            "sftpd_logins", "Login attempts", ["method", "result"], registry=r
        )
        self.refused = prom.Counter(
            "sftpd_connections_refused", "Connections refused at a limit", ["reason"], registry=r
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` over HTTP from a background thread; returns the server.

        Raises:
            ConfigError: the port cannot be bound.
        """
        return _start(port, host, self.registry)

    def page(self) -> bytes:
        """The metrics in Prometheus's text format, for a web app's own ``/metrics``."""
        return bytes(prom.generate_latest(self.registry))

    def handle(self, event: Event) -> None:
        """Update the metrics for one event."""
        area, action = event.area, event.action
        if area == "sftp":
            self.operations.labels(action, event.result).inc()
            self.durations.labels(action).observe(event.amount("duration") / 1e9)
            if action == "write" and event.result == "ok":
                self.bytes_in.inc(event.amount("bytes"))
            elif action == "read":
                self.bytes_out.inc(event.amount("bytes"))
            elif action == "close" and event.text("mode") != "read":
                if event.flag("stored"):
                    self.uploads.labels("ok").inc()
                elif event.result != "ok" or event.flag("abandoned"):
                    self.uploads.labels("abandoned" if event.flag("abandoned") else "error").inc()
        elif area == "session":
            if action == "open":
                self.sessions_active.inc()
                self.sessions.inc()
            elif action == "close":
                self.sessions_active.dec()
        elif area == "auth":
            self.logins.labels(event.text("method", "unknown"), action).inc()
        elif (area, action) == ("connection", "refused"):
            self.refused.labels(event.text("reason", "unknown")).inc()


def _start(port: int, host: str, registry: prom.CollectorRegistry) -> Any:
    try:
        server, _thread = prom.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    return server


def multiprocess_page() -> Callable[[], bytes]:
    """What makes the metrics page summed over every process writing to
    ``PROMETHEUS_MULTIPROC_DIR``.

    Counters and histograms of workers that exited still count; the active-sessions gauge
    counts live workers only (see :func:`worker_exited`).

    Raises:
        ConfigError: the variable is unset, or prometheus_client was imported before it was
            set (it then keeps values in memory, where this process cannot see them).
    """
    from prometheus_client import multiprocess

    if not os.environ.get(MULTIPROC_ENV):
        raise ConfigError(f"{MULTIPROC_ENV} must name a directory for the workers' metrics")
    if prom.values.ValueClass is prom.values.MutexValue:  # single-process mode
        raise ConfigError(f"prometheus_client was imported before {MULTIPROC_ENV} was set")
    registry = prom.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return lambda: bytes(prom.generate_latest(registry))


def serve_multiprocess(port: int, host: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` summed over every process (:func:`multiprocess_page`) from a
    background thread; returns the server.

    Raises:
        ConfigError: as :func:`multiprocess_page`, or the port cannot be bound.
    """
    multiprocess_page()  # the checks
    from prometheus_client import multiprocess

    registry = prom.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return _start(port, host, registry)


def worker_exited(pid: int) -> None:
    """Drop an exited worker's live gauges (its counters keep counting in the sum)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
