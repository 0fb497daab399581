"""What happened when an upload was stored: passed to ``on_upload`` callbacks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["Upload"]


@dataclass(frozen=True, slots=True)
class Upload:
    """A file a client uploaded, after the backend stored it.

    Attributes:
        session: Who uploaded it.
        path: The path as the client named it (inside the session's root).
        backend_path: The path the backend stored it under.
        size: The file's size after the upload.
        bytes_written: Bytes the client sent for this upload.
    """

    session: Session
    path: str
    backend_path: str
    size: int
    bytes_written: int
