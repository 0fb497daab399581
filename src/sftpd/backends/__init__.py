"""Built-in storage backends."""

from .local import LocalBackend
from .memory import MemoryBackend

__all__ = ["LocalBackend", "MemoryBackend"]
