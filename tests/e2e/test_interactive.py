"""End-to-end: keyboard-interactive logins with the authenticator's own prompts, and TOTP."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh
import pyotp
import pytest

import sftpd
from sftpd import telemetry
from sftpd.testing import running_server
from tests.conftest import OpenSSH, cli


class Answering(asyncssh.SSHClient):
    """A client that answers each prompt from a table and records what it was asked."""

    def __init__(self, answers: dict[str, str], asked: list[str]) -> None:
        self.answers = answers
        self.asked = asked
        self.tries = 0

    def kbdint_auth_requested(self) -> str | None:
        self.tries += 1
        return "" if self.tries == 1 else None  # one try, as a person would

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str]:
        self.asked += [text for text, _echo in prompts]
        return [self.answers.get(text, "") for text, _echo in prompts]


async def interactive_login(port: int, user: str, answers: dict[str, str]) -> list[str] | None:
    """Log in with keyboard-interactive only; the prompts seen, or None if refused."""
    asked: list[str] = []
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, username=user, known_hosts=None, client_keys=None,
            preferred_auth="keyboard-interactive",
            client_factory=lambda: Answering(answers, asked),
        ) as conn, conn.start_sftp_client() as sftp:  # fmt: skip
            await sftp.realpath(".")
    except asyncssh.PermissionDenied:
        return None
    return asked


class TwoSteps:
    """An authenticator asking for a password, then for a PIN on a second screen."""

    async def authenticate_interactive(
        self, username: str, peer: sftpd.Peer, ask: Any
    ) -> dict[str, Any] | None:
        (password,) = await ask([("Password: ", False)])
        if username != "carol" or password != "pw":
            return None
        (pin,) = await ask([("PIN: ", False)], instructions="Second step")
        return {"root": "/carol"} if pin == "1234" else None


async def test_an_authenticator_leads_a_multi_step_conversation() -> None:
    """authenticate_interactive asks its own prompts over several steps; the right answers
    log in (session method keyboard-interactive), a wrong PIN does not."""
    sessions: list[sftpd.Session | None] = []
    bus = telemetry.TelemetryBus()
    bus.attach("s", [("sftpd", "session", "open")], lambda e: sessions.append(e.session))
    async with running_server(backend=sftpd.MemoryBackend(), auth=TwoSteps(),
                              telemetry=bus) as server:  # fmt: skip
        asked = await interactive_login(server.port, "carol", {"Password: ": "pw", "PIN: ": "1234"})
        assert asked == ["Password: ", "PIN: "]
        assert await interactive_login(server.port, "carol",
                                       {"Password: ": "pw", "PIN: ": "0000"}) is None  # fmt: skip
        assert await interactive_login(server.port, "carol", {"Password: ": "no"}) is None
    session = sessions[0]
    assert session is not None
    assert (session.auth_method, session.root) == ("keyboard-interactive", "/carol")


async def test_totp_users_need_the_code_and_each_code_works_once() -> None:
    """A StaticPasswords user with a TOTP secret gets in with the password and the current
    code, not with the password alone (password method or a wrong code), and the same code
    cannot be used twice."""
    secret = pyotp.random_base32()
    auth = sftpd.StaticPasswords({"alice": "pw", "bob": "pw2"}, totp={"alice": secret})
    async with running_server(backend=sftpd.MemoryBackend(), auth=auth) as server:
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect("127.0.0.1", server.port, username="alice", password="pw",
                                   known_hosts=None, client_keys=None,
                                   preferred_auth="password")  # fmt: skip
        wrong = {"Password: ": "pw", "Verification code: ": "000000"}
        if pyotp.TOTP(secret).verify("000000", valid_window=1):  # pragma: no cover - 1e-6
            wrong["Verification code: "] = "999999"
        assert await interactive_login(server.port, "alice", wrong) is None
        code = pyotp.TOTP(secret).now()
        good = {"Password: ": "pw", "Verification code: ": code}
        assert await interactive_login(server.port, "alice", good) == [
            "Password: ",
            "Verification code: ",
        ]
        assert await interactive_login(server.port, "alice", good) is None  # replayed
        # A user without TOTP answers the password prompt only.
        assert await interactive_login(server.port, "bob", {"Password: ": "pw2"}) == ["Password: "]


def answering_askpass(folder: Path) -> Path:
    """An askpass script answering OpenSSH's password and code prompts from the environment."""
    script = folder / "askpass.sh"
    script.write_text(
        '#!/bin/sh\ncase "$1" in\n  *code*) printf "%s\\n" "$SFTPD_TEST_CODE" ;;\n'
        '  *) printf "%s\\n" "$SFTPD_TEST_PASSWORD" ;;\nesac\n'
    )
    script.chmod(0o755)
    return script


async def test_openssh_logs_in_with_password_and_totp_from_a_config_file(
    tmp_path: Path, openssh: OpenSSH
) -> None:
    """A config-file user with totp_secret_env: OpenSSH's sftp answers the password and the
    verification code prompts (keyboard-interactive) and gets in; with a wrong code it
    does not."""
    secret = pyotp.random_base32()
    (tmp_path / "sftpd.toml").write_text(
        '[users.alice]\npassword_env = "ALICE_PW"\ntotp_secret_env = "ALICE_TOTP"\n'
    )
    os.environ.update(ALICE_PW="pw", ALICE_TOTP=secret)
    try:
        async with cli("--config", "sftpd.toml", "--backend", "memory", cwd=tmp_path) as (
            _proc, port, _text,
        ):  # fmt: skip
            tool = OpenSSH(answering_askpass(tmp_path))
            extra = ["-o", "PreferredAuthentications=keyboard-interactive",
                     "-o", "NumberOfPasswordPrompts=1"]  # fmt: skip
            for code, works in (("000000", False), (pyotp.TOTP(secret).now(), True)):
                if code == "000000" and pyotp.TOTP(secret).verify(code, valid_window=1):
                    continue  # pragma: no cover - one chance in a million
                os.environ["SFTPD_TEST_CODE"] = code
                result = await tool.run(port, "pwd\n", user="alice", password="pw", extra=extra)
                assert (result.returncode == 0) is works, result.stderr
    finally:
        for name in ("ALICE_PW", "ALICE_TOTP", "SFTPD_TEST_CODE"):
            os.environ.pop(name, None)
