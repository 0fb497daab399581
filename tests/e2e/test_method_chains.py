"""End-to-end: AuthenticationMethods chains such as a key and then a password."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from sftpd.testing import running_server
from tests.conftest import OpenSSH, cli

KEY = asyncssh.generate_private_key("ssh-ed25519")


def key_and_password() -> sftpd.CombinedAuthenticator:
    """alice has a password and a key."""
    return sftpd.CombinedAuthenticator(
        sftpd.StaticPasswords({"alice": "pw"}, {"alice": {"root": "/alice"}}),
        sftpd.AuthorizedKeys({"alice": [KEY.export_public_key().decode()]}),
    )


async def test_a_key_then_a_password_is_needed_and_recorded(tmp_path: Path) -> None:
    """With publickey,password required, asyncssh's client gets in only offering both
    (the key step answered with partial success); the session says publickey+password and
    keeps the key's fingerprint. The key alone or the password alone is refused."""
    sessions: list[sftpd.Session | None] = []
    bus = telemetry.TelemetryBus()
    bus.attach("s", [("sftpd", "session", "open")], lambda e: sessions.append(e.session))
    async with running_server(backend=sftpd.MemoryBackend(), auth=key_and_password(),
                              authentication_methods=["publickey,password"],
                              telemetry=bus) as server:  # fmt: skip
        common = {"username": "alice", "known_hosts": None}
        async with asyncssh.connect("127.0.0.1", server.port, client_keys=[KEY],
                                    password="pw", **common) as conn:  # fmt: skip
            async with conn.start_sftp_client() as sftp:
                assert await sftp.realpath(".") == "/"
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect("127.0.0.1", server.port, client_keys=[KEY], **common)
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect("127.0.0.1", server.port, client_keys=None, password="pw",
                                   **common)  # fmt: skip
    session = sessions[0]
    assert session is not None
    assert session.auth_method == "publickey+password"
    assert session.key_fingerprint == KEY.get_fingerprint()
    assert session.root == "/alice"
    assert len(sessions) == 1


async def test_openssh_passes_a_key_then_a_password(tmp_path: Path, openssh: OpenSSH) -> None:
    """OpenSSH's sftp, given a key and the password, logs in through publickey then
    password ("partial success"); with the password only it is refused."""
    KEY.write_private_key(str(tmp_path / "id"))
    (tmp_path / "id").chmod(0o600)
    async with running_server(backend=sftpd.MemoryBackend(), auth=key_and_password(),
                              authentication_methods=["publickey,password"]) as server:  # fmt: skip
        both = ["-o", "PubkeyAuthentication=yes", "-o", "IdentitiesOnly=yes",
                "-i", str(tmp_path / "id"), "-o", "LogLevel=VERBOSE",
                "-o", "PreferredAuthentications=publickey,password"]  # fmt: skip
        result = await openssh.run(server.port, "pwd\n", user="alice", password="pw", extra=both)
        assert result.returncode == 0, result.stderr
        assert "partial success" in result.stderr
        alone = await openssh.run(server.port, "pwd\n", user="alice", password="pw")
        assert alone.returncode != 0


def test_unknown_methods_in_a_chain_fail_at_start() -> None:
    """A chain naming an unknown method is a configuration error saying what is allowed."""
    with pytest.raises(sftpd.ConfigError, match="from publickey, password, keyboard-interactive"):
        sftpd.ServerConfig(backend=sftpd.MemoryBackend(), auth={"a": "b"}, system_dir="/x",
                           authentication_methods=["publickey,otp"])  # fmt: skip


async def test_the_cli_flag_and_config_key_require_the_chain(tmp_path: Path) -> None:
    """sftpd serve --authentication-methods, and [server] authentication_methods, make a
    password alone insufficient for a user who has both a password and a key."""
    (tmp_path / "alice.pub").write_text(KEY.export_public_key().decode())
    users = '[users.alice]\npassword = "pw"\nauthorized_keys = "alice.pub"\n'
    (tmp_path / "flag.toml").write_text(users)
    (tmp_path / "key.toml").write_text(
        '[server]\nauthentication_methods = ["publickey,password"]\n\n' + users
    )
    for args in (["--config", "flag.toml", "--authentication-methods", "publickey,password"],
                 ["--config", "key.toml"]):  # fmt: skip
        async with cli(*args, "--backend", "memory", cwd=tmp_path) as (_proc, port, _text):
            common = {"username": "alice", "known_hosts": None}
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect("127.0.0.1", port, client_keys=None, password="pw",
                                       **common)  # fmt: skip
            async with asyncssh.connect("127.0.0.1", port, client_keys=[KEY], password="pw",
                                        **common):  # fmt: skip
                pass
