"""Unit: the SFTP engine parses, dispatches, orders and answers requests, fed raw bytes."""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sftpd
from sftpd import telemetry
from sftpd._binding import bind_backend
from sftpd._requests import Requests, SessionState, Settings
from sftpd._session import Peer
from sftpd._sftp import codec
from sftpd._sftp.engine import EXTENSION_NAMES, MAX_PACKET, ConnectionBudget, SftpEngine


@dataclass
class Wire:
    """A transport that keeps what the engine sends."""

    out: bytearray = field(default_factory=bytearray)
    closed: bool = False
    paused: bool = False

    def write(self, data: bytes) -> None:
        self.out += data

    def backlog(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def replies(self) -> list[tuple[int, int, bytes]]:
        """Every whole reply so far as (type, request id, rest); consumed."""
        found = []
        while len(self.out) >= 4:
            size = int.from_bytes(self.out[:4], "big")
            body = bytes(self.out[4 : 4 + size])
            del self.out[: 4 + size]
            found.append((body[0], int.from_bytes(body[1:5], "big"), body[5:]))
        return found


def pkt(kind: int, request_id: int, *fields: bytes) -> bytes:
    body = bytes([kind]) + struct.pack(">I", request_id) + b"".join(fields)
    return struct.pack(">I", len(body)) + body


def s(value: bytes) -> bytes:
    return codec.string(value)


INIT = struct.pack(">IBI", 5, codec.FXP_INIT, 3)


def make_engine(backend: object, **limits: int) -> tuple[SftpEngine, Wire]:
    bound = bind_backend(backend)
    session = sftpd.Session(username="dev", peer=Peer("127.0.0.1", 1))
    state = SessionState(session=session)
    settings = Settings(max_open_handles=limits.get("max_open_handles", 32))
    requests = Requests(bound, state, telemetry.TelemetryBus(), settings)
    wire = Wire()
    engine = SftpEngine(requests, wire, ConnectionBudget(256), concurrency=64)
    engine.data_received(INIT)
    return engine, wire


async def settle(engine: SftpEngine) -> None:
    for _ in range(3):
        await asyncio.sleep(0)
        await engine.wait_idle()


def status_of(reply: tuple[int, int, bytes]) -> int:
    kind, _, rest = reply
    assert kind == codec.FXP_STATUS, reply
    return int.from_bytes(rest[:4], "big")


async def test_version_names_only_what_the_backend_can_do() -> None:
    """VERSION lists the extensions served, from the backend's capabilities; never asyncssh's."""
    _, wire = make_engine(sftpd.MemoryBackend())
    body = bytes(wire.out[9:])
    names = set()
    parser = codec.Parser(body)
    while parser.rest():
        names.add(parser.string())
        parser.string()
    assert b"ranges@asyncssh.com" not in names
    assert b"fsync@openssh.com" not in names  # an upload is stored at close, not before
    assert {b"hardlink@openssh.com", b"statvfs@openssh.com", b"copy-data"} <= names
    assert b"vendor-id" in names
    assert b"sftpd" in wire.out

    class Minimal:
        def __init__(self) -> None:
            self._inner = sftpd.MemoryBackend()

        def __getattr__(self, name: str) -> object:
            if name not in {"stat", "list_dir", "make_dir", "remove_dir", "remove_file",
                            "rename", "read_file", "write_file"}:  # fmt: skip
                raise AttributeError(name)
            return getattr(self._inner, name)

    engine, wire = make_engine(Minimal())
    assert b"hardlink@openssh.com" not in wire.out
    assert b"statvfs@openssh.com" not in wire.out
    wire.out.clear()
    engine.data_received(pkt(codec.FXP_EXTENDED, 7, s(b"hardlink@openssh.com"), s(b"/a"), s(b"/b")))
    await settle(engine)
    assert [status_of(r) for r in wire.replies()] == [codec.FX_OP_UNSUPPORTED]


async def test_malformed_and_out_of_range_requests_get_clear_statuses() -> None:
    """Short fields get BAD_MESSAGE, offsets past 2**63 a failure, unknown types
    OP_UNSUPPORTED; the session goes on serving."""
    backend = sftpd.MemoryBackend({"/f": b"data"})
    engine, wire = make_engine(backend)
    wire.out.clear()
    engine.data_received(pkt(codec.FXP_OPEN, 1, s(b"/f"), struct.pack(">I", 1), b"\0\0\0\0"))
    await settle(engine)
    [(kind, _, rest)] = wire.replies()
    assert kind == codec.FXP_HANDLE
    handle = codec.Parser(rest).string()
    engine.data_received(pkt(codec.FXP_READ, 2, s(handle), struct.pack(">QI", 1 << 63, 10)))
    engine.data_received(pkt(codec.FXP_READ, 3, s(handle)[:-1]))
    engine.data_received(pkt(99, 4, b"whatever"))
    engine.data_received(pkt(codec.FXP_READ, 5, s(handle), struct.pack(">QI", 0, 10)))
    await settle(engine)
    replies = {rid: (kind, rest) for kind, rid, rest in wire.replies()}
    assert status_of((*replies[2][:1], 2, replies[2][1])) == codec.FX_FAILURE
    assert b"offset out of range" in replies[2][1]
    assert status_of((replies[3][0], 3, replies[3][1])) == codec.FX_BAD_MESSAGE
    assert status_of((replies[4][0], 4, replies[4][1])) == codec.FX_OP_UNSUPPORTED
    assert replies[5][0] == codec.FXP_DATA
    assert replies[5][1].endswith(b"data")
    assert not wire.closed


async def test_bad_framing_ends_the_session_as_openssh_does() -> None:
    """A packet longer than the limit (or empty) ends the session; nothing is dispatched."""
    engine, wire = make_engine(sftpd.MemoryBackend())
    wire.out.clear()
    engine.data_received(struct.pack(">I", MAX_PACKET + 1) + b"\x11")
    assert wire.closed
    assert wire.out == b""


class SlowBackend(sftpd.MemoryBackend):
    """Reads of /slow take a long time; everything else is instant."""

    def __init__(self) -> None:
        super().__init__({"/slow": b"s" * 10, "/fast": b"f" * 10})
        self.release = asyncio.Event()

    async def read_range(
        self, path: str, offset: int, length: int, session: sftpd.Session
    ) -> bytes:
        if path == "/slow":
            await self.release.wait()
        return await super().read_range(path, offset, length, session)


async def _open(engine: SftpEngine, wire: Wire, path: bytes, pflags: int, rid: int) -> bytes:
    engine.data_received(pkt(codec.FXP_OPEN, rid, s(path), struct.pack(">I", pflags), b"\0" * 4))
    await settle(engine)
    [(kind, _, rest)] = wire.replies()
    assert kind == codec.FXP_HANDLE
    return codec.Parser(rest).string()


async def test_a_slow_read_does_not_stall_another_handle() -> None:
    """While a read of one handle waits, a read of another handle is answered first."""
    backend = SlowBackend()
    engine, wire = make_engine(backend)
    wire.out.clear()
    slow = await _open(engine, wire, b"/slow", codec.FXF_READ, 1)
    fast = await _open(engine, wire, b"/fast", codec.FXF_READ, 2)
    engine.data_received(pkt(codec.FXP_READ, 10, s(slow), struct.pack(">QI", 0, 10)))
    engine.data_received(pkt(codec.FXP_READ, 11, s(fast), struct.pack(">QI", 0, 10)))
    await asyncio.sleep(0.05)
    assert [rid for _, rid, _ in wire.replies()] == [11]
    backend.release.set()
    await settle(engine)
    assert [rid for _, rid, _ in wire.replies()] == [10]


async def test_pipelined_write_then_stat_sees_the_write() -> None:
    """OPEN(create)+WRITE+STAT sent at once: STAT reports the file with the written size,
    as a sequential server would (sshfs relies on this)."""
    engine, wire = make_engine(sftpd.MemoryBackend())
    wire.out.clear()
    handle = await _open(engine, wire, b"/new", codec.FXF_WRITE | codec.FXF_CREAT, 1)
    engine.data_received(pkt(codec.FXP_WRITE, 2, s(handle), struct.pack(">Q", 0), s(b"x" * 7)))
    engine.data_received(pkt(codec.FXP_STAT, 3, s(b"/new")))
    engine.data_received(pkt(codec.FXP_CLOSE, 4, s(handle)))
    engine.data_received(pkt(codec.FXP_STAT, 5, s(b"/new")))
    await settle(engine)
    replies = {rid: (kind, rest) for kind, rid, rest in wire.replies()}
    for rid in (3, 5):
        kind, rest = replies[rid]
        assert kind == codec.FXP_ATTRS
        attrs = codec.Parser(rest).attrs()
        assert attrs.size == 7


class Gate(sftpd.MemoryBackend):
    """A backend that counts path operations running at once."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.most = 0

    async def make_dir(self, path: str, session: sftpd.Session) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.01)
        await super().make_dir(path, session)
        self.running -= 1


async def test_path_changes_keep_their_order() -> None:
    """MKDIR a, MKDIR a/b, RMDIR a/b, RMDIR a pipelined succeed in order, one at a time."""
    backend = Gate()
    engine, wire = make_engine(backend)
    wire.out.clear()
    for rid, (kind, path) in enumerate(
        [(codec.FXP_MKDIR, b"/a"), (codec.FXP_MKDIR, b"/a/b"),
         (codec.FXP_RMDIR, b"/a/b"), (codec.FXP_RMDIR, b"/a")], 1
    ):  # fmt: skip
        extra = b"\0\0\0\0" if kind == codec.FXP_MKDIR else b""
        engine.data_received(pkt(kind, rid, s(path), extra))
    await settle(engine)
    assert [status_of(r) for r in sorted(wire.replies(), key=lambda r: r[1])] == [0, 0, 0, 0]
    assert backend.most == 1


async def test_open_files_and_directories_share_one_limit() -> None:
    """OPENDIR counts against max_open_files; OPENDIR of a file or a missing path fails there."""
    engine, wire = make_engine(sftpd.MemoryBackend({"/f": b"x"}), max_open_handles=2)
    wire.out.clear()
    for rid in (1, 2, 3):
        engine.data_received(pkt(codec.FXP_OPENDIR, rid, s(b"/")))
    engine.data_received(pkt(codec.FXP_OPENDIR, 4, s(b"/f")))
    engine.data_received(pkt(codec.FXP_OPENDIR, 5, s(b"/missing")))
    await settle(engine)
    replies = sorted(wire.replies(), key=lambda r: r[1])
    assert [r[0] for r in replies[:2]] == [codec.FXP_HANDLE, codec.FXP_HANDLE]
    assert status_of(replies[2]) == codec.FX_FAILURE
    assert b"Too many open files" in replies[2][2]
    assert status_of(replies[3]) in (codec.FX_FAILURE, codec.FX_NO_SUCH_FILE)
    assert status_of(replies[4]) == codec.FX_NO_SUCH_FILE


async def test_expand_path_home_directory_and_owner_names() -> None:
    """expand-path takes ~ to the top, home-directory answers / for the session's user and
    users-groups-by-id names every id after the session's user."""
    engine, wire = make_engine(sftpd.MemoryBackend())
    wire.out.clear()
    engine.data_received(pkt(codec.FXP_EXTENDED, 1, s(b"expand-path@openssh.com"), s(b"~/a/../b")))
    engine.data_received(pkt(codec.FXP_EXTENDED, 2, s(b"home-directory"), s(b"dev")))
    engine.data_received(pkt(codec.FXP_EXTENDED, 3, s(b"home-directory"), s(b"root")))
    ids = s(struct.pack(">II", 0, 1000))
    engine.data_received(pkt(codec.FXP_EXTENDED, 4, s(b"users-groups-by-id@openssh.com"), ids, ids))
    await settle(engine)
    replies = {rid: (kind, rest) for kind, rid, rest in wire.replies()}

    def name(rid: int) -> bytes:
        kind, rest = replies[rid]
        assert kind == codec.FXP_NAME
        parser = codec.Parser(rest)
        assert parser.u32() == 1
        return parser.string()

    assert name(1) == b"/b"
    assert name(2) == b"/"
    assert status_of((replies[3][0], 3, replies[3][1])) == codec.FX_NO_SUCH_FILE
    kind, rest = replies[4]
    assert kind == codec.FXP_EXTENDED_REPLY
    users = codec.Parser(codec.Parser(rest).string())
    assert [users.string(), users.string()] == [b"dev", b"dev"]


# ------------------------------------------------------------------ fuzzing

PATHS = [b"/", b"/f", b"/d", b"/d/x", b"../../etc/passwd", b"/\xff\xfe", b"a" * 5000, b"", b"//"]


def _requests(handles: list[bytes]) -> st.SearchStrategy[bytes]:
    """Valid request bodies (after type and id) for every packet type and extension."""
    path = st.sampled_from(PATHS)
    handle = st.sampled_from([*handles, b"", b"999", b"\xff" * 300])
    number = st.sampled_from(
        [0, 1, 255 << 10, (1 << 32) - 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    )
    u32 = st.integers(0, (1 << 32) - 1)
    attrs = st.builds(
        lambda flags, size, rest: struct.pack(">I", flags) + struct.pack(">Q", size) + rest,
        u32, st.integers(0, (1 << 64) - 1), st.binary(max_size=24),
    )  # fmt: skip
    data = st.binary(max_size=64)
    by_kind: dict[int, st.SearchStrategy[bytes]] = {
        codec.FXP_OPEN: st.builds(
            lambda p, f, a: s(p) + struct.pack(">I", f) + a, path, u32, attrs
        ),
        codec.FXP_CLOSE: handle.map(s),
        codec.FXP_READ: st.builds(
            lambda h, o, n: s(h) + struct.pack(">QI", o, n & 0xFFFFFFFF), handle, number, u32
        ),
        codec.FXP_WRITE: st.builds(
            lambda h, o, d: s(h) + struct.pack(">Q", o) + s(d), handle, number, data
        ),
        codec.FXP_FSTAT: handle.map(s),
        codec.FXP_FSETSTAT: st.builds(lambda h, a: s(h) + a, handle, attrs),
        codec.FXP_READDIR: handle.map(s),
        codec.FXP_OPENDIR: path.map(s),
        codec.FXP_SETSTAT: st.builds(lambda p, a: s(p) + a, path, attrs),
        codec.FXP_RENAME: st.builds(lambda a, b: s(a) + s(b), path, path),
        codec.FXP_SYMLINK: st.builds(lambda a, b: s(a) + s(b), path, path),
    }
    for kind in (codec.FXP_LSTAT, codec.FXP_STAT, codec.FXP_REMOVE, codec.FXP_RMDIR,
                 codec.FXP_REALPATH, codec.FXP_READLINK):  # fmt: skip
        by_kind[kind] = path.map(s)
    by_kind[codec.FXP_MKDIR] = st.builds(lambda p, a: s(p) + a, path, attrs)
    extended = st.builds(
        lambda name, rest: s(name) + rest,
        st.sampled_from([*sorted(EXTENSION_NAMES), b"ranges@asyncssh.com", b"nope"]),
        st.lists(st.one_of(path.map(s), handle.map(s), number.map(lambda n: struct.pack(">Q", n))),
                 max_size=5).map(b"".join),
    )  # fmt: skip
    by_kind[codec.FXP_EXTENDED] = extended
    return st.one_of(*[body.map(functools.partial(_typed, kind)) for kind, body in by_kind.items()])


def _typed(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + body


def _mutate(packet: bytes, how: int, where: int, junk: bytes) -> bytes:
    if how == 0 or not packet:
        return packet
    cut = where % (len(packet) + 1)
    if how == 1:
        return packet[: max(1, cut)]  # truncated
    if how == 2:
        return packet + junk  # trailing bytes
    if how == 3:  # a length field made huge
        return packet[:cut] + b"\xff\xff\xff\xf0" + packet[cut + 4 :]
    return bytes([packet[0]]) + junk  # random body


@st.composite
def sessions(draw: st.DrawFn) -> list[bytes]:
    handles = [b"1", b"2", b"3"]
    count = draw(st.integers(1, 25))
    packets = []
    for _ in range(count):
        body = draw(_requests(handles))
        how = draw(st.integers(0, 4))
        packets.append(_mutate(body, how, draw(st.integers(0, 400)), draw(st.binary(max_size=40))))
    return packets


async def _fuzz(packets: list[bytes]) -> tuple[bool, list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(level=logging.ERROR)
    logger = logging.getLogger("sftpd")
    logger.addHandler(keep)
    try:
        backend = sftpd.MemoryBackend({"/f": b"content", "/d/x": b"x"})
        engine, wire = make_engine(backend)
        wire.out.clear()
        engine.data_received(pkt(codec.FXP_OPEN, 1, s(b"/f"), struct.pack(">I", 1), b"\0" * 4))
        engine.data_received(pkt(codec.FXP_OPEN, 2, s(b"/w"), struct.pack(">I", 0x1A), b"\0" * 4))
        engine.data_received(pkt(codec.FXP_OPENDIR, 3, s(b"/")))
        await settle(engine)
        assert [r[0] for r in wire.replies()] == [codec.FXP_HANDLE] * 3
        for number, body in enumerate(packets, 100):
            framed = bytes([body[0]]) + struct.pack(">I", number) + body[1:]
            engine.data_received(struct.pack(">I", len(framed)) + framed)
        await settle(engine)
        wire.out.clear()
        engine.data_received(pkt(codec.FXP_REALPATH, 7, s(b"/a/..")))
        await settle(engine)
        alive = [r[0] for r in wire.replies()] == [codec.FXP_NAME] and not wire.closed
        await engine.connection_lost()
    finally:
        logger.removeHandler(keep)
    return alive, records


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(sessions())
def test_fuzzed_requests_never_raise_unexpectedly(packets: list[bytes]) -> None:
    """Mutated requests of every type (truncated, huge numbers, forged handles, odd paths,
    every extension, random bodies) are answered; nothing is logged as unexpected and the
    session still serves a request afterwards. Seeded, so every run tries the same cases."""
    alive, records = asyncio.run(_fuzz(packets))
    assert [r.getMessage() for r in records] == []
    assert alive
