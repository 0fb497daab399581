"""Only PDFs into /invoices, and nothing removed from /keep: an inspector and a policy.

    python -m examples.invoice_gate        # serves on 127.0.0.1:2222, user dev/dev

The inspector sees each upload's bytes as they stream in (no second read) and refuses
any file under ``/invoices`` that does not start with the PDF signature, or that is not
a ``.pdf`` name; the client's close fails with the reason and nothing is stored. The
policy refuses deletes and renames under ``/keep`` and downloads of ``*.secret`` files,
with a reason the client sees.
"""

from __future__ import annotations

import asyncio
import fnmatch
import tempfile

import sftpd

PDF_SIGNATURE = b"%PDF-"


class PdfOnly:
    """Looks at the first bytes of an upload; decides at close."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.head = b""
        self.size = 0

    def feed(self, data: bytes) -> None:
        if len(self.head) < len(PDF_SIGNATURE):
            self.head += data[: len(PDF_SIGNATURE) - len(self.head)]
        self.size += len(data)

    def verdict(self) -> str | None:
        if not self.path.lower().endswith(".pdf"):
            return "only .pdf files may be uploaded to /invoices"
        if not self.head.startswith(PDF_SIGNATURE):
            return "this file is not a PDF"
        return None


def inspector(operation: sftpd.Operation) -> PdfOnly | None:
    """Inspect uploads into /invoices only."""
    if operation.path.startswith("/invoices/"):
        return PdfOnly(operation.path)
    return None


def policy(operation: sftpd.Operation) -> str | None:
    """Keep /keep as it is, and never hand out *.secret files."""
    if operation.name in ("remove", "rename", "rmdir") and (
        operation.path == "/keep" or operation.path.startswith("/keep/")
    ):
        return "files under /keep cannot be removed or renamed"
    if operation.name == "read" and fnmatch.fnmatch(operation.path, "*.secret"):
        return "secret files cannot be downloaded"
    return None


async def main() -> None:
    with tempfile.TemporaryDirectory() as keys:
        import asyncssh

        asyncssh.generate_private_key("ssh-ed25519").write_private_key(
            f"{keys}/ssh_host_ed25519_key"
        )
        async with sftpd.Server(backend=sftpd.MemoryBackend(), auth={"dev": "dev"},
                                system_dir=keys, inspector=inspector,
                                policy=policy) as server:  # fmt: skip
            print(f"sftp -P {server.port} dev@127.0.0.1", flush=True)
            await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
