"""End-to-end: the fleet options of `sftpd serve` and `sftpd quota`, with a real Redis."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sftpd import _config_file
from sftpd._config_file import load_config_file
from sftpd.cli import main
from sftpd.redis_state import RedisState
from sftpd.state import Usage
from tests.conftest import cli, connect, stop_cli
from tests.conftest import http_get as get
from tests.s3_servers import free_port

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "deploy"


def write_config(tmp_path: Path, state: str, root: Path) -> Path:
    """A config file with two quota'd users of one tenant and one without a quota."""
    config = tmp_path / "sftpd.toml"
    config.write_text(
        f'[server]\nbackend = "local:{root}"\n[state]\nurl = "{state}"\n'
        '[users.ann]\npassword = "pw"\nroot = "/acme/ann"\nquota_bytes = "1M"\n'
        'quota_key = "acme"\n'
        '[users.bob]\npassword = "pw"\nroot = "/acme/bob"\nquota_bytes = "1M"\n'
        'quota_key = "acme"\n'
        '[users.cat]\npassword = "pw"\n'
    )
    return config


def test_quota_scan_and_show(tmp_path: Path, redis_url: str) -> None:
    """`sftpd quota scan` counts a tenant's files under each of its users' roots into
    Redis; `sftpd quota show` prints the limits and the usage."""
    root = tmp_path / "data"
    for folder, size in (("acme/ann", 100), ("acme/bob", 250), ("elsewhere", 999)):
        (root / folder).mkdir(parents=True)
        (root / folder / "f.bin").write_bytes(b"x" * size)
    config = write_config(tmp_path, redis_url, root)
    scanned = CliRunner().invoke(main, ["quota", "scan", "--config", str(config)])
    assert scanned.exit_code == 0, scanned.output
    assert "acme: 350 bytes in 2 files" in scanned.output

    async def usage() -> Usage | None:
        store = RedisState(redis_url)
        try:
            return await store.usage("acme")
        finally:
            await store.close()

    assert asyncio.run(usage()) == Usage(350, 2)
    shown = CliRunner().invoke(main, ["quota", "show", "--config", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "acme (ann, bob): 350 bytes in 2 files, 0 bytes reserved; limit 1048576 bytes" in (
        shown.output
    )
    unknown = CliRunner().invoke(main, ["quota", "scan", "--config", str(config), "cat"])
    assert unknown.exit_code == 2
    assert "no quota for user(s) cat" in unknown.output
    memory = write_config(tmp_path, "memory", root)
    lost = CliRunner().invoke(main, ["quota", "scan", "--config", str(memory)])
    assert lost.exit_code == 2
    assert "lost at exit" in lost.output


def test_an_unreachable_or_unknown_state_store_fails_the_start(tmp_path: Path) -> None:
    """--check with a Redis nobody listens on, and an unknown --state, exit 2 saying why."""
    keys = ["--host-key-dir", str(tmp_path), "--generate-host-key"]
    down = CliRunner().invoke(main, ["serve", *keys, "--check",
                                     "--state", f"redis://127.0.0.1:{free_port()}/0"])  # fmt: skip
    assert down.exit_code == 2
    said = " ".join(down.output.split())  # as rich wrapped it
    assert "unreachable" in said
    assert "start Redis or fix --state" in said
    unknown = CliRunner().invoke(main, ["serve", *keys, "--state", "postgres://db"])
    assert unknown.exit_code == 2
    assert "must be 'memory' or a Redis URL" in unknown.output


def test_config_sections_for_fleets_are_checked(tmp_path: Path) -> None:
    """[bandwidth], [login_limits] and the users' quota keys are parsed and checked."""
    good = tmp_path / "good.toml"
    good.write_text(
        '[bandwidth]\nuser_download = "10M"\nsession_upload = 4096\n'
        "[login_limits]\nper_user_and_address = 3\nwindow = 60\n"
        '[users.ann]\npassword = "pw"\nquota_bytes = "2G"\nquota_files = 10\n'
        'download_rate = "1M"\nmax_sessions = 2\n'
    )
    loaded = load_config_file(good)
    assert loaded.bandwidth == {"user_download": "10M", "session_upload": 4096}
    assert loaded.login_limits == {"per_user_and_address": 3, "window": 60.0}
    expected = {"quota_bytes": 2 << 30, "quota_files": 10, "download_rate": 1 << 20,
                "max_sessions": 2}  # fmt: skip
    assert loaded.users.attributes["ann"] == expected
    for text, message in (
        ('[users.ann]\npassword = "pw"\nquota_bytes = "lots"\n', "quota_bytes: 'lots' is not"),
        ('[users.ann]\npassword = "pw"\nquota_key = "t"\n', "quota_key needs quota_bytes"),
        ("[bandwidth]\nuser_download = true\n", "must be a number or size"),
        ("[login_limits]\nper_user = 1.5\n", "per_user must be a int"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        result = CliRunner().invoke(main, ["serve", "--config", str(bad)])
        assert result.exit_code == 2, text
        assert message in result.output, result.output


def test_the_example_configurations_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployment example's config file and the config file module's own example are
    valid: every section and key is known."""
    monkeypatch.setenv("ALICE_PASSWORD", "secret")
    loaded = load_config_file(EXAMPLES / "sftpd.toml")
    assert loaded.state == {"url": "redis://redis:6379/0"}
    assert loaded.users.attributes["alice"]["quota_bytes"] == 10 << 30
    doc = _config_file.__doc__ or ""
    documented = tomllib.loads(doc[doc.index("[server]") :])
    assert set(documented["server"]) <= set(_config_file.SERVER_KEYS)
    assert set(documented["bandwidth"]) <= set(_config_file.BANDWIDTH_KEYS)
    assert set(documented["login_limits"]) <= set(_config_file.LOGIN_LIMIT_KEYS)
    assert set(documented["state"]) <= set(_config_file.STATE_KEYS)
    assert set(documented["users"]["alice"]) <= _config_file.USER_KEYS


async def test_workers_supervisor_serves_health_and_readiness(tmp_path: Path) -> None:
    """With --workers 2, the supervisor's admin port says ready once both workers listen
    and draining after SIGTERM, while /healthz stays up."""
    (tmp_path / "data").mkdir()
    admin = free_port()
    args = ("--workers", "2", "--backend", f"local:{tmp_path / 'data'}", "--admin-port",
            str(admin))  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sftpd", "serve", "--port", "0", *args, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.stdout is not None
    text = ""
    try:
        while "sftp -P" not in text:
            text += (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert f"Health: http://127.0.0.1:{admin}/healthz" in text
        base = f"http://127.0.0.1:{admin}"
        assert await asyncio.to_thread(get, base + "/readyz") == (200, "ok\n")
        port = int(re.search(r"sftp -P (\d+)", text).group(1))  # type: ignore[union-attr]
        async with connect(port) as conn:
            proc.send_signal(signal.SIGTERM)
            status: tuple[int, str] = (0, "")
            for _ in range(50):
                status = await asyncio.to_thread(get, base + "/readyz")
                if status[0] == 503:
                    break
                await asyncio.sleep(0.05)
            assert status == (503, "draining\n")
            assert (await asyncio.to_thread(get, base + "/healthz"))[0] == 200
            conn.close()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_single_process_admin_port(tmp_path: Path) -> None:
    """`sftpd serve --admin-port`: /healthz and /readyz answer ok, /metrics counts, and
    an unknown path says where to look."""
    admin = free_port()
    async with cli("--admin-port", str(admin), cwd=tmp_path) as (proc, port, _):
        base = f"http://127.0.0.1:{admin}"
        assert await asyncio.to_thread(get, base + "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(get, base + "/readyz") == (200, "ok\n")
        async with connect(port):
            pass
        status, page = await asyncio.to_thread(get, base + "/metrics")
        assert status == 200
        assert "sftpd_sessions_total 1.0" in page
        assert (await asyncio.to_thread(get, base + "/nope"))[0] == 404
        assert await stop_cli(proc) == 0
