"""End-to-end: per-user source networks, from the config file and from authenticators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd.testing import running_server
from tests.conftest import cli


async def logs_in(port: int, user: str, password: str, source: str) -> bool:
    """Whether a password login from ``source`` succeeds."""
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, username=user, password=password, known_hosts=None,
            client_keys=None, preferred_auth="password", local_addr=(source, 0),
        ):  # fmt: skip
            return True
    except asyncssh.PermissionDenied:
        return False


async def test_config_file_source_networks_refuse_other_addresses(tmp_path: Path) -> None:
    """[users.alice] source_networks lets alice in from 127.0.0.2 only; bob, with none,
    from anywhere; a malformed network fails at start-up naming the user."""
    (tmp_path / "ok.toml").write_text(
        '[users.alice]\npassword = "pw"\nsource_networks = ["127.0.0.2/32", "10.0.0.0/8"]\n\n'
        '[users.bob]\npassword = "pw"\n'
    )
    async with cli("--config", "ok.toml", "--backend", "memory", cwd=tmp_path) as (_p, port, _t):
        assert not await logs_in(port, "alice", "pw", "127.0.0.1")
        assert await logs_in(port, "alice", "pw", "127.0.0.2")
        assert await logs_in(port, "bob", "pw", "127.0.0.1")
    from sftpd._config_file import load_config_file

    (tmp_path / "bad.toml").write_text('[users.a]\npassword = "pw"\nsource_networks = ["x"]\n')
    with pytest.raises(sftpd.ConfigError, match=r"\[users.a\].*'x' is not an address"):
        load_config_file(tmp_path / "bad.toml")


class NetworksFromTheApp:
    """An authenticator whose users carry their allowed networks as an attribute."""

    def authenticate_password(
        self, username: str, password: str, peer: sftpd.Peer
    ) -> dict[str, Any] | None:
        return {"source_networks": ["127.0.0.2"]} if password == "pw" else None


async def test_an_authenticators_source_networks_attribute_is_enforced() -> None:
    """A source_networks attribute an authenticator returns refuses logins from elsewhere."""
    async with running_server(backend=sftpd.MemoryBackend(), auth=NetworksFromTheApp()) as server:
        assert not await logs_in(server.port, "carol", "pw", "127.0.0.1")
        assert await logs_in(server.port, "carol", "pw", "127.0.0.2")


async def test_a_refused_source_costs_no_hash_verification(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside its source networks a user's password hash is not even verified, while a
    wrong password and an unknown user each cost one verification (comparable time)."""
    from sftpd._passwords import StoredPassword, hash_password

    calls: list[str] = []
    real = StoredPassword.verify

    def counting(self: StoredPassword, password: str) -> bool:
        calls.append(self.scheme)
        return real(self, password)

    monkeypatch.setattr(StoredPassword, "verify", counting)
    auth = sftpd.StaticPasswords(
        {"alice": hash_password("pw", "sha512-crypt")},
        {"alice": {"source_networks": ["10.0.0.0/8"]}},
    )
    assert await auth.authenticate_password("alice", "pw", sftpd.Peer("127.0.0.1", 1)) is None
    assert calls == []
    assert await auth.authenticate_password("alice", "no", sftpd.Peer("10.1.1.1", 1)) is None
    assert await auth.authenticate_password("nobody", "no", sftpd.Peer("10.1.1.1", 1)) is None
    assert calls == ["sha512-crypt", "sha512-crypt"]
