"""Built-in storage backends."""

from .memory import MemoryBackend

__all__ = ["MemoryBackend"]
