"""The ``sftpd`` command: ``serve``, ``stdio``, ``quota``, ``s3 cleanup``, ``hash-password``.

``sftpd serve`` runs a server from the command line (:mod:`._serve`); ``sftpd stdio``
serves one session under sshd; the rest are tools (:mod:`._tools`). What they share is
in :mod:`._common`.
"""

from __future__ import annotations

import click

from .._version import __version__
from ._common import ensure_host_keys, make_backend, parse_size
from ._serve import serve
from ._tools import hash_password_command, quota_group, s3_group, stdio

__all__ = ["ensure_host_keys", "main", "make_backend", "parse_size"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sftpd")
def main() -> None:
    """sftpd: an embeddable SFTP server with pluggable storage."""


for _command in (s3_group, serve, stdio, quota_group, hash_password_command):
    main.add_command(_command)
