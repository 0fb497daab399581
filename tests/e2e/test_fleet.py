"""End-to-end: two `sftpd serve` instances behind HAProxy, sharing Redis and SeaweedFS.

Every test starts real parts: Debian's redis-server (the suite's, emptied), a new bucket
on the suite's SeaweedFS (``weed mini``), two `sftpd serve` processes with one config file
(PROXY protocol, the same host key, ``[state] url = "redis://..."``) and HAProxy with a
frontend to each instance and one balancing over both, health-checked on ``/readyz``.
Clients connect from 127.0.0.2 and 127.0.0.3, which HAProxy passes on as the client's
address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from sftpd.redis_state import RedisState
from sftpd.state import Usage
from tests.conftest import http_get as ready
from tests.s3_servers import ACCESS_KEY, SECRET_KEY, client_and_bucket, free_port

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20


@dataclass
class Instance:
    """One `sftpd serve` process."""

    proc: asyncio.subprocess.Process
    log: Path
    admin: str  # http://127.0.0.1:PORT

    def printed(self) -> str:
        """Everything it has printed so far."""
        return self.log.read_text(errors="replace")


@dataclass
class Fleet:
    """The running fleet: ports of HAProxy's frontends, the instances, the shared parts."""

    lb: int  # balanced over both instances
    to_a: int  # to instance a only
    to_b: int  # to instance b only
    a: Instance
    b: Instance
    redis: Any  # tests.redis_server.RedisServer
    state: RedisState
    s3: Any  # aiobotocore client
    bucket: str

    async def objects(self) -> list[str]:
        """Keys in the bucket (directory markers aside)."""
        listed = await self.s3.list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []) if not o["Key"].endswith("/"))

    async def open_uploads(self) -> list[str]:
        """Multipart uploads not completed or aborted."""
        listed = await self.s3.list_multipart_uploads(Bucket=self.bucket)
        return [u["Key"] for u in listed.get("Uploads", [])]


def login(port: int, user: str, password: str, source: str = "127.0.0.2", **kw: Any) -> Any:
    """An asyncssh connection through HAProxy from ``source``."""
    return asyncssh.connect(
        "127.0.0.1", port, username=user, password=password, known_hosts=None,
        client_keys=None, preferred_auth="password", local_addr=(source, 0), **kw,
    )  # fmt: skip


async def _start_instance(config: Path, folder: Path, name: str, port: int) -> Instance:
    admin = free_port()
    log = folder / f"{name}.log"
    output = log.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sftpd", "serve", "--config", str(config), "--port", str(port),
        "--admin-port", str(admin), "--log-level", "info",
        cwd=folder, stdout=output, stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
             "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"},
    )  # fmt: skip
    output.close()
    instance = Instance(proc, log, f"http://127.0.0.1:{admin}")
    deadline = time.monotonic() + 30
    while "sftp -P" not in instance.printed():
        if proc.returncode is not None or time.monotonic() > deadline:
            pytest.fail(f"sftpd {name} did not start: {instance.printed()}")
        await asyncio.sleep(0.1)
    return instance


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def fleet(
    tmp_path: Path, redis_server: Any, redis_url: str, seaweedfs: Any, users: str,
    server: str = "", extra: str = "",
) -> AsyncIterator[Fleet]:  # fmt: skip
    """Start the fleet with ``users`` (TOML [users.*] tables) and more ``server`` keys."""
    keys = tmp_path / "host_keys"
    keys.mkdir()
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(
        str(keys / "ssh_host_ed25519_key")
    )
    async with client_and_bucket(seaweedfs.endpoint, "fleet") as (s3, bucket):
        config = tmp_path / "sftpd.toml"
        config.write_text(
            f'[server]\nbackend = "s3://{bucket}"\n'
            f'host_key_dir = "{keys}"\nproxy_protocol = true\nproxy_from = ["127.0.0.1"]\n'
            "connection_rate = 1000.0\nconnection_burst = 1000\nupload_digests = []\n"
            f'{server}\n[s3]\nendpoint_url = "{seaweedfs.endpoint}"\n'
            "part_size = 5242880\n"
            f'[state]\nurl = "{redis_url}"\n'
            f"{extra}\n{users}\n"
        )
        ports = [free_port(), free_port()]
        a = await _start_instance(config, tmp_path, "a", ports[0])
        try:
            b = await _start_instance(config, tmp_path, "b", ports[1])
        except BaseException:
            await _stop(a.proc)
            raise
        fronts = [free_port(), free_port(), free_port()]
        admin_ports = [int(i.admin.rsplit(":", 1)[1]) for i in (a, b)]

        def backend(name: str, port: int, admin: int) -> str:
            return (f"  server {name} 127.0.0.1:{port} send-proxy-v2 check port {admin} "
                    "inter 200 fall 1 rise 1\n")  # fmt: skip

        haproxy_cfg = tmp_path / "haproxy.cfg"
        haproxy_cfg.write_text(
            "global\n  maxconn 200\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n"
            "  timeout server 120s\n"
            f"listen lb\n  bind 127.0.0.1:{fronts[0]}\n  balance roundrobin\n"
            "  option httpchk GET /readyz\n"
            + backend("a", ports[0], admin_ports[0])
            + backend("b", ports[1], admin_ports[1])
            + f"listen to_a\n  bind 127.0.0.1:{fronts[1]}\n"
            f"  server a 127.0.0.1:{ports[0]} send-proxy-v2\n"
            f"listen to_b\n  bind 127.0.0.1:{fronts[2]}\n"
            f"  server b 127.0.0.1:{ports[1]} send-proxy-v2\n"
        )
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        balancer = await asyncio.create_subprocess_exec(
            binary, "-db", "-f", str(haproxy_cfg),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        state = RedisState(redis_url)
        try:
            for front in fronts:
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", front), timeout=1).close()
                        break
                    except OSError:
                        await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the first health checks
            yield Fleet(fronts[0], fronts[1], fronts[2], a, b, redis_server, state, s3, bucket)
        finally:
            await state.close()
            balancer.terminate()
            await balancer.wait()
            for instance in (a, b):
                await _stop(instance.proc)


LIMITS = "[login_limits]\nper_user_and_address = 4\nbase_delay = 0.05\nmax_delay = 0.2\n"


async def test_password_guessing_over_both_instances_is_throttled_as_one(
    tmp_path: Path, redis_server: Any, redis_url: str, seaweedfs: Any
) -> None:
    """Wrong passwords spread over both instances count together: the ban holds on both
    for that user from that address, while the real user logs in from another address."""
    users = '[users.ann]\npassword = "right"\n'
    async with fleet(tmp_path, redis_server, redis_url, seaweedfs, users, extra=LIMITS) as f:
        for port in (f.to_a, f.to_b, f.to_a, f.to_b):
            with pytest.raises(asyncssh.PermissionDenied):
                async with login(port, "ann", "wrong"):
                    pass
        for port in (f.to_a, f.to_b):  # banned on both, the right password included
            with pytest.raises(asyncssh.PermissionDenied):
                async with login(port, "ann", "right"):
                    pass
        for port in (f.to_a, f.to_b):
            async with login(port, "ann", "right", source="127.0.0.3") as conn:
                async with conn.start_sftp_client() as sftp:
                    assert await sftp.listdir("/") == [".", ".."]
    banned = [i.printed() for i in (f.a, f.b)]
    assert all("too many failed logins for this user from this address" in t for t in banned)


async def test_quota_holds_to_the_byte_over_two_instances(
    tmp_path: Path, redis_server: Any, redis_url: str, seaweedfs: Any
) -> None:
    """Two uploads at once on two instances: the one that would pass the quota fails with
    "quota exceeded" and the numbers, leaving no object and no multipart upload; the quota
    fills to the byte; df shows it; a delete gives the space back."""
    quota = 3 * MiB
    users = f'[users.ann]\npassword = "pw"\nquota_bytes = {quota}\n'
    chunk = b"q" * (64 << 10)
    async with fleet(tmp_path, redis_server, redis_url, seaweedfs, users) as f:
        async with login(f.to_a, "ann", "pw") as ca, login(f.to_b, "ann", "pw") as cb:
            async with ca.start_sftp_client() as sa, cb.start_sftp_client() as sb:
                first, second = (
                    await sa.open("/first.bin", "wb"),
                    await sb.open("/second.bin", "wb"),
                )
                for index in range(16):  # 1 MiB each, interleaved
                    await first.write(chunk, index * len(chunk))
                    await second.write(chunk, index * len(chunk))
                for index in range(16, 32):  # first reaches 2 MiB: 3 MiB reserved in all
                    await first.write(chunk, index * len(chunk))
                with pytest.raises(asyncssh.SFTPFailure, match="Quota exceeded"):
                    await second.write(chunk, 16 * len(chunk))
                await first.close()
                with pytest.raises(asyncssh.SFTPFailure) as failed:
                    await second.close()
                assert "Quota exceeded: 3145728 of 3145728 bytes in use" in str(failed.value)
                assert "nothing was stored" in str(failed.value)
                assert await f.objects() == ["first.bin"]
                assert await f.open_uploads() == []
                assert await f.state.usage("ann") == Usage(2 * MiB, 1)
                vfs = await sb.statvfs("/")
                assert vfs.blocks * vfs.frsize == quota
                assert vfs.bavail * vfs.frsize == MiB

                async with sb.open("/exact.bin", "wb") as exact:  # the last MiB, to the byte
                    await exact.write(b"e" * MiB)
                assert await f.state.usage("ann") == Usage(quota, 2)
                with pytest.raises(asyncssh.SFTPFailure, match="Quota exceeded"):
                    async with sa.open("/one-more.bin", "wb") as more:
                        await more.write(b"1")
                await sa.remove("/first.bin")
                assert await f.state.usage("ann") == Usage(MiB, 1)
                async with sa.open("/again.bin", "wb") as again:
                    await again.write(b"a" * (2 * MiB))
        assert await f.objects() == ["again.bin", "exact.bin"]
        assert await f.state.usage("ann") == Usage(quota, 2)


async def test_per_user_session_cap_holds_over_two_instances(
    tmp_path: Path, redis_server: Any, redis_url: str, seaweedfs: Any
) -> None:
    """A user allowed two sessions has one on each instance; a third on either is refused
    with the reason; when one ends, a new one may open."""
    users = '[users.bob]\npassword = "pw"\nmax_sessions = 2\n[users.cat]\npassword = "pw"\n'
    async with fleet(tmp_path, redis_server, redis_url, seaweedfs, users) as f:
        async with login(f.to_a, "bob", "pw"), login(f.to_b, "bob", "pw") as second:
            for port in (f.to_a, f.to_b):
                with pytest.raises(asyncssh.DisconnectError, match="Too many sessions for this"):
                    async with login(port, "bob", "pw"):
                        pass
            async with login(f.to_a, "cat", "pw"):  # other users are not affected
                pass
            second.close()
            await second.wait_closed()
            for _ in range(50):  # the lease is given back in the background
                if await f.state.session_count("bob") == 1:
                    break
                await asyncio.sleep(0.1)
            async with login(f.to_b, "bob", "pw") as third:
                async with third.start_sftp_client() as sftp:
                    assert await sftp.listdir("/") == [".", ".."]


async def test_per_user_bandwidth_holds_for_downloads_on_two_instances(
    tmp_path: Path, redis_server: Any, redis_url: str, seaweedfs: Any
) -> None:
    """Two downloads at once on two instances share the user's rate: together they take
    within 15 % of size / rate."""
    rate = 2 * MiB
    users = f'[users.dan]\npassword = "pw"\ndownload_rate = {rate}\n'
    size = 4 * MiB
    async with fleet(tmp_path, redis_server, redis_url, seaweedfs, users) as f:
        await f.s3.put_object(Bucket=f.bucket, Key="big.bin", Body=os.urandom(size))
        async with login(f.to_a, "dan", "pw") as ca, login(f.to_b, "dan", "pw") as cb:
            async with ca.start_sftp_client() as sa, cb.start_sftp_client() as sb:
                started = time.monotonic()
                await asyncio.gather(
                    sa.get("/big.bin", str(tmp_path / "one.bin")),
                    sb.get("/big.bin", str(tmp_path / "two.bin")),
                )
                elapsed = time.monotonic() - started
    expected = 2 * size / rate  # 4 s
    assert expected * 0.85 <= elapsed <= expected * 1.15, elapsed
    assert (tmp_path / "one.bin").stat().st_size == size
    assert (tmp_path / "two.bin").stat().st_size == size


async def test_redis_killed_mid_run(
    tmp_path: Path, redis_server: Any, redis_url: str, seaweedfs: Any
) -> None:
    """Redis killed during an upload: the upload completes and is stored; new logins are
    refused with a clear reason and /readyz says why; once Redis is back (empty), logins
    work again and the quota usage is counted again from the storage, the upload in it."""
    users = f'[users.eve]\npassword = "pw"\nquota_bytes = {64 * MiB}\n'
    data = os.urandom(6 * MiB)
    async with fleet(tmp_path, redis_server, redis_url, seaweedfs, users) as f:
        async with login(f.to_a, "eve", "pw") as conn, conn.start_sftp_client() as sftp:
            upload = await sftp.open("/kept.bin", "wb")
            await upload.write(data[: 2 * MiB])
            f.redis.kill()
            await upload.write(data[2 * MiB :], 2 * MiB)
            await upload.close()
            async with sftp.open("/kept.bin", "rb") as back:
                assert await back.read() == data
            with pytest.raises(asyncssh.DisconnectError, match="Service unavailable"):
                async with login(f.to_b, "eve", "pw"):
                    pass
            status, body = await asyncio.to_thread(ready, f.b.admin + "/readyz")
            assert (status, body.strip()) == (503, "state store unreachable")
            live, _ = await asyncio.to_thread(ready, f.b.admin + "/healthz")
            assert live == 200
            f.redis.start()
            for _ in range(50):
                if (await asyncio.to_thread(ready, f.b.admin + "/readyz"))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            async with login(f.to_b, "eve", "pw") as again, again.start_sftp_client() as s2:
                assert (await s2.stat("/kept.bin")).size == len(data)
            assert await f.state.usage("eve") == Usage(len(data), 1)
    assert "state store unreachable" in f.a.printed() + f.b.printed()
    assert "state store reachable again" in f.b.printed()


async def test_readyz_flips_on_sigterm_while_a_transfer_completes(
    tmp_path: Path, redis_server: Any, redis_url: str, seaweedfs: Any
) -> None:
    """SIGTERM: /readyz answers 503 at once, the balancer sends new logins to the other
    instance, the upload in progress completes, and the process exits 0."""
    users = '[users.fay]\npassword = "pw"\n'
    async with fleet(tmp_path, redis_server, redis_url, seaweedfs, users,
                     server="shutdown_grace = 30.0") as f:  # fmt: skip
        assert await asyncio.to_thread(ready, f.a.admin + "/readyz") == (200, "ok\n")
        async with login(f.to_a, "fay", "pw") as conn, conn.start_sftp_client() as sftp:
            upload = await sftp.open("/during.bin", "wb")
            await upload.write(b"d" * MiB)
            f.a.proc.send_signal(signal.SIGTERM)
            status, body = 0, ""
            for _ in range(50):
                status, body = await asyncio.to_thread(ready, f.a.admin + "/readyz")
                if status == 503:
                    break
                await asyncio.sleep(0.05)
            assert (status, body.strip()) == (503, "draining")
            await asyncio.sleep(0.6)  # HAProxy's next checks see it
            for _ in range(4):  # every new login through the balancer lands on b
                async with login(f.lb, "fay", "pw") as other:
                    assert other.get_extra_info("server_version")
            await upload.write(b"d" * MiB, MiB)
            await upload.close()
        assert await asyncio.wait_for(f.a.proc.wait(), 30) == 0
        head = await f.s3.head_object(Bucket=f.bucket, Key="during.bin")
        assert head["ContentLength"] == 2 * MiB
    logins_on_a = re.findall(r"fay logged in", f.a.printed())
    assert len(logins_on_a) == 1  # only the session that was open before SIGTERM
