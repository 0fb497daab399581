"""Unit: misconfiguration fails at start-up with a message that says what to fix."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

import sftpd
from sftpd import ServerConfig
from sftpd.errors import ConfigError


def config(**kw: Any) -> ServerConfig:
    base: dict[str, Any] = {
        "backend": sftpd.MemoryBackend(),
        "auth": {"dev": "dev"},
        "system_dir": "/nonexistent",
    }
    base.update(kw)
    return ServerConfig(**base)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"port": 70000}, "port must be between 0 and 65535"),
        ({"port": "22"}, "port must be an integer"),
        ({"max_sessions": 0}, "max_sessions must be a positive integer"),
        ({"max_open_files": 0}, "max_open_files must be a positive integer"),
        ({"max_open_files": True}, "max_open_files must be a positive integer"),
        ({"max_unauthenticated": 0}, "max_unauthenticated must be a positive integer"),
        (
            {"max_unauthenticated_per_address": 0},
            "max_unauthenticated_per_address must be a positive integer",
        ),
        ({"open_timeout": 0}, "open_timeout must be a positive number"),
        ({"close_timeout": float("nan")}, "close_timeout must be a positive number"),
        ({"backend": None}, "backend is required"),
        ({"backend": sftpd.MemoryBackend}, "must be an instance"),
        ({"backend": object()}, "does not implement the required method"),
        ({"auth": {}}, "auth has no users"),
        ({"auth": {"dev": ""}}, "needs a non-empty password"),
        ({"auth": 42}, "auth must be"),
        ({"system_dir": None}, "no host keys"),
        ({"ciphers": ["arcfour"]}, "unsupported cipher.*arcfour; choose from aes128-gcm"),
        ({"ciphers": "aes128-ctr"}, "ciphers must be a non-empty list"),
        ({"ciphers": []}, "ciphers must be a non-empty list"),
        ({"upload_memory": 0}, "upload_memory must be a positive integer"),
        ({"upload_memory": 1.5}, "upload_memory must be a positive integer"),
    ],
)
def test_bad_options_fail_with_a_helpful_message(kw: dict[str, Any], message: str) -> None:
    """Each invalid option raises ConfigError naming the option and the fix."""
    with pytest.raises(ConfigError, match=message):
        config(**kw)


async def test_missing_host_key_dir_fails_at_start(tmp_path: Path) -> None:
    """A host key directory that does not exist fails start() and names the path."""
    server = sftpd.Server(config(system_dir=tmp_path / "absent", port=0))
    with pytest.raises(ConfigError, match=r"does not exist.*ssh-keygen"):
        await server.start()


async def test_empty_host_key_dir_fails_at_start(tmp_path: Path) -> None:
    """An empty host key directory fails start() with the command to create a key."""
    server = sftpd.Server(config(system_dir=tmp_path, port=0))
    with pytest.raises(ConfigError, match="no ssh_host_\\*_key files"):
        await server.start()


async def test_unreadable_host_key_fails_at_start(tmp_path: Path) -> None:
    """A file that is not a private key fails start() and names the file."""
    (tmp_path / "ssh_host_rsa_key").write_text("not a key")
    server = sftpd.Server(config(system_dir=tmp_path, port=0))
    with pytest.raises(ConfigError, match=r"cannot read host key .*ssh_host_rsa_key"):
        await server.start()


async def test_every_host_key_in_the_directory_is_served(tmp_path: Path) -> None:
    """rsa, ecdsa and ed25519 keys in system_dir are all loaded."""
    import asyncssh

    for alg, name in (("ssh-rsa", "rsa"), ("ecdsa-sha2-nistp256", "ecdsa"),
                      ("ssh-ed25519", "ed25519")):  # fmt: skip
        key = asyncssh.generate_private_key(alg)
        key.write_private_key(str(tmp_path / f"ssh_host_{name}_key"))
        key.write_public_key(str(tmp_path / f"ssh_host_{name}_key.pub"))
    async with sftpd.Server(config(system_dir=tmp_path, port=0)) as server:
        algs = sorted(k.get_algorithm() for k in server.host_keys)
    assert algs == ["ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"]


async def test_port_in_use_fails_with_a_clear_message(host_key_dir: Path) -> None:
    """Binding a taken port raises ConfigError saying the address is in use."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = sftpd.Server(config(system_dir=host_key_dir, port=port))
        with pytest.raises(ConfigError, match="already in use"):
            await server.start()


def test_config_and_options_are_exclusive() -> None:
    """Server takes a ServerConfig or keyword options, not both."""
    with pytest.raises(ConfigError, match="not both"):
        sftpd.Server(config(), port=1)
