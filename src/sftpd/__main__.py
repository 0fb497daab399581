"""``python -m sftpd`` runs the command-line interface."""

from .cli import main

main()
