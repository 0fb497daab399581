"""End-to-end: OpenSSH user certificates: trusted CAs, principals, validity, revocation."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd import telemetry
from sftpd.testing import running_server
from tests.conftest import OpenSSH, cli

CA = asyncssh.generate_private_key("ssh-ed25519")
OTHER_CA = asyncssh.generate_private_key("ssh-ed25519")
USER_KEY = asyncssh.generate_private_key("ssh-ed25519")


def certificate(ca: asyncssh.SSHKey = CA, **options: Any) -> asyncssh.SSHCertificate:
    """A user certificate for USER_KEY (principal alice, valid an hour unless told)."""
    options.setdefault("principals", ["alice"])
    options.setdefault("valid_before", time.time() + 3600)
    return ca.generate_user_certificate(USER_KEY, options.pop("key_id", "alice@laptop"),
                                        **options)  # fmt: skip


def ca_file(tmp_path: Path, *keys: asyncssh.SSHKey) -> Path:
    """A TrustedUserCAKeys-style file with ``keys``."""
    path = tmp_path / "ca.pub"
    path.write_text("# CAs\n" + "".join(k.export_public_key().decode() for k in keys))
    return path


async def logs_in(port: int, cert: asyncssh.SSHCertificate, user: str = "alice") -> bool:
    """Whether a certificate login as ``user`` succeeds (and serves SFTP)."""
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, username=user, client_keys=[(USER_KEY, cert)],
            known_hosts=None, preferred_auth="publickey",
        ) as conn, conn.start_sftp_client() as sftp:  # fmt: skip
            await sftp.realpath(".")
    except asyncssh.PermissionDenied:
        return False
    return True


class Recording:
    """An authenticator that accepts alice's certificates and keeps what it was shown."""

    def __init__(self) -> None:
        self.seen: list[sftpd.CertificateInfo] = []

    def authorize_certificate(
        self, username: str, certificate: sftpd.CertificateInfo, peer: sftpd.Peer
    ) -> dict[str, Any] | None:
        self.seen.append(certificate)
        if username == "alice" and certificate.trusted_ca:
            return {"root": f"/tenants/{certificate.key_id.split('@')[0]}"}
        return None


async def test_the_authenticator_sees_the_certificate_and_sets_the_session(
    tmp_path: Path,
) -> None:
    """A certificate from a trusted CA reaches the authenticator with its key id, serial,
    principals, validity and CA; the attributes it returns shape the session."""
    auth = Recording()
    sessions: list[sftpd.Session | None] = []
    bus = telemetry.TelemetryBus()
    bus.attach("s", [("sftpd", "session", "open")], lambda e: sessions.append(e.session))
    cert = certificate(serial=42, valid_after=1000)
    async with running_server(
        backend=sftpd.MemoryBackend(), auth=auth, telemetry=bus,
        trusted_user_ca_keys=[ca_file(tmp_path, CA)],
    ) as server:  # fmt: skip
        assert await logs_in(server.port, cert)
    info = auth.seen[-1]
    assert (info.key_id, info.serial, info.principals) == ("alice@laptop", 42, ("alice",))
    assert info.valid_after == 1000
    assert info.valid_before > time.time()
    assert info.ca_fingerprint == CA.get_fingerprint()
    assert info.key_fingerprint == USER_KEY.get_fingerprint()
    assert (info.trusted_ca, info.principal) == (True, "alice")
    session = sessions[-1]
    assert session is not None
    assert session.root == "/tenants/alice"
    assert session.certificate == info
    assert session.auth_method == "publickey"


@pytest.mark.parametrize(
    ("cert", "allowed"),
    [
        (lambda: certificate(), True),
        (lambda: certificate(ca=OTHER_CA), False),  # a CA nobody trusts
        (lambda: certificate(principals=["bob"]), False),  # not alice's name
        (lambda: certificate(valid_before=time.time() - 60), False),  # expired
        (
            lambda: certificate(valid_after=time.time() + 3600, valid_before=time.time() + 7200),
            False,
        ),  # not yet valid
        (lambda: certificate(source_address=["10.0.0.0/8"]), False),
        (lambda: certificate(source_address=["127.0.0.1/32"]), True),
        (lambda: certificate(force_command="/bin/date"), False),  # sshd would run it
        (lambda: certificate(force_command="internal-sftp"), True),
    ],
)
async def test_trust_principal_validity_and_source_address_decide(
    cert: Any, allowed: bool, tmp_path: Path
) -> None:
    """Only a certificate signed by a trusted CA, naming the user, inside its validity
    window and from an allowed source address logs in."""
    async with running_server(
        backend=sftpd.MemoryBackend(), auth={"alice": "pw"},
        trusted_user_ca_keys=[ca_file(tmp_path, CA)],
    ) as server:  # fmt: skip
        assert await logs_in(server.port, cert()) is allowed


async def test_principals_map_to_users(tmp_path: Path) -> None:
    """With authorized_principals, a certificate for principal "ops" logs in as alice;
    without the mapping it does not, and alice's own name no longer suffices."""
    ops = certificate(principals=["ops"])
    own = certificate(principals=["alice"])
    cas = [ca_file(tmp_path, CA)]
    async with running_server(backend=sftpd.MemoryBackend(), auth={"alice": "pw"},
                              trusted_user_ca_keys=cas) as server:  # fmt: skip
        assert not await logs_in(server.port, ops)
    async with running_server(
        backend=sftpd.MemoryBackend(), auth={"alice": "pw"}, trusted_user_ca_keys=cas,
        authorized_principals={"alice": ["ops"]},
    ) as server:  # fmt: skip
        assert await logs_in(server.port, ops)
        assert not await logs_in(server.port, own)


async def test_revoked_keys_refuse_certified_keys_and_cas(tmp_path: Path) -> None:
    """A revoked-keys file holding the certified key, or the CA, refuses the certificate;
    it refuses the same key as a plain key too."""
    for revoked in (USER_KEY, CA):
        path = tmp_path / "revoked"
        path.write_text(revoked.export_public_key().decode())
        # With the key revoked, alice's plain key is listed too: neither way gets in.
        auth: object = (
            sftpd.AuthorizedKeys({"alice": [USER_KEY.export_public_key().decode()]})
            if revoked is USER_KEY else {"alice": "pw"}
        )  # fmt: skip
        async with running_server(
            backend=sftpd.MemoryBackend(), auth=auth, revoked_keys=path,
            trusted_user_ca_keys=[ca_file(tmp_path, CA)],
        ) as server:  # fmt: skip
            assert not await logs_in(server.port, certificate())
            if revoked is USER_KEY:
                with pytest.raises(asyncssh.PermissionDenied):
                    await asyncssh.connect("127.0.0.1", server.port, username="alice",
                                           client_keys=[USER_KEY], known_hosts=None)  # fmt: skip


async def test_a_users_cert_authority_line_trusts_its_ca_for_that_user_only() -> None:
    """A cert-authority line in alice's authorized_keys (with principals=) lets that CA's
    certificates in as alice, and as nobody else; no server-wide CA is needed."""
    line = f'cert-authority,principals="alice,ops" {CA.export_public_key().decode().strip()}'
    auth = sftpd.AuthorizedKeys({
        "alice": [line], "bob": [OTHER_CA.export_public_key().decode()],
    })  # fmt: skip
    async with running_server(backend=sftpd.MemoryBackend(), auth=auth) as server:
        assert await logs_in(server.port, certificate())
        assert not await logs_in(server.port, certificate(principals=["bob"]), user="bob")
        assert not await logs_in(server.port, certificate(principals=["dev"]))


async def test_unreadable_ca_files_fail_at_start(tmp_path: Path) -> None:
    """A CA file that is missing or holds no key stops the start-up, naming it."""
    (tmp_path / "bad.pub").write_text("not a key\n")
    for path, message in ((tmp_path / "missing.pub", "cannot read trusted user CA keys"),
                          (tmp_path / "bad.pub", "line 1: not a public key")):  # fmt: skip
        with pytest.raises(sftpd.ConfigError, match=message):
            async with running_server(backend=sftpd.MemoryBackend(),
                                      trusted_user_ca_keys=[path]):  # fmt: skip
                pytest.fail("the server started")


def sign_with_ssh_keygen(folder: Path, *options: str, ca: str = "ca") -> None:
    """ssh-keygen makes two CAs ("ca", "other") and a user key "id", and certifies it
    with ``ca`` and ``options`` (-n principals, -V validity, -O source-address...)."""
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    for name in ("ca", "other", "id"):
        subprocess.run([*keygen, "-f", str(folder / name)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(folder / ca), "-I", "alice@laptop",
                    *options, str(folder / "id.pub")], check=True)  # fmt: skip


async def test_openssh_client_logs_in_with_a_certificate_signed_by_ssh_keygen(
    tmp_path: Path, openssh: OpenSSH
) -> None:
    """`sftpd serve` with a config file trusting a CA made by ssh-keygen: OpenSSH's sftp
    logs in as alice with a certificate for principal "ops" (mapped to alice), and the
    same certificate is refused once its key is listed in revoked_keys."""
    sign_with_ssh_keygen(tmp_path, "-n", "ops", "-V", "-5m:+1h")
    (tmp_path / "empty").write_text("")
    config = (
        '[server]\ntrusted_user_ca_keys = ["ca.pub"]\nrevoked_keys = "{revoked}"\n'
        'authorized_principals = {{ alice = ["ops"] }}\n\n'
        '[users.alice]\npassword = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/'
        'jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/"\nroot = "/alice"\n'
    )
    extra = ["-o", "PubkeyAuthentication=yes", "-o", "PreferredAuthentications=publickey",
             "-o", "IdentitiesOnly=yes", "-i", str(tmp_path / "id"),
             "-o", f"CertificateFile={tmp_path / 'id-cert.pub'}"]  # fmt: skip
    for revoked, works in (("empty", True), ("id.pub", False)):
        (tmp_path / "sftpd.toml").write_text(config.format(revoked=revoked))
        async with cli("--config", "sftpd.toml", "--backend", "memory", cwd=tmp_path) as (
            _proc, port, _text,
        ):  # fmt: skip
            result = await openssh.run(port, "pwd\n", user="alice", extra=extra)
            assert (result.returncode == 0) is works, result.stderr
            if works:
                assert "Remote working directory: /" in result.stdout


@pytest.mark.parametrize(
    ("signing", "reason"),
    [
        (["-n", "alice", "-V", "-5m:+1h"], None),
        (["-n", "alice", "-V", "20200101:20200102"], "Certificate expired"),
        (["-n", "alice", "-V", "+1d:+2d"], "Certificate not yet valid"),
        (["-n", "bob", "-V", "-5m:+1h"], "no principal of ['bob'] is allowed"),
        (
            ["-n", "alice", "-O", "source-address=10.0.0.0/8"],
            "source-address does not include the client",
        ),
        (["-n", "alice", "--other-ca"], "publickey login failed for alice"),
        (["-n", "alice", "--revoked"], "revoked key"),
    ],
)
async def test_ssh_keygen_certificates_through_openssh_with_a_reason_for_each_refusal(
    signing: list[str], reason: str | None, tmp_path: Path, openssh: OpenSSH,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Certificates signed by ssh-keygen (-n principals, -V validity, -O source-address):
    the valid one logs in through OpenSSH's sftp; expired, not yet valid, wrong principal,
    wrong source, untrusted CA and revoked ones are refused, each logged with its reason."""
    ca = "other" if "--other-ca" in signing else "ca"
    options = [o for o in signing if o not in ("--other-ca", "--revoked")]
    sign_with_ssh_keygen(tmp_path, *options, ca=ca)
    revoked = tmp_path / "revoked"
    revoked.write_text((tmp_path / "id.pub").read_text() if "--revoked" in signing else "")
    extra = ["-o", "PubkeyAuthentication=yes", "-o", "PreferredAuthentications=publickey",
             "-o", "IdentitiesOnly=yes", "-i", str(tmp_path / "id"),
             "-o", f"CertificateFile={tmp_path / 'id-cert.pub'}"]  # fmt: skip
    caplog.set_level("INFO", logger="sftpd")
    async with running_server(
        backend=sftpd.MemoryBackend(), auth={"alice": "pw"}, revoked_keys=revoked,
        trusted_user_ca_keys=[tmp_path / "ca.pub"],
    ) as server:  # fmt: skip
        result = await openssh.run(server.port, "pwd\n", user="alice", extra=extra)
    assert (result.returncode == 0) is (reason is None), result.stderr
    if reason is not None:
        assert reason in caplog.text
