"""Optional bridges from sftpd's telemetry to other systems (Prometheus, OpenTelemetry)."""
