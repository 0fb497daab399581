"""End-to-end with clients on other SSH stacks.

curl (libssh2), rclone (Go's pkg/sftp), PuTTY's psftp, whose SSH and SFTP code
FileZilla's fzsftp is built from (and WinSCP's SSH layer), and JSch 0.1.x, the Java
library of many older business systems.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from sftpd.auth import fingerprint
from sftpd.backends.s3 import S3Backend
from sftpd.testing import running_server
from tests.conftest import SftpResult, connect, make_file, sha256, sha256_file
from tests.raw_sftp import open_raw, packet, string

MiB = 1 << 20
CLIENTS = Path(__file__).resolve().parent.parent / "clients"


async def run(
    *argv: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> SftpResult:
    """Run a client command to completion, ``stdin`` fed to it; returns exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdin=subprocess.PIPE if stdin is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else None), timeout
    )
    assert proc.returncode is not None
    return SftpResult(proc.returncode, out.decode(), err.decode())


@pytest.fixture(scope="session")
def curl() -> list[str]:
    """curl with SFTP support (libssh2), logging in as dev, host key not checked."""
    path = shutil.which("curl")
    version = (
        subprocess.run([path or "curl", "-V"], capture_output=True, text=True) if path else None
    )
    if path is None or version is None or " sftp" not in version.stdout:
        pytest.fail("curl with SFTP support is not installed (apt-get install curl)")
    return [path, "--silent", "--show-error", "--insecure", "--user", "dev:dev"]


class Rclone:
    """Runs rclone against an SFTP server given on the command line, not in a config."""

    def __init__(self, config: Path) -> None:
        path = shutil.which("rclone")
        if path is None:  # pragma: no cover - CI installs rclone
            pytest.fail("rclone is not installed (apt-get install rclone)")
        self.path = path
        self.env = {"RCLONE_CONFIG": str(config)}
        obscured = subprocess.run([path, "obscure", "dev"], capture_output=True, text=True)
        self.password = obscured.stdout.strip()

    def remote(self, port: int, path: str = "", **options: str) -> str:
        """An on-the-fly sftp remote for user dev at ``path``, with more sftp ``options``."""
        extra = "".join(f",{key}={value}" for key, value in options.items())
        return f":sftp,host=127.0.0.1,port={port},user=dev,pass={self.password}{extra}:{path}"

    async def __call__(self, *args: str) -> SftpResult:
        """Run one rclone command, with no retries so that a failure shows at once."""
        return await run(
            self.path, "--retries", "1", "--low-level-retries", "1", *args, env=self.env
        )


class Psftp:
    """Runs PuTTY's psftp in batch mode, trusting exactly the test server's host key."""

    def __init__(self) -> None:
        path = shutil.which("psftp")
        if path is None:  # pragma: no cover - CI installs putty-tools
            pytest.fail("PuTTY's psftp is not installed (apt-get install putty-tools)")
        self.path = path

    async def __call__(
        self, server: sftpd.Server, commands: str, cwd: Path, password: str = "dev"
    ) -> SftpResult:
        """Run ``commands`` (one per line) as user dev."""
        script = cwd / "psftp-commands.txt"
        script.write_text(commands)
        return await run(
            self.path, "-batch", "-P", str(server.port), "-pw", password,
            "-hostkey", fingerprint(server.host_keys[0]), "-b", str(script),
            "-bc", "dev@127.0.0.1", cwd=cwd,
        )  # fmt: skip


@pytest.fixture(scope="session")
def psftp() -> Psftp:
    """The psftp driver."""
    return Psftp()


async def write_with_trailing_bytes(port: int, path: bytes) -> tuple[int, int]:
    """OPEN ``path``, WRITE b"abc" followed by 29 stray bytes, CLOSE.

    Returns the status codes of the WRITE and of the CLOSE.
    """
    async with connect(port) as conn:
        chan, raw = await open_raw(conn)
        chan.write(packet(3, struct.pack(">I", 1), string(path),
                          struct.pack(">II", 0x1A, 0)))  # OPEN write|create|truncate  # fmt: skip
        kind, rest = await raw.packet()
        assert kind == 102, rest  # HANDLE
        handle = rest[4:]
        chan.write(packet(6, struct.pack(">I", 2), handle, struct.pack(">Q", 0),
                          string(b"abc"), bytes(29)))  # WRITE, then stray bytes  # fmt: skip
        kind, rest = await raw.packet()
        assert kind == 101  # STATUS
        write_status = struct.unpack(">I", rest[4:8])[0]
        chan.write(packet(4, struct.pack(">I", 3), handle))  # CLOSE
        kind, rest = await raw.packet()
        assert kind == 101  # STATUS
        chan.close()
        return write_status, struct.unpack(">I", rest[4:8])[0]


async def test_stray_bytes_after_write_data_are_ignored() -> None:
    """A WRITE with bytes after its data stores exactly the data, as OpenSSH's server does."""
    backend = sftpd.MemoryBackend()
    async with running_server(backend=backend) as server:
        assert await write_with_trailing_bytes(server.port, b"/w.bin") == (0, 0)
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/w.bin", "rb") as f:
                assert await f.read() == b"abc"


@pytest.fixture
async def curl_server() -> AsyncIterator[sftpd.Server]:
    """A memory-backend server with legacy_macs: Debian 12's libssh2 1.10 has no etm MAC."""
    async with running_server(backend=sftpd.MemoryBackend(), legacy_macs=True) as server:
        yield server


async def test_curl_needs_legacy_macs_with_libssh2_before_1_11(curl: list[str]) -> None:
    """curl on libssh2 1.10 (no etm MAC, no GCM) cannot agree on a MAC with the defaults:
    the documented reason for legacy_macs."""
    version = (await run(curl[0], "-V")).stdout
    match = re.search(r"libssh2/(\d+)\.(\d+)", version)
    assert match, version
    if (int(match.group(1)), int(match.group(2))) >= (1, 11):
        pytest.skip("this libssh2 has etm MACs; the defaults suit it")
    async with running_server(backend=sftpd.MemoryBackend()) as server:
        result = await run(*curl, f"sftp://127.0.0.1:{server.port}/")
    assert result.returncode != 0
    assert "Unable to exchange encryption keys" in result.stderr


async def test_curl_upload_listing_download_and_commands(
    curl: list[str], curl_server: sftpd.Server, tmp_path: Path
) -> None:
    """libssh2 (curl) uploads, lists, downloads, renames and deletes; a missing file fails."""
    server = curl_server
    url = f"sftp://127.0.0.1:{server.port}"
    src = make_file(tmp_path / "a.bin", 3 * MiB + 5, seed=1)
    result = await run(*curl, "--upload-file", str(src), f"{url}/a.bin")
    assert result.returncode == 0, result.stderr
    result = await run(*curl, f"{url}/")
    assert result.returncode == 0, result.stderr
    assert any(
        line.split()[4] == str(3 * MiB + 5) and line.endswith(" a.bin")
        for line in result.stdout.splitlines()
    ), result.stdout
    back = tmp_path / "back.bin"
    result = await run(*curl, "--output", str(back), f"{url}/a.bin")
    assert result.returncode == 0, result.stderr
    assert sha256_file(back) == sha256_file(src)
    result = await run(*curl, "--quote", "mkdir /d", "--quote", "rename /a.bin /d/b.bin", f"{url}/")
    assert result.returncode == 0, result.stderr
    result = await run(*curl, "--output", str(tmp_path / "none"), f"{url}/a.bin")
    assert result.returncode == 78  # CURLE_REMOTE_FILE_NOT_FOUND
    assert "No such file" in result.stderr
    result = await run(*curl, "--quote", "rm /d/b.bin", "--quote", "rmdir /d", f"{url}/")
    assert result.returncode == 0, result.stderr
    async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
        assert await sftp.listdir("/") == [".", ".."]


async def test_curl_resume_sends_only_the_tail(curl: list[str], tmp_path: Path) -> None:
    """curl -C - after a partial upload appends the missing tail and nothing more."""
    full = make_file(tmp_path / "full.bin", 6 * MiB, seed=2)
    (tmp_path / "half.bin").write_bytes(full.read_bytes()[: 2 * MiB])
    bus = telemetry.TelemetryBus()
    written: list[int] = []
    bus.attach(
        "w", ("sftpd", "sftp", "write"), lambda e: written.append(int(e.measurements["bytes"]))
    )
    async with running_server(
        backend=sftpd.MemoryBackend(), telemetry=bus, legacy_macs=True
    ) as server:
        url = f"sftp://127.0.0.1:{server.port}/r.bin"
        result = await run(*curl, "--upload-file", str(tmp_path / "half.bin"), url)
        assert result.returncode == 0, result.stderr
        written.clear()
        result = await run(*curl, "--continue-at", "-", "--upload-file", str(full), url)
        assert result.returncode == 0, result.stderr
        assert sum(written) == 4 * MiB
        result = await run(*curl, "--output", str(tmp_path / "back.bin"), url)
        assert result.returncode == 0, result.stderr
    assert sha256_file(tmp_path / "back.bin") == sha256_file(full)


async def test_rclone_copy_check_move_and_purge(
    rclone: Rclone, server: sftpd.Server, tmp_path: Path
) -> None:
    """rclone (pkg/sftp) copies a tree with times kept, verifies it, moves and purges it.

    Its 5 MiB file goes up as concurrent writes; rclone 1.60 (Debian 12) sends each with
    stale bytes after the data, which OpenSSH's server ignores and so must sftpd.
    """
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    make_file(src / "big.bin", 5 * MiB + 7, seed=3)
    (src / "sub" / "note.txt").write_text("hello\n")
    os.utime(src / "big.bin", (1_600_000_000, 1_600_000_000))
    remote = rclone.remote(server.port, "/up")
    result = await rclone("copy", str(src), remote)
    assert result.returncode == 0, result.stderr
    result = await rclone("check", "--download", str(src), remote)
    assert result.returncode == 0, result.stderr
    result = await rclone("lsjson", "--recursive", "--files-only", remote)
    assert result.returncode == 0, result.stderr
    listed = {e["Path"]: e for e in json.loads(result.stdout)}
    assert {p: e["Size"] for p, e in listed.items()} == {"big.bin": 5 * MiB + 7, "sub/note.txt": 6}
    assert listed["big.bin"]["ModTime"].startswith("2020-09-13T12:26:40")
    result = await rclone("moveto", f"{remote}/big.bin", f"{remote}/sub/moved.bin")
    assert result.returncode == 0, result.stderr
    async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
        assert sorted(await sftp.listdir("/up/sub")) == [".", "..", "moved.bin", "note.txt"]
        async with sftp.open("/up/sub/moved.bin", "rb") as f:
            assert sha256(await f.read()) == sha256_file(src / "big.bin")
    result = await rclone("purge", remote)
    assert result.returncode == 0, result.stderr
    async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
        assert await sftp.listdir("/") == [".", ".."]


async def test_rclone_upload_to_s3(rclone: Rclone, s3_backend: S3Backend, s3_client: Any,
                                   bucket: str, tmp_path: Path) -> None:  # fmt: skip
    """rclone's concurrent writes of a 12 MiB file land as one intact object, no upload left."""
    src = tmp_path / "src"
    src.mkdir()
    make_file(src / "data.bin", 12 * MiB + 3, seed=4)
    async with running_server(backend=s3_backend) as server:
        result = await rclone("copy", str(src), rclone.remote(server.port, "/in"))
    assert result.returncode == 0, result.stderr
    stored = await s3_client.get_object(Bucket=bucket, Key="in/data.bin")
    async with stored["Body"] as body:
        assert sha256(await body.read()) == sha256_file(src / "data.bin")
    page = await s3_client.list_multipart_uploads(Bucket=bucket)
    assert page.get("Uploads", []) == []


async def test_psftp_transfers_resumes_and_manages(
    psftp: Psftp, server: sftpd.Server, tmp_path: Path
) -> None:
    """PuTTY's psftp uploads, lists, downloads, resumes with reput, renames and deletes."""
    make_file(tmp_path / "a.bin", 3 * MiB + 1, seed=5)
    (tmp_path / "half.bin").write_bytes((tmp_path / "a.bin").read_bytes()[:MiB])
    result = await psftp(server, "put a.bin a.bin\nls\nget a.bin back.bin\n", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(3 * MiB + 1) in result.stdout
    assert sha256_file(tmp_path / "back.bin") == sha256_file(tmp_path / "a.bin")
    commands = "mkdir d\nput half.bin d/r.bin\nreput a.bin d/r.bin\nmv a.bin d/b.bin\n"
    result = await psftp(server, commands, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"restarting at file position {MiB}" in result.stdout
    async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
        assert sorted(await sftp.listdir("/d")) == [".", "..", "b.bin", "r.bin"]
        async with sftp.open("/d/r.bin", "rb") as f:
            assert sha256(await f.read()) == sha256_file(tmp_path / "a.bin")
    result = await psftp(server, "rm d/b.bin\nrm d/r.bin\nrmdir d\nget nope.bin\n", tmp_path)
    assert result.returncode != 0  # the batch stops at the failed get
    assert "no such file" in (result.stdout + result.stderr).lower()
    async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
        assert await sftp.listdir("/") == [".", ".."]


async def test_psftp_wrong_password_is_refused(
    psftp: Psftp, server: sftpd.Server, tmp_path: Path
) -> None:
    """psftp with a wrong password fails to log in and runs nothing."""
    result = await psftp(server, "mkdir should-not-exist\n", tmp_path, password="wrong")
    assert result.returncode != 0
    async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
        assert await sftp.listdir("/") == [".", ".."]


@pytest.fixture(scope="session")
def jsch(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """tests/clients/JschClient.java compiled against Debian's JSch: the command to run it."""
    jars = [Path("/usr/share/java/jsch.jar"), Path("/usr/share/java/jzlib.jar")]
    javac, java = shutil.which("javac"), shutil.which("java")
    if not jars[0].is_file() or javac is None or java is None:  # pragma: no cover
        pytest.fail("JSch or a JDK is missing (apt-get install libjsch-java default-jdk-headless)")
    out = tmp_path_factory.mktemp("jsch")
    source = CLIENTS / "JschClient.java"
    subprocess.run([javac, "-d", str(out), "-cp", str(jars[0]), str(source)], check=True)
    classpath = ":".join([str(out), *(str(jar) for jar in jars if jar.is_file())])
    return [java, "-cp", classpath, "JschClient"]


async def run_jsch(
    jsch: list[str], port: int, commands: str, cwd: Path, *credentials: str
) -> SftpResult:
    """Run JschClient with ``commands`` on standard input (as dev/dev unless ``credentials``)."""
    return await run(*jsch, str(port), *(credentials or ("dev", "dev")), cwd=cwd, stdin=commands)


async def test_jsch_transfers_resumes_appends_and_manages(
    jsch: list[str], legacy_host_keys: Path, tmp_path: Path
) -> None:
    """JSch 0.1.x logs in to a server with legacy algorithms and the keys `serve --legacy`
    generates, and uses every basic command.

    Its resume (RESUME mode) sends only the missing tail; its APPEND mode appends.
    """
    make_file(tmp_path / "a.bin", 3 * MiB + 3, seed=6)
    full = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "half.bin").write_bytes(full[:MiB])
    bus = telemetry.TelemetryBus()
    written: list[int] = []
    bus.attach(
        "w", ("sftpd", "sftp", "write"), lambda e: written.append(int(e.measurements["bytes"]))
    )
    commands = """mkdir /j
put half.bin /j/r.bin
resume a.bin /j/r.bin
get /j/r.bin back.bin
ls /j
append half.bin /j/r.bin
rename /j/r.bin /j/s.bin
"""
    backend = sftpd.MemoryBackend()
    async with running_server(
        backend=backend, system_dir=legacy_host_keys, telemetry=bus, legacy_algorithms=True
    ) as server:
        result = await run_jsch(jsch, server.port, commands, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert sum(written) == MiB + (len(full) - MiB) + MiB  # put, the tail, the append
        assert (tmp_path / "back.bin").read_bytes() == full
        assert str(len(full)) in result.stdout  # the ls line
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/j/s.bin", "rb") as f:
                assert await f.read() == full + full[:MiB]
        result = await run_jsch(jsch, server.port, "rm /j/s.bin\nrmdir /j\nget /j x\n", tmp_path)
        assert result.returncode == 1
        assert "sftp error 2: No such file" in result.stderr
        async with connect(server.port) as conn, conn.start_sftp_client() as sftp:
            assert await sftp.listdir("/") == [".", ".."]


async def test_jsch_needs_the_legacy_switch_and_an_ecdsa_key(
    jsch: list[str], generated_host_keys: Path, legacy_host_keys: Path, tmp_path: Path
) -> None:
    """JSch 0.1.x cannot connect to the default algorithms (it has no curve25519 and no etm
    MAC) even with an ECDSA key, nor to legacy algorithms with only ed25519 and RSA keys (it
    has no SHA-2 RSA signatures): `serve --legacy` adds exactly what it needs."""
    for keys, legacy in ((generated_host_keys, False), (legacy_host_keys, False),
                         (generated_host_keys, True)):  # fmt: skip
        async with running_server(
            backend=sftpd.MemoryBackend(), system_dir=keys, legacy_algorithms=legacy
        ) as server:
            result = await run_jsch(jsch, server.port, "ls /\n", tmp_path)
        assert result.returncode == 1, (keys, legacy)
        assert "Algorithm negotiation fail" in result.stderr


async def test_jsch_logs_in_with_rsa_and_ecdsa_keys(
    jsch: list[str], legacy_host_keys: Path, tmp_path: Path
) -> None:
    """JSch 0.1.x logs in with RSA and ECDSA keys from an authorized_keys file.

    Its RSA key signs with ssh-rsa (SHA-1), which asyncssh's server accepts whatever
    signature algorithms it advertises: legacy_sha1 does not cover client keys.
    """
    lines = []
    for kind in ("rsa", "ecdsa"):
        key = asyncssh.generate_private_key("ssh-rsa" if kind == "rsa" else "ecdsa-sha2-nistp256")
        (tmp_path / f"id_{kind}").write_bytes(key.export_private_key("pkcs1-pem"))
        lines.append(key.export_public_key().decode())
    auth = sftpd.AuthorizedKeys({"alice": lines})
    async with running_server(
        backend=sftpd.MemoryBackend(),
        auth=auth,
        system_dir=legacy_host_keys,
        legacy_algorithms=True,
    ) as server:
        for kind in ("rsa", "ecdsa"):
            result = await run_jsch(
                jsch, server.port, "ls /\n", tmp_path, "alice", "-", f"id_{kind}"
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert "ok ls /" in result.stdout
        result = await run_jsch(jsch, server.port, "ls /\n", tmp_path, "bob", "-", "id_rsa")
        assert result.returncode == 1  # a key nobody authorized
