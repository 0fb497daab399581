"""End-to-end: authorized_keys options hold as OpenSSH's sshd holds them for SFTP."""

from __future__ import annotations

import asyncssh
import pytest

import sftpd
from sftpd.testing import running_server


@pytest.fixture(scope="module")
def client_key() -> asyncssh.SSHKey:
    """One client key pair for every login here."""
    return asyncssh.generate_private_key("ssh-ed25519")


async def logs_in(options: str, key: asyncssh.SSHKey, source: str = "127.0.0.1") -> bool:
    """Whether a public-key login from ``source`` succeeds with ``options`` before the key."""
    line = f"{options} {key.export_public_key().decode().strip()} alice@laptop".strip()
    auth = sftpd.AuthorizedKeys({"alice": [line]})
    async with running_server(backend=sftpd.MemoryBackend(), auth=auth) as server:
        try:
            async with asyncssh.connect(
                "127.0.0.1", server.port, username="alice", client_keys=[key],
                known_hosts=None, preferred_auth="publickey", local_addr=(source, 0),
            ) as conn, conn.start_sftp_client() as sftp:  # fmt: skip
                await sftp.realpath(".")
        except asyncssh.PermissionDenied:
            return False
    return True


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        ("", True),
        ('from="10.9.9.9"', False),
        ('from="127.0.0.1"', True),
        ('from="10.0.0.0/8,127.0.0.0/8"', True),
        ('from="!127.0.0.1,*"', False),
        ('from="127.0.0.*"', True),
        ('expiry-time="20200101"', False),
        ('expiry-time="20990101120000Z"', True),
        ('restrict,no-pty,no-port-forwarding,permitopen="h:1"', True),
        ('command="internal-sftp"', True),
        ('command="/usr/lib/openssh/sftp-server -l INFO"', True),
        ('command="/bin/date"', False),
        ("cert-authority", False),  # a CA key signs certificates; it never logs in itself
    ],
)
async def test_key_options_decide_the_login(
    options: str, allowed: bool, client_key: asyncssh.SSHKey
) -> None:
    """from= (addresses, CIDRs, negation, wildcards), expiry-time=, command= and
    cert-authority decide whether the key logs in; restrict and no-* options change
    nothing for an SFTP-only server."""
    assert await logs_in(options, client_key) is allowed


async def test_from_lets_in_only_the_named_source(client_key: asyncssh.SSHKey) -> None:
    """A key limited to 127.0.0.2 is refused from 127.0.0.1 and accepted from 127.0.0.2."""
    assert not await logs_in('from="127.0.0.2"', client_key, source="127.0.0.1")
    assert await logs_in('from="127.0.0.2"', client_key, source="127.0.0.2")
    assert await logs_in('from="!127.0.0.1,127.0.0.0/8"', client_key, source="127.0.0.2")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("no-such-option", "line 2: unknown or malformed option 'no-such-option'"),
        ('from="10.0.0.1', "line 2: unbalanced quote"),
        ('expiry-time="2020"', "line 2: expiry-time '2020' is not YYYYMMDD"),
        ('expiry-time="20201399"', "line 2: expiry-time '20201399'"),
        ("from", "line 2: unknown or malformed option 'from'"),
    ],
)
def test_bad_options_fail_loading_with_the_line_number(
    options: str, message: str, client_key: asyncssh.SSHKey
) -> None:
    """An unknown option, an unbalanced quote or a bad time fails at load, naming the line."""
    key = client_key.export_public_key().decode().strip()
    text = f"# alice's keys\n{options} {key}\n"
    with pytest.raises(sftpd.ConfigError, match=message):
        sftpd.AuthorizedKeys({"alice": text})
