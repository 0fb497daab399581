"""Unit: the public surface is explicit, and no asyncssh SFTP layer is reachable."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import sftpd
from sftpd._requests import Requests
from sftpd._sftp import engine

SRC = Path(sftpd.__file__).parent


def test_all_is_sorted_and_complete() -> None:
    """sftpd.__all__ is sorted (constants, then classes, then the rest) and complete."""

    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)

    assert sftpd.__all__ == sorted(sftpd.__all__, key=kind)
    public = {
        name
        for name, value in vars(sftpd).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public | {"__version__"} == set(sftpd.__all__)


def test_no_asyncssh_sftp_layer_or_private_hooks_in_the_source() -> None:
    """The source never names asyncssh's SFTP server classes, its packet table or frames.

    asyncssh's SFTPServer acts on the host file system by default and serializes requests;
    the engine is sftpd's own, so none of it may be reachable.
    """
    banned = re.compile(r"SFTPServer|sftp_factory|_packet_handlers|_getframe")
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in sorted(SRC.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if banned.search(line)
    ]
    assert offenders == []


def test_every_dispatched_request_is_served_by_the_request_layer() -> None:
    """Each row of the engine's tables calls a method that Requests really defines."""
    source = inspect.getsource(engine)
    called = set(re.findall(r"self\.requests\.([a-z_]+)", source))
    assert called, "the engine calls nothing?"
    defined = "".join(inspect.getsource(cls) for cls in Requests.__mro__[:-1])
    missing = sorted(
        name for name in called if not hasattr(Requests, name) and f"self.{name} =" not in defined
    )
    assert missing == []
