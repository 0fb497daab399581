"""End-to-end: a small seeded run of the packet fuzzing harness (benchmarks/fuzz_sftp.py)."""

from __future__ import annotations

from benchmarks import fuzz_sftp


async def test_seeded_packet_fuzzing_finds_nothing_and_reaches_every_corner() -> None:
    """20 000 mutated packets over three sessions at once: the server stays up, logs no
    error, answers every probe, never sends Python text, keeps the control client's files
    intact and everything outside the fuzz root unchanged, while the packets reached far
    enough to get handles and a spread of statuses."""
    report = await fuzz_sftp.run(packets=20_000, sessions=3, seed=20261201, seconds=50)
    assert report.packets >= 20_000, report
    assert report.server_crashes == 0
    assert report.log_errors == 0, report.error_lines
    assert report.log_tracebacks == 0, report.log_exceptions
    assert report.probe_timeouts == 0, (report.error_lines, report.stuck_batches)
    assert report.python_text_replies == 0, report.error_lines
    assert report.malformed_replies == 0
    assert report.control_checks > 10
    assert report.control_failures == 0, report.error_lines
    assert report.sentinel_unchanged
    assert report.outside_unchanged
    # The run was not idle: handles were opened, lying lengths ended sessions, and the
    # server answered OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, BAD_MESSAGE and
    # OP_UNSUPPORTED.
    assert report.handles_seen > 100
    assert report.sessions_ended_by_server >= report.lying_lengths_sent > 0
    assert {"0", "1", "2", "3", "4", "5", "8"} <= set(report.statuses)
    assert report.ok
