"""What a session may do: checked by the request layer before any backend call."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

__all__ = ["Permissions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Permissions:
    """Allowed operations of a session; each refusal answers SFTP "permission denied".

    Attributes:
        read: Open files for reading (download).
        write: Create, overwrite or append to files, and change their attributes.
        list: List directories.
        delete: Remove files and directories.
        rename: Rename or move files and directories.
        mkdir: Create directories.

    Presets (see :meth:`parse`): ``"full"``, ``"read-only"`` (read, list),
    ``"upload-only"`` (a drop box: write and mkdir, no list, no download) and
    ``"no-delete"`` (everything but delete and rename).
    """

    read: bool = True
    write: bool = True
    list: bool = True
    delete: bool = True
    rename: bool = True
    mkdir: bool = True

    @classmethod
    def full(cls) -> Permissions:
        """Everything allowed."""
        return cls()

    @classmethod
    def parse(cls, value: Any) -> Permissions:
        """Read permissions from a preset name, a collection of allowed names, or a mapping.

        Raises:
            ConfigError: the value names an unknown preset or operation.
        """
        if value is None:
            return cls()
        if isinstance(value, Permissions):
            return value
        if isinstance(value, str):
            try:
                return _PRESETS[value]
            except KeyError:
                known = ", ".join(sorted(_PRESETS))
                raise ConfigError(
                    f"unknown permissions preset {value!r}; use one of {known}"
                ) from None
        names = {f.name for f in fields(cls)}
        if isinstance(value, dict):
            unknown = set(value) - names
            if unknown:
                raise ConfigError(
                    f"unknown permission(s) {sorted(unknown)}; known: {sorted(names)}"
                )
            return cls(**{k: bool(v) for k, v in value.items()})
        if isinstance(value, Iterable):
            allowed = set(value)
            unknown = allowed - names
            if unknown:
                raise ConfigError(
                    f"unknown permission(s) {sorted(unknown)}; known: {sorted(names)}"
                )
            return cls(**{name: name in allowed for name in names})
        raise ConfigError(f"permissions must be a preset name, a list or a mapping, got {value!r}")


_PRESETS = {
    "full": Permissions(),
    "read-only": Permissions(write=False, delete=False, rename=False, mkdir=False),
    "upload-only": Permissions(read=False, list=False, delete=False, rename=False),
    "no-delete": Permissions(delete=False, rename=False),
}
