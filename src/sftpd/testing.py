"""Helpers for testing your own backends and apps.

:func:`running_server` and :func:`make_session` need nothing more than sftpd; the
conformance suite (``BackendConformance`` and its mixins, one per capability) needs pytest
and pytest-asyncio and is imported only when it is asked for.

Run the conformance suite on your backend by subclassing it with one fixture::

    import pytest
    from sftpd.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def backend(self):
            return MyBackend(...)

and start a throwaway server in a test with :func:`running_server`::

    async with running_server(backend=MemoryBackend()) as server:
        ...  # connect to 127.0.0.1:server.port as dev/dev
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from ._server import Server
from ._session import make_session

if TYPE_CHECKING:
    from ._conformance import (
        BackendConformance,
        BasicConformance,
        ExclusiveWriteConformance,
        RangeReadConformance,
        SetAttrsConformance,
        StreamingWriteConformance,
    )

__all__ = [
    "BackendConformance",
    "BasicConformance",
    "ExclusiveWriteConformance",
    "RangeReadConformance",
    "SetAttrsConformance",
    "StreamingWriteConformance",
    "make_session",
    "running_server",
]


@contextlib.asynccontextmanager
async def running_server(**options: Any) -> AsyncIterator[Server]:
    """Start a server on a free loopback port with a fresh host key; stop it afterwards.

    Defaults: ``auth={"dev": "dev"}``, ``port=0``, ``host="127.0.0.1"``; any
    :class:`~sftpd.ServerConfig` field may be given.
    """
    with tempfile.TemporaryDirectory(prefix="sftpd-keys-") as keys:
        if "system_dir" not in options and "host_keys" not in options:
            key = asyncssh.generate_private_key("ssh-ed25519")
            key.write_private_key(str(Path(keys) / "ssh_host_ed25519_key"))
            options["system_dir"] = keys
        options.setdefault("auth", {"dev": "dev"})
        options.setdefault("port", 0)
        async with Server(**options) as server:
            yield server


_SUITE = frozenset(__all__) - {"make_session", "running_server"}


def __getattr__(name: str) -> object:
    """The conformance suite's classes, imported (with pytest) when first asked for."""
    if name not in _SUITE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _conformance

    return getattr(_conformance, name)
