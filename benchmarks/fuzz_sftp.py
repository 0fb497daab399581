"""Packet fuzzing of sftpd's SFTP engine over real SSH channels, as a standing harness.

    python -m benchmarks.fuzz_sftp [--packets 1000000] [--sessions 4] [--seed 1]
                                   [--seconds 3600] [--json REPORT.json]

It starts sftpd in a process of its own (local backend, its log in a file) with two users:
``fuzz``, confined to ``/fuzz``, and ``control``, confined to ``/control``. Beside the
backend's root lies a sentinel directory that no session can name. Then, at once:

* ``--sessions`` fuzzing sessions send raw SFTP packets over their own SSH connection:
  valid requests of every type and every extension name, each mutated by chance (cut
  short, trailing garbage, boundary numbers, lying string lengths, flipped bits, random
  bodies, forged and stale handles, paths that try to climb out, lying packet lengths).
  Every 64 packets a probe (REALPATH) must be answered within 30 s. A session the server
  ends (it must, for a lying packet length) is counted and replaced.
* a control client uploads and downloads files and compares them byte for byte.

It stops after ``--packets`` packets or ``--seconds``, whichever comes first, and reports:
packets sent, replies, sessions ended by the server, server crashes, ERROR lines and
tracebacks in the server's log, replies carrying Python text, probe timeouts, control
checks, the server's RSS over time, and whether anything outside the fuzz user's root
changed. Exit status 1 if any check failed. ``run()`` is what the test suite calls, with a
small count and a fixed seed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from benchmarks._common import peak_rss_mib

KEEP = "the fuzz user must not reach this\n"
PROBE_EVERY = 64
PROBE_TIMEOUT = 30.0
PYTHON_TEXT = re.compile(
    rb"Traceback|NoneType|has no attribute|positional argument|unexpected keyword|\.py\b|"
    rb"Errno|object at 0x"
)
BOUNDARY_U32 = (0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
BOUNDARY_U64 = (0, 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1)
EXTENSIONS = (
    b"posix-rename@openssh.com", b"hardlink@openssh.com", b"lsetstat@openssh.com",
    b"statvfs@openssh.com", b"fstatvfs@openssh.com", b"limits@openssh.com",
    b"expand-path@openssh.com", b"home-directory", b"users-groups-by-id@openssh.com",
    b"copy-data", b"fsync@openssh.com", b"check-file-name", b"check-file-handle",
    b"space-available", b"copy-file", b"md5-hash", b"vendor-id", b"", b"\xff\x00bad",
)  # fmt: skip
NAMES = [f"f{i}".encode() for i in range(12)] + [b"d0", b"d1", b"d0/f0", b"d1/d2", b"l0", b"l1"]
ODD_PATHS = [
    b"", b".", b"..", b"/", b"//", b"../..", b"../../..", b"/../sentinel", b"../sentinel",
    b"../../sentinel/canary.txt", b"/fuzz/../../sentinel", b"d0/../../..", b"a\x00b",
    b"\xff\xfe\xfd", b"x" * 4096, b"/" * 300, b"\\..\\..\\sentinel", b"~", b"~root",
    b"/proc/self/environ", b"/etc/passwd", b"d0/./../d1/../../..", b"../control/c0.bin",
    "ünïcødé".encode(), b"con", b"a/" * 200,
]  # fmt: skip


def _u32(value: int) -> bytes:
    return struct.pack(">I", value & 0xFFFFFFFF)


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value & 0xFFFFFFFFFFFFFFFF)


@dataclass
class _Fuzzer:
    """Builds one session's packets from a seeded generator; knows the handles it got."""

    rng: random.Random
    handles: list[bytes] = field(default_factory=list)
    stale: list[bytes] = field(default_factory=list)
    next_id: int = 1

    def u32(self, value: int) -> bytes:
        return _u32(self.rng.choice(BOUNDARY_U32) if self.rng.random() < 0.05 else value)

    def u64(self, value: int) -> bytes:
        return _u64(self.rng.choice(BOUNDARY_U64) if self.rng.random() < 0.05 else value)

    def string(self, value: bytes) -> bytes:
        rng = self.rng
        if rng.random() < 0.03:  # a lying length: longer, shorter or huge
            return _u32(rng.choice((len(value) + 1, max(0, len(value) - 1), 0xFFFFFFFF))) + value
        return _u32(len(value)) + value

    def path(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            name = rng.choice(NAMES)
            return b"/" + name if rng.random() < 0.5 else name
        if roll < 0.9:
            return rng.choice(ODD_PATHS)
        return rng.randbytes(rng.randrange(0, 40))

    def handle(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.7 and self.handles:
            return rng.choice(self.handles)
        if roll < 0.8 and self.stale:
            return rng.choice(self.stale)
        if roll < 0.9:
            return str(rng.randrange(0, 10_000)).encode()  # forged, guessable
        return rng.randbytes(rng.randrange(0, 300))

    def attrs(self) -> bytes:
        rng = self.rng
        flags = rng.choice((0, 1, 4, 8, 13, 15, 0x80000000, rng.getrandbits(32)))
        out = self.u32(flags)
        if flags & 1:
            out += self.u64(rng.randrange(0, 1 << 20))
        if flags & 2:
            out += self.u32(rng.randrange(0, 70000)) + self.u32(rng.randrange(0, 70000))
        if flags & 4:
            out += self.u32(rng.choice((0o644, 0o755, 0o4755, 0o777, 0o170777, 0)))
        if flags & 8:
            out += self.u32(rng.getrandbits(32)) + self.u32(rng.getrandbits(32))
        if flags & 0x80000000:
            count = rng.choice((0, 1, 2, 0xFFFFFFFF))
            out += _u32(count)
            for _ in range(min(count, 3)):
                out += self.string(b"ext@x") + self.string(rng.randbytes(4))
        return out

    def body(self) -> tuple[int, bytes]:
        """A request's type and fields after the id."""
        rng = self.rng
        kind = rng.choice((3, 3, 4, 5, 5, 6, 6, 7, 8, 9, 10, 11, 12, 12, 13, 14, 15, 16, 17,
                           18, 19, 20, 200, 200, 200, 1, 0, 2, 101, 255))  # fmt: skip
        if kind == 3:  # OPEN
            pflags = rng.choice((1, 2, 3, 0x1A, 0x0A, 0x2A, 0x3F, rng.getrandbits(32)))
            return kind, self.string(self.path()) + self.u32(pflags) + self.attrs()
        if kind in (4, 8, 12):  # CLOSE, FSTAT, READDIR
            return kind, self.string(self.handle())
        if kind == 5:  # READ
            return kind, (self.string(self.handle()) + self.u64(rng.randrange(0, 1 << 16))
                          + self.u32(rng.choice((0, 1, 4096, 32768, 261120, 1 << 20))))  # fmt: skip
        if kind == 6:  # WRITE
            data = rng.randbytes(rng.choice((0, 1, 100, 4096, 32768)))
            return kind, (self.string(self.handle()) + self.u64(rng.randrange(0, 1 << 16))
                          + self.string(data))  # fmt: skip
        if kind in (7, 11, 13, 15, 16, 17, 19):  # path-only requests
            return kind, self.string(self.path())
        if kind in (9, 14):  # SETSTAT, MKDIR
            return kind, self.string(self.path()) + self.attrs()
        if kind == 10:  # FSETSTAT
            return kind, self.string(self.handle()) + self.attrs()
        if kind in (18, 20):  # RENAME, SYMLINK
            return kind, self.string(self.path()) + self.string(self.path())
        if kind == 200:
            return kind, self.extended()
        return kind, rng.randbytes(rng.randrange(0, 64))  # INIT again, replies, unknown

    def extended(self) -> bytes:
        rng = self.rng
        name = rng.choice(EXTENSIONS)
        if rng.random() < 0.05:
            name = rng.randbytes(rng.randrange(1, 30))
        out = self.string(name)
        if name in (b"posix-rename@openssh.com", b"hardlink@openssh.com"):
            return out + self.string(self.path()) + self.string(self.path())
        if name == b"lsetstat@openssh.com":
            return out + self.string(self.path()) + self.attrs()
        if name in (b"statvfs@openssh.com", b"expand-path@openssh.com", b"check-file-name"):
            return out + self.string(self.path()) + self.string(b"md5,sha256")
        if name in (b"fstatvfs@openssh.com", b"fsync@openssh.com", b"check-file-handle"):
            return out + self.string(self.handle())
        if name == b"home-directory":
            return out + self.string(rng.choice((b"fuzz", b"control", b"root", b"")))
        if name == b"users-groups-by-id@openssh.com":
            count = rng.choice((0, 1, 3, 0xFFFFFFFF))
            ids = b"".join(_u32(rng.getrandbits(32)) for _ in range(min(count, 3)))
            return out + self.string(_u32(count) + ids) + self.string(_u32(0))
        if name == b"copy-data":
            source = self.string(self.handle()) + self.u64(rng.randrange(0, 1 << 16))
            length = self.u64(rng.choice((0, 1, 4096, 2**64 - 1)))
            target = self.string(self.handle()) + self.u64(rng.randrange(0, 1 << 16))
            return out + source + length + target
        return out + rng.randbytes(rng.randrange(0, 32))

    def packet(self) -> bytes:
        """One packet, mutated by chance."""
        rng = self.rng
        kind, fields = self.body()
        request = self.next_id
        self.next_id = (self.next_id + 1) % 0xFFFF0000 or 1
        body = bytes([kind]) + _u32(request) + fields
        roll = rng.random()
        if roll < 0.05 and len(body) > 5:  # cut short, now and then into the id
            body = body[: rng.randrange(1 if rng.random() < 0.05 else 5, len(body))]
        elif roll < 0.08:  # trailing garbage
            body += rng.randbytes(rng.randrange(1, 64))
        elif roll < 0.11:  # flipped bits
            raw = bytearray(body)
            for _ in range(rng.randrange(1, 4)):
                spot = rng.randrange(len(raw))
                raw[spot] ^= 1 << rng.randrange(8)
            body = bytes(raw)
        elif roll < 0.12:  # random body behind a plausible type
            body = bytes([kind]) + rng.randbytes(rng.randrange(0, 200))
        return _u32(len(body)) + body

    def lying_packet(self) -> bytes:
        """A packet whose length the server must refuse: zero or far over the maximum."""
        return _u32(self.rng.choice((0, (1 << 20) + 2048, 0x7FFFFFFF, 0xFFFFFFFF))) + b"\x05"


@dataclass
class Report:
    """What one fuzzing run measured."""

    seed: int
    packets: int = 0
    replies: int = 0
    handles_seen: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    sessions_started: int = 0
    sessions_ended_by_server: int = 0
    lying_lengths_sent: int = 0
    probe_timeouts: int = 0
    malformed_replies: int = 0
    python_text_replies: int = 0
    server_crashes: int = 0
    log_errors: int = 0
    log_tracebacks: int = 0
    log_warnings: int = 0
    log_exceptions: dict[str, int] = field(default_factory=dict)  # last line: count
    control_checks: int = 0
    control_failures: int = 0
    rss_mib: list[tuple[float, float]] = field(default_factory=list)
    rss_first_mib: float = 0.0
    rss_max_mib: float = 0.0
    rss_last_mib: float = 0.0
    sentinel_unchanged: bool = False
    outside_unchanged: bool = False
    seconds: float = 0.0
    fuzz_seconds: float = 0.0
    error_lines: list[str] = field(default_factory=list)
    stuck_batches: list[list[str]] = field(default_factory=list)  # packets before a timeout

    @property
    def ok(self) -> bool:
        """Every check held."""
        return (self.server_crashes == 0 and self.log_errors == 0 and self.log_tracebacks == 0
                and self.python_text_replies == 0 and self.malformed_replies == 0
                and self.probe_timeouts == 0 and self.control_failures == 0
                and self.control_checks > 0 and self.sentinel_unchanged
                and self.outside_unchanged)  # fmt: skip


class _Session(asyncssh.SSHClientSession[bytes]):
    """One raw sftp channel: parses every reply, remembers handles, wakes probe waiters."""

    def __init__(self, fuzzer: _Fuzzer, report: Report) -> None:
        self.fuzzer = fuzzer
        self.report = report
        self.buffer = bytearray()
        self.version = asyncio.get_running_loop().create_future()
        self.probes: dict[int, asyncio.Future[None]] = {}
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.buffer += data
        buffer = self.buffer
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if size < 1 or size > (256 << 10) + 1024:
                self.report.malformed_replies += 1
                buffer.clear()
                return
            if len(buffer) < 4 + size:
                return
            body = bytes(buffer[4 : 4 + size])
            del buffer[: 4 + size]
            self.reply(body)

    def reply(self, body: bytes) -> None:
        report = self.report
        kind = body[0]
        if kind == 2:
            if not self.version.done():
                self.version.set_result(None)
            return
        report.replies += 1
        if kind not in (101, 102, 103, 104, 105, 201) or len(body) < 5:
            report.malformed_replies += 1
            return
        request = int.from_bytes(body[1:5], "big")
        if kind == 101:
            if len(body) < 9:
                report.malformed_replies += 1
                return
            code = int.from_bytes(body[5:9], "big")
            report.statuses[str(code)] = report.statuses.get(str(code), 0) + 1
            if PYTHON_TEXT.search(body[9:]):
                report.python_text_replies += 1
                report.error_lines.append(f"reply: {body[9:200]!r}")
        elif kind == 102:
            report.handles_seen += 1
            handle = body[9 : 9 + int.from_bytes(body[5:9], "big")]
            fuzzer = self.fuzzer
            fuzzer.handles.append(handle)
            if len(fuzzer.handles) > 24:  # keep a few old ones: stale after their close
                fuzzer.stale.append(fuzzer.handles.pop(0))
                del fuzzer.stale[:-24]
        waiter = self.probes.pop(request, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for waiter in self.probes.values():
            if not waiter.done():
                waiter.cancel()


async def _fuzz_session(port: int, seed: int, report: Report, budget: Callable[[], bool]) -> None:
    """Fuzz over one connection after another until ``budget()`` says stop."""
    rng = random.Random(seed)
    while budget():
        fuzzer = _Fuzzer(rng)

        def make_session(fuzzer: _Fuzzer = fuzzer) -> _Session:
            return _Session(fuzzer, report)

        try:
            conn = await asyncssh.connect(
                "127.0.0.1", port, username="fuzz", password="fuzz", known_hosts=None,
                client_keys=None, preferred_auth="password",
            )  # fmt: skip
        except (OSError, asyncssh.Error) as exc:
            report.error_lines.append(f"connect failed: {exc!r}")
            await asyncio.sleep(0.5)
            continue
        report.sessions_started += 1
        async with conn:
            chan, session = await conn.create_session(make_session, subsystem="sftp", encoding=None)
            assert isinstance(session, _Session)
            chan.write(_u32(5) + b"\x01" + _u32(3))
            await asyncio.wait_for(session.version, PROBE_TIMEOUT)
            ended = await _send_batches(chan, session, fuzzer, report, budget)
            if ended:
                report.sessions_ended_by_server += 1


async def _send_batches(
    chan: Any, session: _Session, fuzzer: _Fuzzer, report: Report, budget: Callable[[], bool]
) -> bool:
    """Send batches until the server ends the channel (True) or the budget is spent."""
    rng = fuzzer.rng
    probe = 0xFFFF0000
    while budget():
        if session.closed.done():
            return True
        packets = [fuzzer.packet() for _ in range(PROBE_EVERY)]
        lying = rng.random() < 0.01
        if lying:
            packets.append(fuzzer.lying_packet())
            report.lying_lengths_sent += 1
        probe = probe + 1 if probe < 0xFFFFFFFF else 0xFFFF0000
        waiter = asyncio.get_running_loop().create_future()
        session.probes[probe] = waiter
        packets.append(_u32(10) + b"\x10" + _u32(probe) + _u32(1) + b".")  # REALPATH "."
        report.packets += len(packets)
        try:
            chan.write(b"".join(packets))
        except (OSError, asyncssh.Error):
            return True
        if lying:  # the server must end this channel: wait for it, no reply is due
            try:
                await asyncio.wait_for(asyncio.shield(session.closed), PROBE_TIMEOUT)
            except TimeoutError:
                report.probe_timeouts += 1
                report.error_lines.append("a lying packet length did not end the channel")
            return True
        try:
            await asyncio.wait_for(waiter, PROBE_TIMEOUT)
        except asyncio.CancelledError:
            if session.closed.done():  # a flipped byte made a length the server refused
                return True
            raise
        except TimeoutError:
            if session.closed.done():
                return True
            report.probe_timeouts += 1
            report.error_lines.append(f"probe {probe} unanswered for {PROBE_TIMEOUT} s")
            report.stuck_batches.append([p.hex() for p in packets])
            return False
    return False


async def _control(port: int, seed: int, report: Report, running: Callable[[], bool]) -> None:
    """Upload, download and compare files, byte for byte, while the fuzzing goes on."""
    rng = random.Random(seed ^ 0xC0)
    async with asyncssh.connect(
        "127.0.0.1", port, username="control", password="control", known_hosts=None,
        client_keys=None, preferred_auth="password",
    ) as conn, conn.start_sftp_client() as sftp:  # fmt: skip
        number = 0
        while running() or number == 0:
            data = rng.randbytes(rng.choice((0, 1, 1000, 65536, 300_000)))
            name = f"/c{number % 8}.bin"
            number += 1
            try:
                async with sftp.open(name, "wb") as f:
                    await f.write(data)
                async with sftp.open(name, "rb") as f:
                    back = await f.read()
                same = isinstance(back, bytes) and hashlib.sha256(back).digest() == (
                    hashlib.sha256(data).digest()
                )
                good = same and (await sftp.stat(name)).size == len(data)
            except (OSError, asyncssh.Error) as exc:
                report.error_lines.append(f"control: {exc!r}")
                good = False
            report.control_checks += 1
            report.control_failures += 0 if good else 1


def _tree_digest(top: Path) -> str:
    """sha256 over every name, type, mode, size and content under ``top``."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = here / name
            info = path.lstat()
            digest.update(f"{path.relative_to(top)}|{info.st_mode}|{info.st_size}".encode())
            if path.is_file() and not path.is_symlink():
                digest.update(path.read_bytes())
            elif path.is_symlink():
                digest.update(os.readlink(path).encode())
    return digest.hexdigest()


SERVER = """
import asyncio, logging, sys
import sftpd
root, keys, log = sys.argv[1:4]
logging.basicConfig(filename=log, level=logging.WARNING,
                    format="%(levelname)s %(name)s: %(message)s")
class Users:
    def authenticate_password(self, username, password, peer):
        if username == password and username in ("fuzz", "control"):
            return {"root": "/" + username}
        return None
async def main():
    async with sftpd.Server(
        backend=sftpd.LocalBackend(root), auth=Users(), system_dir=keys, port=0,
        max_sessions=64, connection_rate=None, max_unauthenticated_per_address=None,
        max_file_size=256 << 20, idle_timeout=None, shutdown_grace=2,
    ) as server:
        print(server.port, flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


def _prepare(work: Path) -> tuple[Path, Path, Path]:
    """Backend root with both users' directories, a sentinel beside it, and a host key."""
    root, sentinel, keys = work / "root", work / "sentinel", work / "keys"
    for directory in (root / "fuzz", root / "control", sentinel / "inner", keys):
        directory.mkdir(parents=True)
    (sentinel / "canary.txt").write_text("must never change\n")
    (sentinel / "inner" / "deep.bin").write_bytes(os.urandom(4096))
    (root / "control" / "keep.txt").write_text(KEEP)
    os.symlink("../../sentinel", root / "fuzz" / "l0")  # a link that points outside
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(
        str(keys / "ssh_host_ed25519_key")
    )
    return root, sentinel, keys


async def run(
    packets: int = 1_000_000,
    sessions: int = 4,
    seed: int = 1,
    seconds: float = 3600.0,
    rss_every: float = 2.0,
    keep_log: Path | None = None,
) -> Report:
    """Run the whole harness once and return what it measured."""
    report = Report(seed=seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sftpd-fuzz-") as tmp:
        work = Path(tmp)
        root, sentinel, keys = _prepare(work)
        sentinel_before = _tree_digest(sentinel)
        log = work / "server.log"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVER, str(root), str(keys), str(log),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            port = int(await proc.stdout.readline())

            def budget() -> bool:
                return (report.packets < packets and time.monotonic() - started < seconds
                        and proc.returncode is None)  # fmt: skip

            def sample() -> None:
                when = round(time.monotonic() - started, 1)
                report.rss_mib.append((when, round(peak_rss_mib(proc.pid, "VmRSS"), 1)))

            async def sample_rss() -> None:
                while budget():
                    sample()
                    await asyncio.sleep(rss_every)

            tasks = [_fuzz_session(port, seed * 1000 + i, report, budget) for i in range(sessions)]
            await asyncio.gather(*tasks, _control(port, seed, report, budget), sample_rss())
            report.fuzz_seconds = round(time.monotonic() - started, 1)
            if proc.returncode is not None:
                report.server_crashes += 1
            else:
                sample()
                # Still serving after all that: one more control check.
                await _control(port, seed + 1, report, lambda: False)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
        _check_after(report, work, sentinel_before, keep_log)
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _check_after(report: Report, work: Path, sentinel_before: str, keep_log: Path | None) -> None:
    """Compare the sentinel and the other user's files, read the server's log, sum up RSS."""
    root = work / "root"
    report.sentinel_unchanged = _tree_digest(work / "sentinel") == sentinel_before
    # Outside the fuzz user's root: only what the control client wrote may differ.
    control = sorted(p.name for p in (root / "control").iterdir())
    report.outside_unchanged = (
        sorted(p.name for p in work.iterdir()) == ["keys", "root", "sentinel", "server.log"]
        and sorted(p.name for p in root.iterdir()) == ["control", "fuzz"]
        and (root / "control" / "keep.txt").read_text() == KEEP
        and all(name == "keep.txt" or re.fullmatch(r"c[0-7]\.bin", name) for name in control)
    )
    log = work / "server.log"
    if keep_log is not None:
        keep_log.write_bytes(log.read_bytes())
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(("ERROR", "CRITICAL")):
            report.log_errors += 1
            report.error_lines.append(line[:300])
        elif line.startswith("WARNING"):
            report.log_warnings += 1
        elif line.startswith("Traceback"):
            report.log_tracebacks += 1
        elif line and not line.startswith((" ", "During handling", "The above")):
            kind = line[:160]  # the exception a traceback ends with
            report.log_exceptions[kind] = report.log_exceptions.get(kind, 0) + 1
    samples = [rss for _, rss in report.rss_mib]
    if samples:
        warm = samples[min(len(samples) - 1, max(1, len(samples) // 10))]
        report.rss_first_mib, report.rss_max_mib = warm, max(samples)
        report.rss_last_mib = samples[-1]
    del report.error_lines[50:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--log", type=Path, default=None, help="keep the server's log here")
    args = parser.parse_args()
    report = asyncio.run(run(args.packets, args.sessions, args.seed, args.seconds, 10.0, args.log))
    summary = {k: v for k, v in asdict(report).items() if k != "rss_mib"}
    print(json.dumps(summary, indent=1))
    print("RSS (s, MiB):", " ".join(f"{t:.0f}:{m:.0f}" for t, m in report.rss_mib))
    rate = report.packets / report.fuzz_seconds if report.fuzz_seconds else 0.0
    print(f"{report.packets} packets in {report.fuzz_seconds} s ({rate:.0f}/s); "
          f"RSS {report.rss_first_mib:.0f} MiB after warm-up, max {report.rss_max_mib:.0f}, "
          f"last {report.rss_last_mib:.0f}; {'OK' if report.ok else 'FAILED'}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=1))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
