"""Unit: the public surface is explicit, and the adapter overrides every host-FS default."""

from __future__ import annotations

import inspect

import asyncssh

import sftpd
from sftpd._adapter import SftpAdapter


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


def test_adapter_overrides_every_sftpserver_method() -> None:
    """Every function asyncssh.SFTPServer defines is redefined by the adapter.

    asyncssh's defaults act on the host file system; none may be reachable.
    """
    base_functions = {
        name
        for name, value in vars(asyncssh.SFTPServer).items()
        if inspect.isfunction(value) and name != "__init__"
    }
    assert base_functions, "asyncssh.SFTPServer has no methods?"
    not_overridden = sorted(name for name in base_functions if name not in vars(SftpAdapter))
    assert not_overridden == []
    for name in base_functions:
        assert getattr(SftpAdapter, name) is not getattr(asyncssh.SFTPServer, name)
