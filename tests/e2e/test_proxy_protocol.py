"""End-to-end: behind a TCP load balancer, the PROXY protocol header names the client."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sftpd
from sftpd import _proxy, telemetry
from sftpd._proxy import ProxyHeaderError, parse_v1, parse_v2
from sftpd.testing import running_server
from tests.conftest import OpenSSH, cli, connect, stop_cli
from tests.s3_servers import free_port


def v1(source: str, port: int) -> bytes:
    """A v1 header from ``source:port`` to the server."""
    family = "TCP6" if ":" in source else "TCP4"
    target = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {source} {target} {port} 2222\r\n".encode()


def v2(source: str, port: int, *, local: bool = False) -> bytes:
    """A v2 header (PROXY, or LOCAL as a balancer's health check sends) from ``source``."""
    address = ipaddress.ip_address(source)
    target = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    body = address.packed + target.packed + struct.pack(">HH", port, 2222)
    family = 0x21 if address.version == 6 else 0x11
    command = 0x20 if local else 0x21
    return _proxy.V2_SIGNATURE + bytes([command, family]) + struct.pack(">H", len(body)) + body


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 2222\r\n", ("203.0.113.7", 40000)),
        (b"PROXY TCP6 2001:db8::1 ::1 65535 22\r\n", ("2001:db8::1", 65535)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n", None),
    ],
)
def test_v1_headers_give_the_source(line: bytes, expected: tuple[str, int] | None) -> None:
    """Valid v1 lines give the client's address; UNKNOWN gives none."""
    assert parse_v1(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 203.0.113.7 10.0.0.1 40000\r\n",  # a field missing
        b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",  # IPv6 address under TCP4
        b"PROXY TCP4 203.0.113.300 10.0.0.1 1 2\r\n",  # not an address
        b"PROXY TCP4 203.0.113.7 10.0.0.1 70000 2\r\n",  # port out of range
        b"PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n",  # not TCP
        b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\n",  # no CR
    ],
)
def test_malformed_v1_headers_are_refused(line: bytes) -> None:
    """Malformed v1 lines raise ProxyHeaderError."""
    with pytest.raises(ProxyHeaderError):
        parse_v1(line)


def test_v2_headers_give_the_source() -> None:
    """v2 PROXY gives the IPv4 or IPv6 source; LOCAL and short bodies are handled."""
    for source in ("198.51.100.9", "2001:db8::5"):
        header = v2(source, 1234)
        assert parse_v2(header[:16], header[16:]) == (source, 1234)
    local = v2("198.51.100.9", 1234, local=True)
    assert parse_v2(local[:16], local[16:]) is None
    with pytest.raises(ProxyHeaderError):
        parse_v2(header[:16], header[16:20])  # IPv6 family, 4 bytes of addresses


@contextlib.asynccontextmanager
async def proxied_connect(port: int, header: bytes, **options: Any) -> AsyncIterator[Any]:
    """An asyncssh connection that first sends ``header`` on its socket, as a balancer does."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(header)
        async with connect(0, sock=sock, **options) as conn:
            yield conn
    finally:
        sock.close()


@pytest.fixture
async def proxied_server() -> AsyncIterator[tuple[sftpd.Server, list[str]]]:
    """A server expecting PROXY headers; yields it and the peers its logins report."""
    bus = telemetry.TelemetryBus()
    peers: list[str] = []
    bus.attach("peers", ("sftpd", "auth", "success"), lambda e: peers.append(e.metadata["peer"]))
    async with running_server(
        backend=sftpd.MemoryBackend(), proxy_protocol=True, telemetry=bus
    ) as server:
        yield server, peers


@pytest.mark.parametrize(
    ("header", "peer"),
    [
        (v1("203.0.113.7", 40000), "203.0.113.7:40000"),
        (v2("203.0.113.8", 40001), "203.0.113.8:40001"),
        (v2("2001:db8::1", 40002), "[2001:db8::1]:40002"),
    ],
)
async def test_the_header_names_the_session_peer(
    proxied_server: tuple[sftpd.Server, list[str]], header: bytes, peer: str
) -> None:
    """A v1 or v2 header's source address becomes the session's peer; SFTP then works."""
    server, peers = proxied_server
    async with proxied_connect(server.port, header) as conn:
        async with conn.start_sftp_client() as sftp:
            assert await sftp.listdir("/") == [".", ".."]
    assert peers == [peer]


async def test_local_header_keeps_the_socket_peer(
    proxied_server: tuple[sftpd.Server, list[str]],
) -> None:
    """A v2 LOCAL header (a balancer's own check) leaves the connection's real address."""
    server, peers = proxied_server
    async with proxied_connect(server.port, v2("203.0.113.9", 1, local=True)) as conn:
        async with conn.start_sftp_client() as sftp:
            await sftp.listdir("/")
    assert peers[0].startswith("127.0.0.1:")


async def test_connections_without_a_header_are_dropped(
    proxied_server: tuple[sftpd.Server, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No header, a bad header or a silent client: dropped; proxied clients still served."""
    monkeypatch.setattr(_proxy, "HEADER_TIMEOUT", 0.5)
    server, peers = proxied_server
    with pytest.raises((asyncssh.Error, OSError)):
        async with connect(server.port):
            pass
    with pytest.raises((asyncssh.Error, OSError)):
        async with proxied_connect(server.port, b"PROXY TCP4 nonsense\r\n"):
            pass
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after HEADER_TIMEOUT
    writer.close()
    async with proxied_connect(server.port, v1("203.0.113.10", 5)) as conn:
        async with conn.start_sftp_client() as sftp:
            await sftp.listdir("/")
    assert peers == ["203.0.113.10:5"]


async def test_login_throttling_counts_per_proxied_address() -> None:
    """Failed logins lock out the proxied address that made them, not everyone."""
    limits = sftpd.LoginLimits(per_address=2, base_delay=0.01, max_delay=0.01)
    async with running_server(
        backend=sftpd.MemoryBackend(), proxy_protocol=True, login_limits=limits
    ) as server:
        for _ in range(3):
            with pytest.raises(asyncssh.PermissionDenied):
                async with proxied_connect(server.port, v1("203.0.113.66", 1), password="wrong"):
                    pass
        with pytest.raises(asyncssh.PermissionDenied):  # locked out: even the right password
            async with proxied_connect(server.port, v1("203.0.113.66", 2)):
                pass
        async with proxied_connect(server.port, v1("198.51.100.1", 3)) as conn:
            async with conn.start_sftp_client() as sftp:
                assert await sftp.listdir("/") == [".", ".."]


@pytest.fixture(scope="session")
def haproxy_binary() -> str:
    """HAProxy, the load balancer."""
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if path is None:  # pragma: no cover - CI installs haproxy
        pytest.fail("HAProxy is not installed (apt-get install haproxy)")
    return path


async def test_openssh_through_haproxy(
    proxied_server: tuple[sftpd.Server, list[str]],
    haproxy_binary: str,
    openssh: OpenSSH,
    tmp_path: Path,
) -> None:
    """OpenSSH through HAProxy (send-proxy-v2): the session's peer is the client's address.

    The client binds to 127.0.0.2, so its address differs from HAProxy's (127.0.0.1).
    """
    server, peers = proxied_server
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "global\n  maxconn 100\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
        "  timeout server 60s\n"
        f"listen sftp\n  bind 127.0.0.1:{front}\n"
        f"  server sftpd 127.0.0.1:{server.port} send-proxy-v2\n"
    )
    check = await asyncio.create_subprocess_exec(
        haproxy_binary, "-c", "-f", str(config),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await check.communicate()
    assert check.returncode == 0, output
    balancer = await asyncio.create_subprocess_exec(
        haproxy_binary, "-db", "-f", str(config),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):  # until HAProxy listens
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        (tmp_path / "up.txt").write_text("through the balancer\n")
        result = await openssh.run(
            front, "put up.txt\nls -l\n", cwd=tmp_path, extra=["-o", "BindAddress=127.0.0.2"]
        )
    finally:
        balancer.terminate()
        await balancer.wait()
    assert result.returncode == 0, result.stderr
    assert "up.txt" in result.stdout
    assert [peer.split(":")[0] for peer in peers] == ["127.0.0.2"]


@pytest.mark.parametrize("how", ["flag", "config file"])
async def test_serve_proxy_protocol_from_flag_or_config_file(how: str, tmp_path: Path) -> None:
    """`sftpd serve --proxy-protocol [--proxy-from]`, or the same keys in the config file."""
    (tmp_path / "proxy.toml").write_text("[server]\nproxy_protocol = true\n")
    (tmp_path / "from.toml").write_text(
        '[server]\nproxy_protocol = true\nproxy_from = ["192.0.2.0/24"]\n'
    )
    open_to_all = ["--proxy-protocol"] if how == "flag" else ["--config", "proxy.toml"]
    balancer_elsewhere = (
        ["--proxy-protocol", "--proxy-from", "192.0.2.0/24"]
        if how == "flag"
        else ["--config", "from.toml"]
    )
    async with cli(*open_to_all, cwd=tmp_path) as (proc, port, _):
        async with proxied_connect(port, v1("203.0.113.20", 7)) as conn:
            async with conn.start_sftp_client() as sftp:
                assert await sftp.listdir("/") == [".", ".."]
        with pytest.raises((asyncssh.Error, OSError)):
            async with connect(port):
                pass
        assert await stop_cli(proc) == 0
    async with cli(*balancer_elsewhere, cwd=tmp_path) as (proc, port, _):
        with pytest.raises((asyncssh.Error, OSError)):  # 127.0.0.1 is not 192.0.2.0/24
            async with proxied_connect(port, v1("203.0.113.21", 7)):
                pass
        assert await stop_cli(proc) == 0


async def test_proxy_from_drops_connections_from_elsewhere() -> None:
    """With proxy_from, only the listed networks may send headers; others are dropped."""
    options: dict[str, Any] = {"backend": sftpd.MemoryBackend(), "proxy_protocol": True}
    async with running_server(**options, proxy_from=["192.0.2.0/24"]) as server:
        with pytest.raises((asyncssh.Error, OSError)):  # 127.0.0.1 is not the balancer
            async with proxied_connect(server.port, v1("203.0.113.30", 1)):
                pass
    async with running_server(**options, proxy_from=["192.0.2.1", "127.0.0.0/8"]) as server:
        async with proxied_connect(server.port, v1("203.0.113.31", 1)) as conn:
            async with conn.start_sftp_client() as sftp:
                assert await sftp.listdir("/") == [".", ".."]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"proxy_from": ["10.0.0.0/8"]}, "proxy_from needs proxy_protocol=True"),
        ({"proxy_protocol": True, "proxy_from": ["10.0.0.0/33"]}, "not an address or network"),
        ({"proxy_protocol": True, "proxy_from": "10.0.0.0/8"}, "must be a list"),
        ({"proxy_protocol": "yes"}, "proxy_protocol must be True or False"),
    ],
)
def test_proxy_options_are_checked(options: dict[str, Any], message: str) -> None:
    """Inconsistent or malformed PROXY options fail at construction, saying what to fix."""
    with pytest.raises(sftpd.ConfigError, match=message):
        sftpd.ServerConfig(backend=sftpd.MemoryBackend(), auth={"a": "b"}, system_dir=".",
                           **options)  # fmt: skip
