"""Unit and process-level tests of the `sftpd serve` command."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from sftpd import fingerprint
from sftpd.cli import ensure_host_keys, main, parse_size
from tests.conftest import (
    alive,
    children_of,
    cli,
    connect,
    eventually,
    refused_at_key_exchange,
    start_cli,
    stop_cli,
    upload_stored,
)


def test_help_lists_every_option() -> None:
    """`sftpd serve --help` documents each option."""
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--user", "--host-key-dir", "--backend",
                   "--max-sessions", "--open-timeout", "--close-timeout", "--max-open-files",
                   "--max-file-size", "--s3-object-arg"):  # fmt: skip
        assert option in result.output


def test_bad_user_and_backend_are_rejected() -> None:
    """A --user without a password and an unknown --backend fail with usage errors."""
    runner = CliRunner()
    bad_user = runner.invoke(main, ["serve", "--user", "nopass"])
    assert bad_user.exit_code == 2
    assert "NAME:PASSWORD" in bad_user.output
    bad_backend = runner.invoke(main, ["serve", "--backend", "ftp://x"])
    assert bad_backend.exit_code == 2
    assert "unknown backend" in bad_backend.output


def test_host_keys_are_generated_once_and_reused(tmp_path: Path) -> None:
    """The first run creates ed25519 and RSA 3072 keys (0600), ECDSA too only when legacy;
    later runs reuse them."""
    created = ensure_host_keys(tmp_path / "keys")
    keys = [asyncssh.read_private_key(str(p)) for p in created]
    assert [key.get_algorithm() for key in keys] == ["ssh-ed25519", "ssh-rsa"]
    rsa = keys[1].pyca_key
    assert isinstance(rsa, RSAPrivateKey)
    assert rsa.key_size == 3072
    legacy = ensure_host_keys(tmp_path / "legacy", legacy=True)
    assert [asyncssh.read_private_key(str(p)).get_algorithm() for p in legacy] == [
        "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256",
    ]  # fmt: skip
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in created)
    first = [path.read_bytes() for path in created]
    assert ensure_host_keys(tmp_path / "keys") == []
    assert [path.read_bytes() for path in created] == first


def test_a_directory_with_a_key_gets_no_more(tmp_path: Path) -> None:
    """A key directory the operator filled is left exactly as it is."""
    keys = tmp_path / "keys"
    keys.mkdir()
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(
        str(keys / "ssh_host_ed25519_key")
    )
    assert ensure_host_keys(keys) == []
    assert sorted(p.name for p in keys.iterdir()) == ["ssh_host_ed25519_key"]


async def test_serve_prints_how_to_connect_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`sftpd serve` with defaults serves dev/dev, prints the sftp command, exits 0 on TERM."""
    proc, port, text = await start_cli(cwd=tmp_path)
    assert "dev@localhost" in text
    assert re.search(r"ssh-ed25519\s+SHA256:[A-Za-z0-9+/]{43}", text), text
    assert (tmp_path / ".sftpd" / "host_keys" / "ssh_host_ed25519_key").exists()
    async with connect(port) as conn, conn.start_sftp_client() as sftp:
        assert await sftp.listdir("/") == [".", ".."]
    assert await stop_cli(proc) == 0


async def test_config_file_users_keys_roots_and_permissions(tmp_path: Path) -> None:
    """A TOML file gives users passwords (from the environment), keys, roots and permissions.

    Its [server] section sets server options too (here the ciphers offered).
    """
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "bob.keys").write_text("# bob\n" + key.export_public_key().decode())
    (tmp_path / "sftpd.toml").write_text(
        '[server]\nmax_sessions = 5\nidle_timeout = 60\nciphers = ["aes256-ctr"]\n\n'
        '[users.alice]\npassword_env = "ALICE_PW"\nroot = "/drop/alice"\n'
        'permissions = "upload-only"\n\n'
        '[users.bob]\nauthorized_keys = "bob.keys"\nroot = "/drop"\n'
        'permissions = ["read", "list"]\n'
    )
    proc, port, _text = await start_cli(
        "--config", "sftpd.toml", cwd=tmp_path, env={"ALICE_PW": "s3cret"}
    )
    async with connect(port, "alice", "s3cret") as conn, conn.start_sftp_client() as alice:
        async with alice.open("/report.csv", "wb") as f:
            await f.write(b"a,b\n")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await alice.listdir("/")
    # only the configured cipher is offered
    await refused_at_key_exchange(port, encryption_algs=["aes128-ctr"])
    async with (
        asyncssh.connect(
            "127.0.0.1", port, username="bob", client_keys=[key], known_hosts=None
        ) as conn,
        conn.start_sftp_client() as bob,
    ):
        assert "report.csv" in await bob.listdir("/alice")
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await bob.remove("/alice/report.csv")
    assert await stop_cli(proc) == 0


async def test_max_file_size_from_flag_config_and_user(tmp_path: Path) -> None:
    """--max-file-size (with a unit) wins over [server]; a [users.X] limit wins over both."""
    (tmp_path / "sftpd.toml").write_text(
        "[server]\nmax_file_size = 1024\n\n"
        '[users.dev]\npassword = "dev"\n\n'
        '[users.big]\npassword = "pw"\nmax_file_size = 4096\n'
    )
    proc, port, _text = await start_cli("--config", "sftpd.toml", "--max-file-size", "2K",
                                        cwd=tmp_path)  # fmt: skip

    results = [await upload_stored(port, "dev", "dev", 2048),
               await upload_stored(port, "dev", "dev", 2049),
               await upload_stored(port, "big", "pw", 4096),
               await upload_stored(port, "big", "pw", 4097)]  # fmt: skip
    assert results == [True, False, True, False]
    assert await stop_cli(proc) == 0


async def test_channel_limits_from_flag_and_config(tmp_path: Path) -> None:
    """--max-channels caps the SFTP channels of a connection; [server] max_open_files and
    max_requests_* are read from the config file."""
    (tmp_path / "sftpd.toml").write_text(
        "[server]\nmax_open_files = 1\nmax_requests_per_channel = 8\n"
        "max_requests_per_session = 16\n\n"
        '[users.dev]\npassword = "dev"\n'
    )
    proc, port, _text = await start_cli("--config", "sftpd.toml", "--max-channels", "1",
                                        cwd=tmp_path)  # fmt: skip
    async with connect(port) as conn:
        sftp = await conn.start_sftp_client()
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.start_sftp_client()
        async with sftp.open("/a", "wb"):
            with pytest.raises(asyncssh.SFTPFailure, match="at most 1"):
                await sftp.open("/b", "wb")
    assert await stop_cli(proc) == 0


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1 << 20), ("512K", 512 << 10), ("100M", 100 << 20), ("2g", 2 << 30),
     ("1TB", 1 << 40), ("0", 0)],
)  # fmt: skip
def test_sizes_take_binary_units(text: str, size: int) -> None:
    """--max-file-size reads bytes, or K/M/G/T as powers of 1024 (an optional B ignored)."""
    assert parse_size(text) == size


async def test_authorized_keys_option(tmp_path: Path) -> None:
    """--authorized-keys NAME:FILE lets that key log in."""
    key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    (tmp_path / "k.pub").write_bytes(key.export_public_key())
    proc, port, text = await start_cli("--authorized-keys", "carol:k.pub", cwd=tmp_path)
    assert "carol@localhost" in text
    async with (
        asyncssh.connect(
            "127.0.0.1", port, username="carol", client_keys=[key], known_hosts=None
        ) as conn,
        conn.start_sftp_client() as sftp,
    ):
        assert await sftp.listdir("/") == [".", ".."]
    assert await stop_cli(proc) == 0


@pytest.mark.parametrize("how", ["flag", "config file"])
async def test_legacy_sha1_from_the_command_line_or_config_file(how: str, tmp_path: Path) -> None:
    """--legacy-sha1 or legacy_sha1 = true lets an hmac-sha1-only client in; else refused."""
    sha1_client: dict[str, Any] = {"mac_algs": ["hmac-sha1"], "encryption_algs": ["aes128-ctr"]}
    async with cli(cwd=tmp_path) as (proc, port, _):
        await refused_at_key_exchange(port, **sha1_client)
        assert await stop_cli(proc) == 0
    (tmp_path / "legacy.toml").write_text("[server]\nlegacy_sha1 = true\n")
    args = ["--legacy-sha1"] if how == "flag" else ["--config", "legacy.toml"]
    async with cli(*args, cwd=tmp_path) as (proc, port, _):
        async with connect(port, **sha1_client) as conn, conn.start_sftp_client() as sftp:
            assert await sftp.listdir("/") == [".", ".."]
        assert await stop_cli(proc) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--backend", "ftp://x"],
        ["--workers", "2"],  # the memory backend cannot be shared by workers
        ["--ciphers", "arcfour"],
        ["--s3-object-arg", "StorageClass=STANDARD_IA"],  # not an S3 backend
        ["--max-file-size", "1.5G"],
        ["--max-file-size", "-1"],
        ["--backend", "s3://b", "--s3-object-arg", "SSECustomerKey=k"],
        ["--backend", "s3://b", "--s3-object-arg", "StorageClass"],
    ],
)
def test_a_refused_configuration_leaves_nothing_behind(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configuration refused at start-up exits 2 before creating host keys or files."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["serve", "--audit-log", "audit.jsonl", *args])
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bad_config_file_fails_with_the_key_named(tmp_path: Path) -> None:
    """An unknown key or a wrong type in the config file stops start-up naming the key."""
    (tmp_path / "bad.toml").write_text("[server]\nprot = 22\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2
    assert "unknown [server] key 'prot'" in result.output
    (tmp_path / "bad.toml").write_text('[server]\nlegacy_sha1 = "yes"\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2
    assert "legacy_sha1 must be a bool" in result.output
    (tmp_path / "bad.toml").write_text('[users.a]\npassword = "p"\nmax_file_size = "1G"\n')
    result = CliRunner().invoke(main, ["serve", "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2
    assert "[users.a] max_file_size must be a number of bytes" in result.output


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ("[s3]\npart_sise = 1\n", ["--backend", "s3://b"], "unknown [s3] key 'part_sise'"),
        ("[s3]\nobject_args = 1\n", ["--backend", "s3://b"], "object_args must be a table"),
        ("[s3]\nobject_args = { Acl = 'private' }\n", ["--backend", "s3://b"],
         "unknown key 'Acl'; allowed: ACL"),
        ("[s3]\npart_size = 1024\n", ["--backend", "s3://b"], "at least 5 MiB"),
        ("[s3]\nread_ahead = 2\n", [], "[s3] settings and --s3-object-arg are for the S3"),
        ("", ["--backend", "s3://b", "--s3-object-arg", "BucketKeyEnabled=yes"],
         "BucketKeyEnabled is true or false"),
    ],
)  # fmt: skip
def test_bad_s3_settings_fail_with_what_to_fix(
    text: str, args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown, mistyped or misplaced S3 settings stop start-up with a message naming them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s3.toml").write_text(text)
    result = CliRunner().invoke(main, ["serve", "--config", "s3.toml", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split()), result.output


async def upload_many(port: int, count: int) -> None:
    """Open ``count`` sessions at once, each uploading one file."""

    async def one(i: int) -> None:
        async with connect(port) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open(f"/f{i}.txt", "wb") as f:
                await f.write(b"x" * i)

    await asyncio.gather(*(one(i) for i in range(count)))


def local_workers(tmp_path: Path, *extra: str) -> Any:
    """`sftpd serve --workers 2` on a local folder, as :func:`cli`."""
    (tmp_path / "data").mkdir(exist_ok=True)
    return cli("--workers", "2", "--backend", f"local:{tmp_path / 'data'}", *extra, cwd=tmp_path)


async def test_workers_share_one_port_and_stop_together(tmp_path: Path) -> None:
    """--workers 2 serves one port from two processes; SIGTERM stops them all with status 0."""
    audit = tmp_path / "audit.jsonl"
    # --max-sessions is per worker: 20 lets all 16 sessions land on one worker if they do.
    options = ("--audit-log", str(audit), "--max-sessions", "20")
    async with local_workers(tmp_path, *options) as (proc, port, text):
        assert "in 2 worker processes" in text
        workers = children_of(proc.pid)
        assert len(workers) == 2
        await upload_many(port, 16)
        assert len(list((tmp_path / "data").iterdir())) == 16
        pids = {json.loads(line)["pid"] for line in audit.read_text().splitlines()}
        assert pids == set(workers)  # 16 sessions spread over both (all on one: p = 2**-15)
        taken = CliRunner().invoke(main, ["serve", "--workers", "2", "--port", str(port),
                                          "--backend", f"local:{tmp_path}", "--host-key-dir",
                                          str(tmp_path / ".sftpd" / "host_keys")])  # fmt: skip
        assert taken.exit_code == 2  # never joins another server's port
        assert f"cannot listen on 127.0.0.1:{port}" in taken.output
        assert await stop_cli(proc) == 0
    assert not any(map(alive, workers))


async def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    """A worker killed with SIGKILL is started again; the port keeps being served."""
    async with local_workers(tmp_path) as (proc, port, _text):
        first = children_of(proc.pid)
        os.kill(first[0], signal.SIGKILL)

        def replaced() -> bool:
            now = children_of(proc.pid)
            return len(now) == 2 and first[0] not in now and first[1] in now

        await eventually(replaced, f"worker {first[0]} was not replaced")
        await upload_many(port, 6)
        assert len(list((tmp_path / "data").iterdir())) == 6
        assert await stop_cli(proc) == 0


def test_workers_refuse_the_memory_backend(tmp_path: Path) -> None:
    """The memory backend cannot be split across workers: exit 2, saying why."""
    memory = CliRunner().invoke(main, ["serve", "--workers", "2", "--host-key-dir", str(tmp_path)])
    assert memory.exit_code == 2
    assert "memory backend keeps files inside one process" in memory.output


async def test_workers_stop_when_the_supervisor_dies(tmp_path: Path) -> None:
    """If the supervisor is killed outright, its workers stop by themselves."""
    async with local_workers(tmp_path) as (proc, _port, _text):
        workers = children_of(proc.pid)
        proc.kill()
        await proc.wait()
    await eventually(lambda: not any(map(alive, workers)), f"{workers} outlived the supervisor")


async def output_until(proc: asyncio.subprocess.Process, text: str, count: int = 1) -> None:
    """Read the server's output until ``text`` has appeared ``count`` times."""
    assert proc.stdout is not None
    seen = ""
    while seen.count(text) < count:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line, f"server exited before printing {text!r}: {seen}"
        seen += line.decode()


async def logs_in(port: int, user: str, password: str) -> bool:
    """Whether ``user`` can log in and list the top directory."""
    try:
        async with connect(port, user, password) as conn, conn.start_sftp_client() as sftp:
            await sftp.listdir("/")
    except (asyncssh.PermissionDenied, asyncssh.DisconnectError):
        return False
    return True


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reloads_users(workers: int, tmp_path: Path) -> None:
    """SIGHUP re-reads the users for new logins (in every worker); open sessions stay.

    A config file that no longer loads keeps the previous users, with an error logged.
    """
    (tmp_path / "data").mkdir()
    config = tmp_path / "sftpd.toml"
    config.write_text('[users.alice]\npassword = "a"\n')
    args = ["--config", "sftpd.toml", "--backend", f"local:{tmp_path / 'data'}"]
    if workers > 1:
        args += ["--workers", str(workers)]
    async with cli(*args, cwd=tmp_path) as (proc, port, _text):
        async with connect(port, "alice", "a") as conn, conn.start_sftp_client() as alice:
            assert not await logs_in(port, "bob", "b")
            config.write_text('[users.bob]\npassword = "b"\n')
            proc.send_signal(signal.SIGHUP)
            await output_until(proc, "users reloaded", workers)
            assert [await logs_in(port, "bob", "b") for _ in range(6)] == [True] * 6
            assert not await logs_in(port, "alice", "a")
            async with alice.open("/still-here.txt", "wb") as f:  # her open session stays
                await f.write(b"a")
            assert (tmp_path / "data" / "still-here.txt").read_bytes() == b"a"
            config.write_text('[users.carol]\npasword = "c"\n')  # a typo: refused
            proc.send_signal(signal.SIGHUP)
            await output_until(proc, "reloading users failed", workers)
            assert [await logs_in(port, "bob", "b") for _ in range(6)] == [True] * 6
        assert await stop_cli(proc) == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reopens_the_audit_log_after_logrotate(workers: int, tmp_path: Path) -> None:
    """After the audit log is moved away (as logrotate does) and SIGHUP is sent, the lines
    of later logins go to a new file at the configured path (in every worker), and the
    moved file keeps only what came before the reopen."""
    (tmp_path / "data").mkdir()
    audit = tmp_path / "audit.jsonl"
    args = ["--backend", f"local:{tmp_path / 'data'}", "--audit-log", str(audit)]
    if workers > 1:
        args += ["--workers", str(workers)]
    async with cli(*args, cwd=tmp_path) as (proc, port, _text):
        assert await logs_in(port, "dev", "dev")
        rotated = tmp_path / "audit.jsonl.1"
        audit.rename(rotated)
        proc.send_signal(signal.SIGHUP)
        await output_until(proc, "audit log reopened", workers)
        assert [await logs_in(port, "dev", "dev") for _ in range(4)] == [True] * 4
        assert await stop_cli(proc) == 0
    old = [json.loads(line)["event"] for line in rotated.read_text().splitlines()]
    assert old.count("login") == 1
    new = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert new.count("login") == 4


def test_check_validates_without_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--check loads keys and starts the backend, then exits 0 without listening or writing.

    The port given is taken by another socket, which a real start would fail on.
    """
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        fresh = CliRunner().invoke(main, ["serve", "--check", "--port", port])
        assert fresh.exit_code == 0, fresh.output
        assert "Configuration OK: MemoryBackend" in fresh.output
        assert "none yet: generated in .sftpd/host_keys on the first start" in fresh.output
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing generated
        keys = tmp_path / "keys"
        keys.mkdir()
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(keys / "ssh_host_ed25519_key"))
        args = ["serve", "--check", "--port", port, "--host-key-dir", "keys",
                "--backend", "local:data", "--user", "ops:pw"]  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert "LocalBackend" in result.output
        assert "users: ops" in result.output
        assert fingerprint(key) in result.output
    missing = CliRunner().invoke(main, ["serve", "--check", "--backend", "local:nowhere"])
    assert missing.exit_code == 2
    assert "nowhere" in missing.output


async def test_hashed_passwords_from_hash_password_log_in_and_plaintext_is_warned(
    tmp_path: Path,
) -> None:
    """`sftpd hash-password --stdin` prints argon2id, bcrypt and SHA-512-crypt hashes; a
    config file holding them lets each user in with the password and no other, and a
    plaintext password in the file still works but is warned about at start-up."""
    hashes = {}
    for scheme in ("argon2id", "bcrypt", "sha512-crypt"):
        result = CliRunner().invoke(
            main, ["hash-password", "--scheme", scheme, "--stdin"], input="pw-" + scheme + "\n"
        )
        assert result.exit_code == 0, result.output
        hashes[scheme] = result.output.strip()
    assert hashes["argon2id"].startswith("$argon2id$")
    assert hashes["bcrypt"].startswith("$2b$12$")
    assert hashes["sha512-crypt"].startswith("$6$")
    users = "".join(
        f'[users.{scheme.replace("-", "_")}]\npassword = "{value}"\n\n'
        for scheme, value in hashes.items()
    )
    (tmp_path / "sftpd.toml").write_text(users + '[users.plain]\npassword = "open"\n')
    proc, port, text = await start_cli("--config", "sftpd.toml", cwd=tmp_path)
    try:
        assert "[users.plain] password is plaintext" in text.replace("\n", " ")
        for scheme in hashes:
            user = scheme.replace("-", "_")
            async with connect(port, user, "pw-" + scheme) as conn, conn.start_sftp_client() as s:
                assert await s.realpath(".") == "/"
            with pytest.raises(asyncssh.PermissionDenied):
                async with connect(port, user, "pw-wrong"):
                    pass
        async with connect(port, "plain", "open"):
            pass
    finally:
        assert await stop_cli(proc) == 0


def test_serve_flags_config_keys_and_server_config_agree() -> None:
    """Every [server] key is a serve flag (or named as file-only), every serve flag that
    is a ServerConfig field is a [server] key (or has its own section) and takes that
    field's default, sizes and lists included."""
    import dataclasses

    from sftpd import ServerConfig
    from sftpd._config_file import SERVER_KEYS
    from sftpd.cli._serve import serve

    fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
    flags = {p.name: p for p in serve.params}
    file_only = {"authorized_principals"}  # a table: no flag could spell it
    own_section = {"bandwidth"}  # [bandwidth]
    assert set(SERVER_KEYS) - {"backend"} - file_only <= set(flags)
    assert (set(flags) & set(fields)) - own_section <= set(SERVER_KEYS)
    converted: dict[str, Callable[[object], object]] = {
        "upload_memory": lambda text: parse_size(str(text), "--upload-memory"),
        "upload_digests": lambda text: tuple(str(text).split(",")),
    }
    for name in set(flags) & set(fields) - own_section:
        default = flags[name].default
        if default is None or type(default).__name__ == "Sentinel":  # flags and repeats
            continue
        expected = fields[name].default
        convert = converted.get(name)
        assert (default if convert is None else convert(default)) == expected, name
