"""The version of sftpd, in one place (the package, the CLI and vendor-id read it)."""

__version__ = "0.1.0"
