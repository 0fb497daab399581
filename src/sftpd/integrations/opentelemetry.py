"""OpenTelemetry spans and metrics from sftpd's telemetry (needs ``pysftpd[otel]``).

    from sftpd.integrations.opentelemetry import instrument
    instrument()                         # global tracer and meter providers
    instrument(tracer_provider=tp, meter_provider=mp, bus=my_bus)

Each session is a span (``sftp.session``) from login to logout; each SFTP operation is a
child span (``sftp.<operation>``) with its metadata as ``sftp.*`` attributes and an error
status when it failed. Metrics: ``sftpd.bytes.received``, ``sftpd.bytes.sent``,
``sftpd.operations``, ``sftpd.errors``, ``sftpd.sessions.active`` and the histogram
``sftpd.operation.duration`` (seconds).
"""

from __future__ import annotations

from typing import Any

from ..telemetry import Event, Listener, TelemetryBus

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "OpenTelemetry support needs opentelemetry-api: pip install 'pysftpd[otel]'"
    ) from exc

__all__ = ["OpenTelemetryBridge", "instrument"]

_ATTRIBUTE_TYPES = (str, bool, int, float)


class OpenTelemetryBridge(Listener):
    """Turns telemetry events into spans and metric points."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        super().__init__()
        self.tracer = trace.get_tracer("sftpd", tracer_provider=tracer_provider)
        meter = metrics.get_meter("sftpd", meter_provider=meter_provider)
        self.bytes_in = meter.create_counter("sftpd.bytes.received", unit="By")
        self.bytes_out = meter.create_counter("sftpd.bytes.sent", unit="By")
        self.operations = meter.create_counter("sftpd.operations")
        self.errors = meter.create_counter("sftpd.errors")
        self.active = meter.create_up_down_counter("sftpd.sessions.active")
        self.duration = meter.create_histogram("sftpd.operation.duration", unit="s")
        self._sessions: dict[str, Any] = {}

    def detach(self) -> None:
        """Stop bridging; open session spans are ended."""
        super().detach()
        for span in self._sessions.values():
            span.end()
        self._sessions.clear()

    def handle(self, event: Event) -> None:
        """Record one event."""
        meta, measure = event.metadata, event.measurements
        session = event.session
        if event.area == "session" and session is not None:
            if event.action == "open":
                span = self.tracer.start_span(
                    "sftp.session",
                    kind=SpanKind.SERVER,
                    start_time=int(event.time * 1e9),
                    attributes={
                        "sftp.session.id": session.id,
                        "enduser.id": session.username,
                        "client.address": session.peer.host,
                        "client.port": session.peer.port,
                        "sftp.auth_method": session.auth_method,
                    },
                )
                self._sessions[session.id] = span
                self.active.add(1)
            elif event.action == "close":
                span = self._sessions.pop(session.id, None)
                if span is not None:
                    span.set_attribute("sftp.bytes_in", int(event.amount("bytes_in")))
                    span.set_attribute("sftp.bytes_out", int(event.amount("bytes_out")))
                    span.end(end_time=int(event.time * 1e9))
                self.active.add(-1)
            return
        if event.area != "sftp":
            return
        operation = event.action
        labels = {"sftp.operation": operation}
        duration_ns = int(event.amount("duration"))
        end = int(event.time * 1e9)
        parent = self._sessions.get(session.id) if session is not None else None
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = self.tracer.start_span(
            f"sftp.{operation}", context=context, start_time=end - duration_ns
        )
        for key, value in meta.items():
            if isinstance(value, _ATTRIBUTE_TYPES) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            ):
                span.set_attribute(f"sftp.{key}", value)
        if "bytes" in measure:
            span.set_attribute("sftp.bytes", int(measure["bytes"]))
        result = event.result
        if result in ("error", "exception"):
            span.set_status(Status(StatusCode.ERROR, event.text("reason")))
            self.errors.add(1, labels)
        span.end(end_time=end)
        self.operations.add(1, labels)
        self.duration.record(duration_ns / 1e9, labels)
        if operation == "write" and result == "ok":
            self.bytes_in.add(int(event.amount("bytes")))
        elif operation == "read":
            self.bytes_out.add(int(event.amount("bytes")))


def instrument(
    tracer_provider: Any = None, meter_provider: Any = None, bus: TelemetryBus | None = None
) -> OpenTelemetryBridge:
    """Bridge sftpd's telemetry to OpenTelemetry; returns the bridge (``detach()`` it)."""
    bridge = OpenTelemetryBridge(tracer_provider, meter_provider)
    bridge.attach(bus)
    return bridge
