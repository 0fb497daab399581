"""End-to-end: the Starlette example app authenticates SFTP users from its own table."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import httpx
import pytest

from tests.conftest import connect


async def test_webapp_lifespan_auth_and_tenants(
    host_key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's lifespan runs the server; users land in their tenant; the web side sees it."""
    monkeypatch.setenv("SFTPD_HOST_KEYS", str(host_key_dir))
    monkeypatch.setenv("SFTPD_PORT", "0")
    from examples import webapp

    key = asyncssh.generate_private_key("ssh-ed25519")
    webapp.users.add("carol", "acme", "carol-password", [key.export_public_key().decode()])
    async with webapp.app.router.lifespan_context(webapp.app):
        port = webapp.app.state.sftp.port
        async with connect(port, "alice", "alice-password") as conn, conn.start_sftp_client() as s:
            async with s.open("/invoice.pdf", "wb") as f:
                await f.write(b"%PDF-1.7")
        async with (
            asyncssh.connect(
                "127.0.0.1", port, username="carol", client_keys=[key], known_hosts=None
            ) as conn,
            conn.start_sftp_client() as s,
        ):
            assert "invoice.pdf" in await s.listdir("/")  # same tenant as alice
        async with connect(port, "bob", "bob-password") as conn, conn.start_sftp_client() as s:
            assert await s.listdir("/") == [".", ".."]
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await s.stat("/../acme/invoice.pdf")
        with pytest.raises(asyncssh.PermissionDenied):
            async with connect(port, "alice", "wrong"):
                pass
        transport = httpx.ASGITransport(app=webapp.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            acme = (await http.get("/tenants/acme/files")).json()
            globex = (await http.get("/tenants/globex/files")).json()
        assert acme == [{"name": "invoice.pdf", "size": 8}]
        assert globex == []
    assert not webapp.app.state.sftp.is_serving
