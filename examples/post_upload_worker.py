"""Post-upload processing: store first, then hand the file to a background worker.

sftpd calls ``on_upload`` only after the backend has stored the file (the client's close
succeeded), and in the background, so a slow pipeline never holds up the client. The
worker reads the stored file back from the backend; nothing it does can lose an upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import sftpd

log = logging.getLogger("example.ingest")


class IngestPipeline:
    """A queue and a worker that fingerprints every uploaded file."""

    def __init__(self, backend: sftpd.MemoryBackend) -> None:
        self.backend = backend
        self.queue: asyncio.Queue[sftpd.Upload] = asyncio.Queue(maxsize=1000)
        self.processed: dict[str, str] = {}
        self._worker: asyncio.Task[None] | None = None

    def on_upload(self, upload: sftpd.Upload) -> None:
        """Given to the server as on_upload: enqueue only, never block."""
        try:
            self.queue.put_nowait(upload)
        except asyncio.QueueFull:
            log.error("ingest queue full; %s stays stored but unprocessed", upload.backend_path)

    async def _run(self) -> None:
        while True:
            upload = await self.queue.get()
            try:
                data = await self.backend.read_file(upload.backend_path, upload.session)
                self.processed[upload.backend_path] = hashlib.sha256(data).hexdigest()
            except Exception:
                log.exception("processing %s failed", upload.backend_path)
            finally:
                self.queue.task_done()

    async def __aenter__(self) -> IngestPipeline:
        self._worker = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.queue.join()
        if self._worker is not None:
            self._worker.cancel()


async def main() -> None:
    backend = sftpd.MemoryBackend()
    async with (
        IngestPipeline(backend) as pipeline,
        sftpd.Server(
            backend=backend,
            auth={"dev": "dev"},
            system_dir="ssh_keys",
            on_upload=pipeline.on_upload,
        ) as server,
    ):
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
