"""End-to-end: webhooks reach a real HTTP server, signed, retried, never in a session's way."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from sftpd.testing import running_server
from sftpd.webhooks import Webhooks
from tests.conftest import connect

SECRET = "hook-secret"


class Receiver:
    """An HTTP server that fails the first two attempts of every delivery, then accepts."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        self.accepted: list[dict[str, Any]] = []
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                delivery = self.headers["X-Sftpd-Delivery"]
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(self.headers.get("X-Sftpd-Signature", ""), expected):
                    receiver.bad_signatures += 1
                tries = receiver.attempts[delivery] = receiver.attempts.get(delivery, 0) + 1
                if tries <= 2:
                    self.send_response(500)
                else:
                    event = self.headers["X-Sftpd-Event"]
                    receiver.accepted.append({"event": event, "delivery": delivery,
                                              **json.loads(body)})  # fmt: skip
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """The receiving HTTP server, running in a thread."""
    made = Receiver()
    thread = threading.Thread(target=made.http.serve_forever, daemon=True)
    thread.start()
    yield made
    made.http.shutdown()
    made.http.server_close()


async def test_each_event_arrives_once_signed_after_retries(receiver: Receiver) -> None:
    """An upload, a failed upload, a rename and a delete reach a receiver that fails two
    attempts of each: every event is accepted exactly once, correctly signed, with the
    audit fields, while the session's transfers went on undisturbed."""
    bus = telemetry.TelemetryBus()
    hooks = Webhooks([receiver.url], secret=SECRET, backoff=0.05)
    hooks.attach(bus)
    backend = sftpd.MemoryBackend()
    async with running_server(backend=backend, telemetry=bus, max_file_size=1000) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/a.txt", "wb") as f:
                await f.write(b"x" * 100)
            f = await sftp.open("/big.bin", "wb")
            with pytest.raises(asyncssh.SFTPFailure, match="at most 1000 bytes"):
                await f.write(b"y" * 2000)
            with pytest.raises(asyncssh.SFTPFailure, match="Upload failed"):
                await f.close()
            await sftp.rename("/a.txt", "/b.txt")
            await sftp.remove("/b.txt")
    for _ in range(200):
        if len(receiver.accepted) >= 4:
            break
        await asyncio.sleep(0.05)
    hooks.close()
    events = [(e["event"], e["path"], e["result"]) for e in receiver.accepted]
    assert events == [("upload", "/a.txt", "ok"), ("upload", "/big.bin", "error"),
                      ("rename", "/a.txt", "ok"), ("delete", "/b.txt", "ok")]  # fmt: skip
    assert receiver.accepted[2]["to"] == "/b.txt"
    assert receiver.accepted[0]["bytes"] == 100
    assert all(e["user"] == "dev" for e in receiver.accepted)
    assert receiver.bad_signatures == 0
    assert sorted(receiver.attempts.values()) == [3, 3, 3, 3]
    assert len({e["delivery"] for e in receiver.accepted}) == 4
    assert hooks.delivered == 4


def test_bad_webhook_urls_fail_at_start() -> None:
    """A URL that is not http(s) is a configuration error."""
    with pytest.raises(sftpd.ConfigError, match="must start with http"):
        Webhooks(["ftp://example.com/x"])
