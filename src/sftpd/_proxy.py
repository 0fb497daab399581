"""The PROXY protocol (v1 and v2), for servers behind a TCP load balancer.

A TCP load balancer (HAProxy, AWS NLB, nginx stream, Traefik) connects to the server from
its own address, so every client seems to come from the balancer: login throttling per
address would lock out everyone at once, and audit lines and authenticators would see
the balancer. With the PROXY protocol the balancer first sends a short header naming the
client's address. :class:`ProxyListener` accepts connections, reads that header (exactly,
never a byte of the SSH stream after it) and hands the socket to asyncssh with the
client's address.

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

__all__ = ["ProxyHeaderError", "ProxyListener", "parse_v1", "parse_v2", "read_proxy_header"]

log = logging.getLogger("sftpd")

V1_PREFIX = b"PROXY"
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_BODY = 4096  # addresses plus TLVs; balancers send far less
#: Seconds a new connection has to send its PROXY header.
HEADER_TIMEOUT = 10.0

Address = tuple[str, int]


class ProxyHeaderError(Exception):
    """The connection did not start with a valid PROXY protocol header."""


def parse_v1(line: bytes) -> Address | None:
    """The source address of a v1 header line (CRLF included); ``None`` for UNKNOWN."""
    if not line.endswith(b"\r\n") or len(line) > V1_MAX:
        raise ProxyHeaderError("v1 header is not one line of at most 107 bytes")
    fields = line[:-2].decode("ascii", "replace").split(" ")
    if fields[:2] == ["PROXY", "UNKNOWN"]:
        return None
    if len(fields) != 6 or fields[0] != "PROXY" or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"malformed v1 header {line[:60]!r}")
    try:
        source = ipaddress.ip_address(fields[2])
        ipaddress.ip_address(fields[3])
        port = int(fields[4])
        int(fields[5])
    except ValueError as exc:
        raise ProxyHeaderError(f"malformed v1 header {line[:60]!r}") from exc
    if source.version != (4 if fields[1] == "TCP4" else 6) or not 0 <= port <= 65535:
        raise ProxyHeaderError(f"malformed v1 header {line[:60]!r}")
    return str(source), port


def parse_v2(header: bytes, body: bytes) -> Address | None:
    """The source address of a v2 header; ``None`` for LOCAL or a non-IP family."""
    version, command = header[12] >> 4, header[12] & 0x0F
    if version != 2 or command not in (0, 1):
        raise ProxyHeaderError(f"v2 header with version {version}, command {command}")
    if command == 0:  # LOCAL: the balancer's own connection (health check)
        return None
    family = header[13] >> 4
    if family == 1 and len(body) >= 12:  # AF_INET: src, dst (4 bytes each), ports
        return str(ipaddress.IPv4Address(body[0:4])), int.from_bytes(body[8:10], "big")
    if family == 2 and len(body) >= 36:  # AF_INET6: 16 + 16 bytes, ports
        return str(ipaddress.IPv6Address(body[0:16])), int.from_bytes(body[32:34], "big")
    if family in (1, 2):
        raise ProxyHeaderError("v2 header too short for its addresses")
    return None  # AF_UNSPEC or AF_UNIX: no IP address to report


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise ProxyHeaderError("connection closed inside the PROXY header")
        data += chunk
    return data


async def read_proxy_header(sock: socket.socket) -> Address | None:
    """Read one PROXY header (v1 or v2) from ``sock``, nothing after it.

    Returns:
        The client's address, or ``None`` when the header carries none (v1 UNKNOWN, v2
        LOCAL): then the connection's own peer address stands.

    Raises:
        ProxyHeaderError: the connection does not start with a valid header.
    """
    loop = asyncio.get_running_loop()
    start = await _recv_exactly(loop, sock, 5)
    if start == V1_PREFIX:
        line = start
        while not line.endswith(b"\r\n"):
            if len(line) >= V1_MAX:
                raise ProxyHeaderError("v1 header longer than 107 bytes")
            line += await _recv_exactly(loop, sock, 1)
        return parse_v1(line)
    if start == V2_SIGNATURE[:5]:
        header = start + await _recv_exactly(loop, sock, 11)
        if header[:12] != V2_SIGNATURE:
            raise ProxyHeaderError("bad v2 signature")
        length = int.from_bytes(header[14:16], "big")
        if length > V2_MAX_BODY:
            raise ProxyHeaderError(f"v2 header of {length} bytes is too long")
        return parse_v2(header, await _recv_exactly(loop, sock, length))
    raise ProxyHeaderError("no PROXY header (is the balancer set to send one?)")


Handler = Callable[[socket.socket, Address], Awaitable[None]]


class ProxyListener:
    """Listening sockets whose connections start with a PROXY header.

    Each accepted socket's header is read (within :data:`HEADER_TIMEOUT`), then
    ``handler(sock, client_address)`` runs it. A connection without a valid header is
    closed and logged. ``sockets``, ``close`` and ``wait_closed`` match asyncio's server.
    """

    def __init__(
        self, sockets: list[socket.socket], handler: Handler, allowed: Sequence[str] = ()
    ) -> None:
        self.sockets = sockets
        self._handler = handler
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in allowed]
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(self._accept(sock)) for sock in sockets]
        self._connections: set[asyncio.Task[None]] = set()

    @classmethod
    async def listen(
        cls,
        host: str,
        port: int,
        handler: Handler,
        *,
        reuse_port: bool = False,
        allowed: Sequence[str] = (),
    ) -> ProxyListener:
        """Bind every address ``host`` resolves to (as asyncio does) and start accepting."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(sockets) > 1:  # one port for every address
                    address = (address[0], sockets[0].getsockname()[1], *address[2:])
                sock.bind(address)
                sock.listen(128)
                sock.setblocking(False)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return cls(sockets, handler, allowed)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. out of file descriptors: keep serving the rest
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._serve(sock, (str(peer[0]), int(peer[1]))))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    def _trusted(self, host: str) -> bool:
        if not self._allowed:
            return True
        address = ipaddress.ip_address(host.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self._allowed)

    async def _serve(self, sock: socket.socket, peer: Address) -> None:
        if not self._trusted(peer[0]):
            log.warning("dropping connection from %s:%d: not a trusted proxy", *peer)
            sock.close()
            return
        sock.setblocking(False)
        try:
            client = await asyncio.wait_for(read_proxy_header(sock), HEADER_TIMEOUT)
        except (ProxyHeaderError, OSError, asyncio.TimeoutError) as exc:
            reason = "no PROXY header in time" if isinstance(exc, asyncio.TimeoutError) else exc
            log.warning("dropping connection from %s:%d: %s", peer[0], peer[1], reason)
            sock.close()
            return
        await self._handler(sock, client or peer)

    def close(self) -> None:
        """Stop accepting; connections already handed on keep running."""
        for task in self._accepting:
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        """Wait until the accept loops and header reads have ended."""
        for task in self._connections:  # header reads and logins still under way
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._accepting, *self._connections, return_exceptions=True)
