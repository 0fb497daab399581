"""End-to-end: per-path permissions, denied and hidden names, and true drop boxes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sftpd
from sftpd import telemetry
from sftpd._binding import bind_backend
from sftpd._permissions import OPERATIONS
from sftpd._requests import Requests, SessionState, Settings
from sftpd._sftp import codec
from sftpd._sftp.codec import WireAttrs
from sftpd.audit import AuditLog
from sftpd.auth import StaticPasswords
from sftpd.errors import SftpStatus
from sftpd.paths import unscope
from sftpd.testing import running_server
from tests.conftest import connect

Attempt = Callable[[asyncssh.SFTPClient, str], Coroutine[Any, Any, Any]]


async def _upload(sftp: asyncssh.SFTPClient, d: str) -> None:
    async with sftp.open(f"{d}/new.txt", "wb") as f:
        await f.write(b"new")


async def _overwrite(sftp: asyncssh.SFTPClient, d: str) -> None:
    async with sftp.open(f"{d}/file.txt", "wb") as f:
        await f.write(b"over")


async def _download(sftp: asyncssh.SFTPClient, d: str) -> None:
    async with sftp.open(f"{d}/file.txt", "rb") as f:
        await f.read()


ATTEMPTS: dict[str, Attempt] = {
    "list": lambda sftp, d: sftp.listdir(d),
    "download": _download,
    "upload": _upload,
    "overwrite": _overwrite,
    "delete": lambda sftp, d: sftp.remove(f"{d}/file.txt"),
    "rename": lambda sftp, d: sftp.rename(f"{d}/file.txt", f"{d}/moved.txt"),
    "mkdir": lambda sftp, d: sftp.mkdir(f"{d}/sub"),
    "rmdir": lambda sftp, d: sftp.rmdir(f"{d}/empty"),
    "setstat": lambda sftp, d: sftp.chmod(f"{d}/file.txt", 0o600),
    "symlink": lambda sftp, d: sftp.symlink("file.txt", f"{d}/link"),
    "link": lambda sftp, d: sftp.link(f"{d}/file.txt", f"{d}/hard"),
}


def _tree(root: Path) -> None:
    for folder in ("yes", "no"):
        (root / folder / "empty").mkdir(parents=True)
        (root / folder / "file.txt").write_bytes(b"old")


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_each_operation_is_allowed_exactly_where_a_rule_allows_it(
    operation: str, tmp_path: Path
) -> None:
    """Matrix: under /yes only ``operation`` is allowed (a hard link also needs download
    at its source: a second name must not make a file readable) and it succeeds; under
    /no every operation but it is allowed, and it is refused with "permission denied"."""
    assert set(ATTEMPTS) == set(OPERATIONS)
    _tree(tmp_path)
    others = [op for op in OPERATIONS if op != operation]
    needs = ["download"] if operation == "link" else []
    rules = {"/": [], "/yes": [operation, *needs], "/no": others}
    auth = StaticPasswords({"dev": "dev"}, {"dev": {"permissions": rules}})
    async with running_server(backend=sftpd.LocalBackend(tmp_path), auth=auth) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            await ATTEMPTS[operation](sftp, "/yes")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await ATTEMPTS[operation](sftp, "/no")
    assert (tmp_path / "no" / "file.txt").read_bytes() == b"old"
    assert sorted(p.name for p in (tmp_path / "no").iterdir()) == ["empty", "file.txt"]


async def test_denied_and_hidden_names() -> None:
    """A denied name cannot be created by upload, mkdir or rename; a hidden name is never
    listed and is missing to stat, open and remove."""
    backend = sftpd.MemoryBackend({"/.secret": b"s", "/ok.txt": b"ok"})
    attrs = {"dev": {"denied_names": ["*.exe"], "hidden_names": [".*"]}}
    auth = StaticPasswords({"dev": "dev"}, attrs)
    async with running_server(backend=backend, auth=auth) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied, match=r"Names like \*\.exe"):
                await sftp.open("/virus.exe", "wb")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.mkdir("/dir.exe")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.rename("/ok.txt", "/ok.exe")
            assert await sftp.listdir("/") == [".", "..", "ok.txt"]
            for attempt in (sftp.stat("/.secret"), sftp.open("/.secret", "rb"),
                            sftp.remove("/.secret"), sftp.open("/.hidden-new", "wb")):  # fmt: skip
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await attempt


async def test_drop_box_depositors_cannot_touch_each_others_files() -> None:
    """Two drop-box users deposit into one folder: neither can read, stat, list, overwrite,
    append to, truncate, rename, remove, link or copy the other's file, by any request;
    each still sees its own upload, and the files stay as deposited."""
    backend = sftpd.MemoryBackend()
    box = {"root": "/box", "permissions": "drop-box"}
    auth = StaticPasswords({"ann": "a", "bob": "b"}, {"ann": box, "bob": box})
    async with running_server(backend=backend, auth=auth) as server:
        async with connect(server.port, "ann", "a") as a, a.start_sftp_client() as ann:
            async with ann.open("/ann.txt", "wb") as f:
                await f.write(b"from ann")
        async with connect(server.port, "bob", "b") as b, b.start_sftp_client() as bob:
            async with bob.open("/bob.txt", "wb") as f:
                await f.write(b"from bob")
            assert (await bob.stat("/bob.txt")).size == 8  # its own upload
            missing = asyncssh.SFTPNoSuchFile
            denied = asyncssh.SFTPPermissionDenied
            attempts: list[tuple[Any, type[Exception]]] = [
                (bob.open("/ann.txt", "rb"), missing),
                (bob.stat("/ann.txt"), missing),
                (bob.lstat("/ann.txt"), missing),
                (bob.listdir("/"), denied),
                (bob.open("/ann.txt", "wb"), denied),
                (bob.open("/ann.txt", "ab"), denied),
                (bob.open("/ann.txt", "r+b"), missing),
                (bob.truncate("/ann.txt", 0), missing),
                (bob.chmod("/ann.txt", 0o777), missing),
                (bob.rename("/ann.txt", "/mine.txt"), denied),
                (bob.remove("/ann.txt"), denied),
                (bob.link("/ann.txt", "/copy.txt"), denied),
                (bob.symlink("/ann.txt", "/sym.txt"), denied),
                (bob.remote_copy("/ann.txt", "/copy2.txt"), missing),
                (bob.open("/bob.txt", "wb"), denied),  # its own: no overwrite either
            ]
            for attempt, error in attempts:
                with pytest.raises(error):
                    await attempt
    session = sftpd.Session(username="t", peer=sftpd.Peer("x", 0))
    assert await backend.read_file("/box/ann.txt", session) == b"from ann"
    assert await backend.read_file("/box/bob.txt", session) == b"from bob"
    names = sorted([e.name async for e in backend.list_dir("/box", session)])
    assert names == ["ann.txt", "bob.txt"]


async def test_drop_box_variant_lists_only_this_sessions_uploads() -> None:
    """drop-box-list-own: a listing shows the files this session uploaded and nothing
    else, not even the same user's files from an earlier session."""
    backend = sftpd.MemoryBackend({"/box/other.txt": b"x"})
    box = {"root": "/box", "permissions": "drop-box-list-own"}
    auth = StaticPasswords({"ann": "a"}, {"ann": box})
    async with running_server(backend=backend, auth=auth) as server:
        async with connect(server.port, "ann", "a") as a, a.start_sftp_client() as ann:
            async with ann.open("/first.txt", "wb") as f:
                await f.write(b"1")
            assert await ann.listdir("/") == [".", "..", "first.txt"]
        async with connect(server.port, "ann", "a") as a, a.start_sftp_client() as ann:
            assert await ann.listdir("/") == [".", ".."]


async def test_refusals_name_the_rule_in_telemetry_and_audit(tmp_path: Path) -> None:
    """A refused request's event and audit line carry the rule that decided."""
    bus = telemetry.TelemetryBus()
    audit = tmp_path / "audit.jsonl"
    log = AuditLog(str(audit))
    log.attach(bus)
    seen: list[dict[str, Any]] = []
    bus.attach("t", ("sftpd", "sftp", "delete"), lambda event: seen.append(dict(event.metadata)))
    backend = sftpd.MemoryBackend({"/keep/a.txt": b"a"})
    auth = StaticPasswords({"dev": "dev"}, {"dev": {"permissions": {"/keep": ["list"]}}})
    async with running_server(backend=backend, auth=auth, telemetry=bus) as server:
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.remove("/keep/a.txt")
    log.close()
    assert seen[0]["rule"] == "/keep"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    refused = [line for line in lines if line.get("event") == "delete"]
    assert refused[0]["rule"] == "/keep"


# ---------------------------------------------------------------- property test

RULES = {
    "/": ["list", "download"],
    "/a": ["upload", "list", "mkdir", "setstat"],
    "/a/b": [],
    "/A": ["delete", "rename", "rmdir", "overwrite"],
    "/*/x.exe": ["download"],
    "/c": ["symlink", "link", "upload", "overwrite", "delete", "rename"],
}
PERMISSIONS = sftpd.Permissions.parse(RULES, denied_names=["*.bad"], hidden_names=[".h*"])
ROOT = "/tenant"
FILES = ["/a/f", "/a/b/f", "/A/f", "/c/f", "/f", "/a/x.exe", "/a/b/x.exe", "/.hid", "/A/b/f",
         "/a/f.bad"]  # fmt: skip


class Recording(sftpd.MemoryBackend):
    """A memory backend that records which operation each call performs, where."""

    def __init__(self) -> None:
        super().__init__({ROOT + path: b"data" for path in FILES})
        self.calls: list[tuple[str, str]] = []

    def _exists(self, path: str) -> bool:
        try:
            self._lookup(path)
        except FileNotFoundError:
            return False
        return True

    async def open_writer(self, path: str, session: sftpd.Session, **kw: Any) -> Any:
        self.calls.append(("overwrite" if self._exists(path) else "upload", path))
        return await super().open_writer(path, session, **kw)

    async def read_range(self, path: str, offset: int, length: int, s: sftpd.Session) -> bytes:
        self.calls.append(("download", path))
        return await super().read_range(path, offset, length, s)

    async def remove_file(self, path: str, session: sftpd.Session) -> None:
        self.calls.append(("delete", path))
        await super().remove_file(path, session)

    async def remove_dir(self, path: str, session: sftpd.Session) -> None:
        self.calls.append(("rmdir", path))
        await super().remove_dir(path, session)

    async def make_dir(self, path: str, session: sftpd.Session) -> None:
        self.calls.append(("mkdir", path))
        await super().make_dir(path, session)

    async def rename(self, src: str, dst: str, session: sftpd.Session, **kw: Any) -> None:
        self.calls += [("rename", src), ("rename", dst)]
        await super().rename(src, dst, session, **kw)

    def list_dir(self, path: str, session: sftpd.Session) -> Any:
        self.calls.append(("list", path))
        return super().list_dir(path, session)

    async def set_attrs(self, path: str, changes: Any, session: sftpd.Session) -> None:
        self.calls.append(("overwrite" if changes.size is not None else "setstat", path))
        await super().set_attrs(path, changes, session)

    async def make_symlink(self, target: str, link: str, session: sftpd.Session) -> None:
        self.calls.append(("symlink", link))
        await super().make_symlink(target, link, session)

    async def make_link(self, existing: str, new: str, session: sftpd.Session) -> None:
        self.calls.append(("link", new))
        await super().make_link(existing, new, session)


segments = st.sampled_from(["a", "b", "A", "c", "f", "x.exe", "..", ".", "", ".hid", "f.bad"])
client_paths = st.lists(segments, min_size=0, max_size=5).map(
    lambda parts: "/" + "/".join(parts)
) | st.lists(segments, min_size=1, max_size=4).map("/".join)
requests = st.sampled_from(["read", "write", "create", "remove", "mkdir", "rmdir", "rename",
                            "posix-rename", "list", "truncate", "chmod", "symlink",
                            "link"])  # fmt: skip


def request_calls(
    requests_: Requests, a: bytes, b: bytes
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each request the property tests send, on the client paths ``a`` (and ``b``)."""
    writing = codec.FXF_WRITE | codec.FXF_CREAT | codec.FXF_TRUNC
    return {
        "read": lambda: requests_.open(a, codec.FXF_READ, WireAttrs()),
        "write": lambda: requests_.open(a, codec.FXF_WRITE, WireAttrs()),
        "create": lambda: requests_.open(a, writing, WireAttrs()),
        "remove": lambda: requests_.remove(a),
        "mkdir": lambda: requests_.mkdir(a, WireAttrs()),
        "rmdir": lambda: requests_.rmdir(a),
        "rename": lambda: requests_.rename(a, b, overwrite=False),
        "posix-rename": lambda: requests_.rename(a, b, overwrite=True),
        "list": lambda: requests_.opendir(a),
        "truncate": lambda: requests_.setstat(a, WireAttrs(size=0)),
        "chmod": lambda: requests_.setstat(a, WireAttrs(permissions=0o600)),
        "symlink": lambda: requests_.symlink(b, a),
        "link": lambda: requests_.hardlink(b, a),
    }


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests, first=client_paths, second=client_paths)
async def test_no_path_reaches_a_backend_operation_its_rules_forbid(
    request: str, first: str, second: str
) -> None:
    """Whatever the paths (``..``, ``//``, ``.``, case, globbed names, hidden and denied
    names), every backend operation a request reaches is one the rules allow at that path,
    as the client sees it, and never outside the session's root."""
    backend = Recording()
    bound = bind_backend(backend)
    session = sftpd.Session(username="dev", peer=sftpd.Peer("127.0.0.1", 1), root=ROOT,
                            permissions=PERMISSIONS)  # fmt: skip
    state = SessionState(session=session)
    requests_ = Requests(bound, state, telemetry.TelemetryBus(), Settings())
    calls = request_calls(requests_, first.encode(), second.encode())
    try:
        result = await calls[request]()
        if request == "read" and isinstance(result, bytes):
            await requests_.read(result, 0, 100)
        if request == "list" and isinstance(result, bytes):
            await requests_.readdir(result)
        if request in ("write", "create") and isinstance(result, bytes):
            await requests_.write(result, 0, b"x")
            await requests_.close(result)
    except SftpStatus:
        pass
    for operation, path in backend.calls:
        assert path == ROOT or path.startswith(ROOT + "/"), (request, first, second, path)
        client = unscope(ROOT, path)
        assert PERMISSIONS.allows(operation, client)[0], (request, first, second, operation,
                                                          client)  # fmt: skip
        assert not PERMISSIONS.hides(client)
        if operation in ("upload", "mkdir", "symlink", "link") or (
            operation == "rename" and path == backend.calls[-1][1]
        ):
            assert PERMISSIONS.denies_name(client.rsplit("/", 1)[-1]) is None


def test_config_file_groups_and_user_rules_merge(tmp_path: Path) -> None:
    """[groups.NAME] rules apply to the users naming them; a user's own rules win at the
    same path, its preset becomes the rule at /; name filters add up; mistakes are named."""
    from sftpd._config_file import load_config_file

    config = tmp_path / "sftpd.toml"
    config.write_text(
        '[groups.partners]\npermissions = { "/outbox" = ["list", "download"], "/inbox" = '
        '["upload"] }\ndenied_names = ["*.exe"]\n'
        '[users.ann]\npassword = "pw"\ngroups = ["partners"]\npermissions = "read-only"\n'
        'hidden_names = [".*"]\n'
        '[users.bob]\npassword = "pw"\ngroups = ["partners"]\n'
        'permissions = { "/inbox" = ["upload", "list"] }\n'
    )
    users = load_config_file(config).users.attributes
    ann, bob = (sftpd.Session.from_attributes(username=name, peer=sftpd.Peer("x", 1),
                                              auth_method="password", attributes=users[name])
                for name in ("ann", "bob"))  # fmt: skip
    assert ann.permissions.allows("download", "/anything")[0]  # read-only at /
    assert not ann.permissions.allows("upload", "/anything")[0]
    assert ann.permissions.allows("upload", "/inbox/new")[0]  # the group's rule
    assert ann.permissions.denied_names == ("*.exe",)
    assert ann.permissions.hidden_names == (".*",)
    assert bob.permissions.allows("list", "/inbox")[0]  # its own rule won
    assert bob.permissions.allows("download", "/outbox/f")[0]
    config.write_text('[users.cat]\npassword = "pw"\ngroups = ["nope"]\n')
    with pytest.raises(sftpd.ConfigError, match=r"unknown group\(s\) \['nope'\]"):
        load_config_file(config)
    config.write_text('[users.cat]\npassword = "pw"\npermissions = { "/x" = ["fly"] }\n')
    with pytest.raises(sftpd.ConfigError, match=r"unknown operation\(s\) \['fly'\]"):
        load_config_file(config)


MUTATIONS = {"upload", "overwrite", "delete", "rmdir", "mkdir", "rename", "setstat", "symlink",
             "link"}  # fmt: skip


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests, first=client_paths, second=client_paths)
async def test_no_path_crosses_a_mount_boundary_or_a_read_only_mount(
    request: str, first: str, second: str
) -> None:
    """Over mounts (/a, /A read-only, /c, each under its own prefix), every call a
    request makes lands in the mount its client path names, inside that mount's prefix,
    is allowed by the rules there, and nothing changes in the read-only mount."""
    from sftpd.backends.mounts import Mount, MountBackend

    stores = {"/a": Recording(), "/A": Recording(), "/c": Recording()}
    namespace = MountBackend([
        Mount("/a", stores["/a"], prefix=ROOT + "/a"),
        Mount("/A", stores["/A"], prefix=ROOT + "/A", read_only=True),
        Mount("/c", stores["/c"], prefix=ROOT + "/c"),
    ])  # fmt: skip
    session = sftpd.Session(username="dev", peer=sftpd.Peer("127.0.0.1", 1),
                            permissions=PERMISSIONS)  # fmt: skip
    requests_ = Requests(bind_backend(namespace), SessionState(session=session),
                         telemetry.TelemetryBus(), Settings())  # fmt: skip
    calls = request_calls(requests_, first.encode(), second.encode())
    try:
        result = await calls[request]()
        if request in ("write", "create") and isinstance(result, bytes):
            await requests_.write(result, 0, b"x")
            await requests_.close(result)
        if request == "list" and isinstance(result, bytes):
            await requests_.readdir(result)
    except SftpStatus:
        pass
    for mount, store in stores.items():
        prefix = ROOT + mount
        for operation, path in store.calls:
            assert path == prefix or path.startswith(prefix + "/"), (request, first, mount, path)
            client = mount + path[len(prefix) :]
            assert PERMISSIONS.allows(operation, client)[0], (request, first, operation, client)
            if mount == "/A":
                assert operation not in MUTATIONS, (request, first, second, operation, path)
