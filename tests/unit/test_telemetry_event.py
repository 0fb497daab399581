"""Unit: an event's typed accessors, which the audit log and the metrics bridges read."""

from __future__ import annotations

from sftpd import telemetry


def test_event_accessors_read_the_name_the_result_and_values_with_defaults() -> None:
    """area/action split the name; result, text, flag and amount fall back when missing."""
    close = telemetry.Event(
        telemetry.SFTP_EVENTS["close"],
        {"duration": 1500, "bytes": 7},
        {"result": "error", "stored": False, "abandoned": True, "mode": "write"},
    )
    assert (close.area, close.action) == ("sftp", "close")
    assert close.result == "error"
    assert close.flag("abandoned")
    assert not close.flag("stored")
    assert not close.flag("missing")
    assert close.text("mode") == "write"
    assert close.text("reason", "none") == "none"
    assert close.amount("duration") == 1500.0
    assert close.amount("bytes_in") == 0.0
    opened = telemetry.Event(telemetry.SESSION_OPEN, {"duration": 0}, {"username": "ann"})
    assert (opened.area, opened.action, opened.result) == ("session", "open", "ok")
    short = telemetry.Event(("sftpd",), {}, {})
    assert (short.area, short.action) == ("", "")
